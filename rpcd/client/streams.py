"""
Streaming calls from the client side of rpcd's native protocol.

With a reactor running::

    stream = client.stream("TestService.FullDuplexCall", timeout=10)
    await stream.send({"payload": {"body": b"ping"}})   # waits for credit
    stream.close_send()                                 # half-close
    async for message in stream:                        # the server's messages
        print(message)
    final = await stream.result()                       # its final value

or, for bulk data, hand the messages to an C{IConsumer}; the stream is the
consumer's push producer, and a consumer that pauses it stops the server
(no credit is handed back while it is paused)::

    final = await stream.deliver_to(consumer)

Credit for the server's messages is handed back as the application takes
them, half a window at a time (see L{rpcd.wire.flow}), so at most one window
of messages waits here.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from rpcd.errors import (
    Cancelled,
    Code,
    ConnectionLost,
    DeadlineExceeded,
    EncodeError,
    Internal,
    RPCError,
)
from rpcd.wire.connection import BAD_FRAME, CREDIT, MESSAGE
from rpcd.wire.fields import check_metadata, check_method, check_timeout, frame_name
from rpcd.wire.flow import check_window
from rpcd.wire.frames import encode_frame

if TYPE_CHECKING:
    from rpcd.client.native import NativeClientProtocol


def open_stream(channel: NativeClientProtocol, method: str, value: Any = None, *,
                timeout: float | None = None, metadata: dict[str, Any] | None = None,
                window: int | None = None) -> ClientStream:
    """
    Open a streaming call.

    @param channel: a connected native-protocol channel.
    @param method: C{Service.Method}.
    @param value: the CALL's argument: the request of a server-streaming
        method, the value of the other parameters of a client- or
        bidirectional-streaming method (usually None).
    @param timeout: seconds the whole stream may take; then it fails with
        L{DeadlineExceeded} and is cancelled on the server.
    @param metadata: key/value metadata for the server.
    @param window: how many messages the server may send ahead of the
        application (L{rpcd.wire.flow.DEFAULT_WINDOW} by default).
    @return: the stream (already failed if the connection is closed).
    @raise ValueError: the channel does not speak the native protocol, or a
        bad window, timeout or metadata (see L{rpcd.wire.fields}).
    @raise TypeError: a method, timeout or metadata of the wrong type.
    """
    if not hasattr(channel, "send_frame"):
        raise ValueError(f"streaming calls need the native codec, not {channel.codec_name}")
    streams = channel.streams
    if streams is None:
        streams = channel.streams = ClientStreams(channel)
    return streams.open(method, value, timeout=timeout, metadata=metadata, window=window)


@implementer(IPushProducer)
class ClientStreams:
    """
    One connection's open streams, and the connection's push producer: while
    the transport's write buffer is full, L{ClientStream.send} waits.

    @ivar streams: call id to L{ClientStream}, for streams not yet ended.
    @ivar paused: whether the transport asked us to stop writing.
    """

    def __init__(self, channel: NativeClientProtocol) -> None:
        self.channel = channel
        self.streams: dict[int, ClientStream] = {}
        self.paused = False
        self.waking: list[ClientStream] = []
        self._registered = False

    def open(self, method: str, value: Any, *, timeout: float | None,
             metadata: dict[str, Any] | None, window: int | None) -> ClientStream:
        """
        See L{open_stream}.
        """
        check_method(method)
        timeout = check_timeout(timeout)
        metadata = check_metadata(metadata)
        window = check_window(window)
        channel = self.channel
        call_id = next(channel._ids)
        stream = ClientStream(self, call_id, method, window)
        done = stream._done
        if channel.lost_reason is not None:
            done.errback(ConnectionLost(f"connection to {channel.peer_name} is closed; "
                                        f"cannot call {method}"))
            return stream
        try:
            channel.conn.open_stream(call_id, method, value, window, timeout, metadata)
        except Exception as e:
            done.errback(EncodeError(f"cannot send {method}: the native codec cannot encode "
                                     f"its argument: {type(e).__name__}: {e}"))
            return stream
        channel.pending[call_id] = done
        self.streams[call_id] = stream
        if not self._registered and channel.transport is not None:
            # Socket and TLS transports are consumers, though ITCPTransport
            # does not say so (the same cast as rpcd.server.sniffer's).
            cast(IConsumer, channel.transport).registerProducer(self, True)
            self._registered = True
        channel.flush()
        if timeout is not None:
            timer = channel.clock.callLater(timeout, stream._expire, timeout)
            done.addBoth(_stop_timer, timer)
        return stream

    def event_received(self, event: Any) -> None:
        """
        Handle a MESSAGE, CREDIT or BAD_FRAME event of the connection (its
        credit counted already).

        Events for a stream that is not open are ignored (they crossed its
        end on the wire); a bad field of a frame for an open stream fails
        that stream with L{Internal} and cancels it on the server.

        @param event: the event.
        """
        kind = event[0]
        stream = self.streams.get(event[1])
        if stream is None:
            return
        if kind == MESSAGE:
            stream._received(event[2])
        elif kind == CREDIT:
            stream._drain_sends()
        elif kind == BAD_FRAME:
            stream._abort(f"{frame_name(event[2])} {event[3]}")

    def wake(self) -> None:
        """
        The read is over: give each stream's waiting iteration the first
        of the messages the read brought (it takes the others from the
        queue, without waiting: one wake per read, not per message).
        """
        waking, self.waking = self.waking, []
        for stream in waking:
            d = stream._waiting
            if d is not None and not d.called and stream._queue:
                stream._waiting = None
                value = stream._queue.popleft()
                stream._consumed()
                d.callback(value)

    def forget(self, stream: ClientStream) -> None:
        """
        A stream ended.

        @param stream: the stream.
        """
        if self.streams.get(stream.call_id) is stream:
            del self.streams[stream.call_id]
        if not self.streams:
            self.unregister()

    def unregister(self) -> None:
        """
        Stop being the transport's producer (no stream is open, or the
        connection is closing: a registered producer would keep a TLS
        connection from closing).
        """
        if self._registered:
            self._registered = False
            self.paused = False
            transport = self.channel.transport
            if transport is not None:
                cast(IConsumer, transport).unregisterProducer()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        for stream in list(self.streams.values()):
            stream._drain_sends()

    def stopProducing(self) -> None:
        pass

    def connection_lost(self, reason: Failure) -> None:
        """
        The connection is gone; the streams failed already with the
        channel's pending calls.
        """
        self._registered = False
        self.streams.clear()


class StreamEnd:
    """
    How a client stream of any codec ends (L{ClientStream} here,
    L{rpcd.client.grpc_streams.GRPCStream}): its final value or error,
    L{result}, and what waits on it.  Subclasses set the attributes in
    their constructor.
    """

    method: str
    _ended: bool
    _error: BaseException | None
    _value: Any
    _result_waiters: list[Deferred[Any]]
    _queue: deque[Any]
    _waiting: Deferred[Any] | None

    def result(self) -> Deferred[Any]:
        """
        @return: a Deferred firing with the stream's final value (None for a
            server stream) once the server has ended it (messages not yet
            taken stay available to iteration), or failing with its
            L{RPCError}: the server's error, L{Cancelled},
            L{DeadlineExceeded}, L{ConnectionLost}.
        """
        d: Deferred[Any] = Deferred()
        self._result_waiters.append(d)
        if self._ended:
            self._fire_results()
        return d

    def _fire_results(self) -> None:
        waiters, self._result_waiters = self._result_waiters, []
        for d in waiters:
            if self._error is not None:
                d.errback(self._error)
            else:
                d.callback(self._value)

    def settle(self, outcome: Any, sends: list[Deferred[None]]) -> None:
        """
        The stream ended: keep its value or error (a cancellation becomes
        L{Cancelled}, and drops the messages not taken), fail the sends
        still waiting, end the iteration waiting (once the messages queued
        are taken) and fire L{result}'s waiters.

        @param outcome: the final value, or a L{Failure}.
        @param sends: the Deferreds of sends not yet written.
        """
        self._ended = True
        if isinstance(outcome, Failure):
            error = outcome.value
            if isinstance(error, CancelledError):
                error = Cancelled(f"{self.method} was cancelled")
                self._queue.clear()
            self._error = error
        else:
            self._value = outcome
        for d in sends:
            _fail_quietly(d, self._error or RPCError(f"{self.method}: the stream has ended",
                                                     code=Code.FAILED_PRECONDITION))
        waiting = self._waiting
        if waiting is not None and not self._queue:
            self._waiting = None
            waiting.errback(self._error or StopAsyncIteration())
        self._fire_results()


@implementer(IPushProducer)
class ClientStream(StreamEnd):
    """
    One streaming call, from the caller's side.

    Iterate it (C{async for}) for the server's messages; iteration ends when
    the server ends the stream well, and raises the stream's L{RPCError}
    when it fails (after the messages that came before the error).

    @ivar call_id: its id on the connection.
    @ivar method: C{Service.Method}.
    """

    def __init__(self, streams: ClientStreams, call_id: int, method: str, window: int) -> None:
        self._streams = streams
        self._channel = streams.channel
        self.call_id = call_id
        self.method = method
        self._done: Deferred[Any] = Deferred(self._cancelled)
        self._done.addBoth(self._finished)
        self._ended = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._result_waiters: list[Deferred[Any]] = []
        self._queue: deque[Any] = deque()
        self._waiting: Deferred[Any] | None = None
        self._sends: deque[tuple[Any, Deferred[None]]] = deque()
        self._half_closed = False
        self._end_pending = False
        self._consumer: IConsumer | None = None
        self._consumer_paused = False
        self._delivered: Deferred[None] | None = None

    @property
    def _send_credit(self) -> int:
        """
        The messages the server lets us send now (kept by the connection).
        """
        return self._channel.conn.credit(self.call_id)

    @_send_credit.setter
    def _send_credit(self, n: int) -> None:
        # For tests that stage a server's credit.
        state = self._channel.conn._streams.get(self.call_id)
        if state is not None:
            state.send = n

    # Receiving.

    def __aiter__(self) -> ClientStream:
        return self

    def __anext__(self) -> Deferred[Any]:
        """
        @return: a Deferred firing with the next message, failing with
            C{StopAsyncIteration} at the end or with the stream's error.
            Cancelling it cancels the stream.
        """
        if self._queue:
            value = self._queue.popleft()
            self._consumed()
            return succeed(value)
        if self._ended:
            return fail(self._error or StopAsyncIteration())
        d: Deferred[Any] = Deferred(self._cancel_next)  # a bound method, no lambda per message
        self._waiting = d
        return d

    def _received(self, value: Any) -> None:
        if self._consumer is not None and not self._consumer_paused and not self._queue:
            self._consumer.write(value)
            self._consumed()
            return
        d = self._waiting
        if d is not None:
            if self._channel.in_read:
                # More of this read may be messages of this stream: the
                # iteration resumes once, after the read (ClientStreams.wake).
                if not self._queue:
                    self._streams.waking.append(self)
                self._queue.append(value)
                return
            self._waiting = None
            self._consumed()
            d.callback(value)
            return
        self._queue.append(value)

    def _consumed(self) -> None:
        if not self._ended and self._channel.conn.message_consumed(self.call_id):
            self._channel.flush()

    def deliver_to(self, consumer: IConsumer) -> Deferred[Any]:
        """
        Write every message of the stream to a consumer, which may pause
        the stream (this object is its registered push producer); no credit
        goes back to the server while it is paused.

        @param consumer: an C{IConsumer}; it gets each message as it is
            (bytes if the server sends bytes).
        @return: a Deferred firing with the stream's final value once every
            message was written and the producer unregistered, or failing
            with the stream's error.
        """
        self._consumer = consumer
        self._delivered = Deferred()
        consumer.registerProducer(self, True)
        self._deliver_queued()

        def unregister(_: None) -> Deferred[Any]:
            consumer.unregisterProducer()
            self._consumer = None
            return self.result()
        return self._delivered.addCallback(unregister)

    def _deliver_queued(self) -> None:
        consumer = self._consumer
        while self._queue and consumer is not None and not self._consumer_paused:
            consumer.write(self._queue.popleft())
            self._consumed()
        if self._ended and not self._queue and self._delivered is not None:
            d, self._delivered = self._delivered, None
            d.callback(None)

    def pauseProducing(self) -> None:
        """
        The consumer is full: stop writing to it and stop granting credit.
        """
        self._consumer_paused = True

    def resumeProducing(self) -> None:
        """
        The consumer takes more: write what is queued, grant credit again.
        """
        self._consumer_paused = False
        self._deliver_queued()

    def stopProducing(self) -> None:
        """
        The consumer gives up: cancel the stream.
        """
        self.cancel()

    # Sending.

    def send(self, value: Any) -> Deferred[None]:
        """
        Send one message to the server.

        @param value: anything msgpack can encode.
        @return: a Deferred firing once the message is written (at once when
            the server has granted credit, else when it does); it fails with
            the stream's error if the stream ended first, with
            L{RPCError} (FAILED_PRECONDITION) after L{close_send}, and with
            C{TypeError} for a value msgpack cannot encode.  Cancelling it
            takes the message back if it was not written yet.
        """
        if self._ended:
            return fail(self._error or RPCError(f"{self.method}: the stream has ended",
                                                code=Code.FAILED_PRECONDITION))
        if self._half_closed:
            return fail(RPCError(f"{self.method}: send after close_send",
                                 code=Code.FAILED_PRECONDITION))
        channel = self._channel
        if channel.conn.credit(self.call_id) > 0 and not self._sends and not self._streams.paused:
            try:
                channel.conn.send_message(self.call_id, value)
            except Exception as e:
                return fail(e)
            channel.flush()
            return succeed(None)
        try:
            encode_frame([MESSAGE, self.call_id, value])  # fail now, not when credit comes
        except Exception as e:
            return fail(e)
        entry: tuple[Any, Deferred[None]]

        def take_back(d: Deferred[None]) -> None:
            if entry in self._sends:
                self._sends.remove(entry)
        d: Deferred[None] = Deferred(take_back)
        entry = (value, d)
        self._sends.append(entry)
        return d

    def _drain_sends(self) -> None:
        sends = self._sends
        channel = self._channel
        conn = channel.conn
        while sends and conn.credit(self.call_id) > 0 and not self._streams.paused \
                and not self._ended:
            value, d = sends.popleft()
            conn.send_message(self.call_id, value)  # encodable: checked by send
            channel.flush()
            d.callback(None)
        if self._end_pending and not sends:
            self._end_pending = False
            conn.send_end(self.call_id)
            channel.flush()

    def close_send(self) -> None:
        """
        Half-close: tell the server no more messages follow (after the ones
        still waiting for credit).
        """
        if self._half_closed or self._ended:
            return
        self._half_closed = True
        if self._sends:
            self._end_pending = True
        else:
            self._channel.conn.send_end(self.call_id)
            self._channel.flush()

    # Ending.

    def cancel(self) -> None:
        """
        Give up on the stream: the server's handler is cancelled, and the
        stream fails with L{Cancelled}.
        """
        if not self._done.called:
            self._done.cancel()

    def _cancel_next(self, d: Deferred[Any]) -> None:
        # The caller cancelled its wait for the next message: cancel the stream.
        self.cancel()

    def _cancelled(self, d: Deferred[Any]) -> None:
        if self._channel.pending.pop(self.call_id, None) is not None:
            self._channel.send_cancel(self.call_id)

    def _abort(self, why: str) -> None:
        """
        The server sent a bad frame for this stream: fail it with
        L{Internal} and cancel it on the server.

        @param why: what was wrong.
        """
        if self._channel.pending.pop(self.call_id, None) is None:
            return
        self._channel.send_cancel(self.call_id)
        self._done.errback(Internal(f"bad frame from {self._channel.peer_name} for stream "
                                    f"{self.call_id} ({self.method}): {why}"))

    def _expire(self, timeout: float) -> None:
        if self._channel.pending.pop(self.call_id, None) is None:
            return
        self._channel.send_cancel(self.call_id)
        self._done.errback(DeadlineExceeded(f"{self.method} did not end within {timeout:g} s "
                                            f"(cancelled on {self._channel.peer_name})"))

    def _finished(self, outcome: Any) -> None:
        self._streams.forget(self)
        sends = [d for _, d in self._sends]
        self._sends.clear()
        self.settle(outcome, sends)
        if self._consumer is not None:
            self._deliver_queued()

    def __repr__(self) -> str:
        return f"<ClientStream {self.call_id} {self.method}>"


def _fail_quietly(d: Deferred[None], error: BaseException) -> None:
    """
    Fail a send's Deferred with the stream's error without the "Unhandled
    error in Deferred" log when nobody waits on it: the stream's result and
    iteration report that error already.  A caller who awaits it later still
    gets the failure.
    """
    d.errback(error)
    info = getattr(d, "_debugInfo", None)  # Twisted's record for that log line
    if info is not None:
        info.failResult = None


def _stop_timer(result: Any, timer: Any) -> Any:
    if timer.active():
        timer.cancel()
    return result
