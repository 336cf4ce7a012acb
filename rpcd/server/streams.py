"""
Streaming calls on the server side of rpcd's native protocol.

A CALL whose options say C{"stream": true} opens a stream (see
L{rpcd.wire.flow} for the credit rules and C{docs/protocol.md} for the
frames).  The handler runs as one Deferred tracked by the connection's
L{rpcd.core.dispatch.Dispatcher}, like any call: it counts against
C{max_calls_per_connection}, and a CANCEL frame, the deadline or the end of
the connection cancel it.

  - A server-streaming handler (an async generator, or a method returning an
    iterable) is iterated by L{ServerStream._send_all}: each item becomes one
    MESSAGE frame.  Iteration stops while the stream has no credit or the
    transport's write buffer is full, and the generator is closed
    (C{aclose()}, so its C{finally:} blocks run) when the call is cancelled.
  - A client-streaming handler receives a L{StreamMessages} async iterator;
    its return value ends the stream.  A bidirectional handler does both.

Frames of all streams on a connection are collected and written together:
once per reactor turn, or sooner when a quarter MiB has piled up.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rpcd.server.backpressure import take_over_producer
from rpcd.server.replies import unencodable
from rpcd.core.convert import Mismatch
from rpcd.core.dispatch import error_fields
from rpcd.errors import Code, InvalidArgument, RPCError
from rpcd.wire.connection import BAD_FRAME, CREDIT, END, MESSAGE
from rpcd.wire.fields import CallOptions, frame_name

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, ITransport

    from rpcd.core.context import CallContext
    from rpcd.core.service import BoundMethod
    from rpcd.server.native import NativeServerProtocol

log = Logger()

FLUSH_BYTES = 256 * 1024
"""Write the collected frames once this many bytes are waiting."""

RECEIVE_WINDOW = 256
"""The credit a server grants a client for its messages on each stream."""


@implementer(IPushProducer)
class ServerStreams:
    """
    One connection's open streams, and the connection's push producer.

    The transport pauses this producer when its write buffer is full; every
    stream's iteration then waits until it resumes.  If another producer
    held the transport's producer slot (rpcd.server.backpressure's read throttle), it
    keeps getting every pause and resume, passed on from here.

    @ivar streams: call id to L{ServerStream}, for streams still running.
    @ivar paused: whether the transport asked us to stop writing.
    """

    def __init__(self, protocol: NativeServerProtocol) -> None:
        """
        @param protocol: the connection's native protocol.
        """
        self.protocol = protocol
        self.conn = protocol.conn
        transport = protocol.transport
        assert transport is not None  # made for a CALL frame, after connectionMade
        self.transport: ITransport = transport
        self.clock = protocol.server.clock
        self.streams: dict[Any, ServerStream] = {}
        self.paused = False
        self._registered = False
        self._previous: Any = None
        self._out_size = 0  # bytes queued in the connection since the last flush
        self._flush_call: IDelayedCall | None = None

    def open(self, call_id: int, method: str, value: Any, options: CallOptions) -> None:
        """
        Start a stream for a CALL event with C{"stream"} in its options (the
        connection holds its credit).  An error that ends it at once is
        queued in the connection, written after this read.

        @param call_id: the CALL's id.
        @param method: C{Service.Method}.
        @param value: the CALL's argument.
        @param options: the CALL's options, checked (see
            L{rpcd.wire.fields.parse_options}).
        """
        dispatcher = self.protocol.dispatcher
        assert dispatcher is not None  # set by connectionMade, before any frame
        if call_id in self.streams or call_id in dispatcher.running:
            self.conn.send_error(call_id, Code.INVALID_ARGUMENT,
                                 f"call id {call_id} is already in use on this connection")
            return
        stream = ServerStream(self, call_id)
        self.streams[call_id] = stream
        self._register()
        try:
            d = dispatcher.open_stream(method, call_id,
                                       lambda m, ctx: stream.start(m, ctx, value),
                                       timeout=options.timeout, metadata=options.metadata,
                                       value=value)
        except RPCError as e:
            self.streams.pop(call_id, None)
            self.conn.send_error(call_id, e.code, e.message, e.details)
            return
        d.addCallbacks(stream.ended, stream.failed)

    def event_received(self, event: Any) -> None:
        """
        Handle a MESSAGE, END, CREDIT or BAD_FRAME event of the connection
        (its credit counted already): events for a stream that is not
        running are ignored; a bad field of a frame for a running stream
        fails that stream with INVALID_ARGUMENT.

        @param event: the event.
        """
        kind = event[0]
        stream = self.streams.get(event[1])
        if stream is None:
            return
        if kind == MESSAGE:
            if stream.inbox is not None:
                stream.inbox.put(event[2])
        elif kind == CREDIT:
            stream.wake()
        elif kind == END:
            if stream.inbox is not None:
                stream.inbox.end()
        elif kind == BAD_FRAME:
            stream.abort(InvalidArgument(f"{frame_name(event[2])} {event[1]}: {event[3]}"))

    def queued(self, size: int) -> None:
        """
        Frames were queued in the connection; they are written at the end
        of this reactor turn, or at once when enough are waiting.

        @param size: their bytes.
        """
        self._out_size += size
        if self._out_size >= FLUSH_BYTES:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        """
        Write every queued frame now.
        """
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        self._out_size = 0
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def forget(self, stream: ServerStream) -> None:
        """
        A stream ended: stop routing its frames.

        @param stream: the stream.
        """
        if self.streams.get(stream.call_id) is stream:
            del self.streams[stream.call_id]

    def _register(self) -> None:
        if self._registered:
            return
        self._registered = True
        # A producer registered already (rpcd.server.backpressure's read throttle) is
        # taken over: it gets every call passed on.
        previous = take_over_producer(self.transport, self)
        if previous is not None:
            self._previous = previous
            self.paused = bool(getattr(previous, "paused", False))

    def pauseProducing(self) -> None:
        self.paused = True
        if self._previous is not None:
            self._previous.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if self._previous is not None:
            self._previous.resumeProducing()
        for stream in list(self.streams.values()):
            stream.wake()

    def stopProducing(self) -> None:
        if self._previous is not None:
            self._previous.stopProducing()

    def connection_lost(self) -> None:
        """
        The connection is gone (its handlers were cancelled already): drop
        what was not written.
        """
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        self._out_size = 0


class ServerStream:
    """
    One stream on the server.

    @ivar call_id: the id of the CALL that opened it.
    @ivar inbox: the client's messages, for methods that take them.
    """

    def __init__(self, streams: ServerStreams, call_id: Any) -> None:
        self.streams = streams
        self.call_id = call_id
        self.inbox: StreamMessages | None = None
        self._waiting: Deferred[None] | None = None
        self._aborted: RPCError | None = None

    def start(self, method: BoundMethod, context: CallContext | None, value: Any) -> Deferred:
        """
        Run the handler.

        @param method: the method.
        @param context: its context, or None.
        @param value: the CALL's argument.
        @return: a Deferred firing with the final value when the handler is
            done (None for a server stream).
        @raise RPCError: the argument does not fit the method.
        """
        spec = method.spec
        if spec.stream_param is not None:
            self.inbox = StreamMessages(self, spec.convert_message_in)
            result = method.invoke_stream(value, context, self.inbox)
            self.inbox.grant(RECEIVE_WINDOW)
        else:
            result = method.invoke(value, context)
        if spec.convert_message_out is not None:
            return Deferred.fromCoroutine(self._send_all(result, spec.convert_message_out))
        if isinstance(result, Deferred):
            return result
        if isinstance(result, Coroutine):
            return Deferred.fromCoroutine(result)
        return succeed(result)

    async def _send_all(self, produced: Any, convert: Callable[[Any], Any]) -> None:
        if isinstance(produced, (Deferred, Coroutine)):
            produced = await produced
        if hasattr(produced, "__anext__"):
            try:
                async for item in produced:
                    if self._send_message(item, convert):
                        await self._writable()
            finally:
                aclose = getattr(produced, "aclose", None)
                if aclose is not None and not getattr(produced, "ag_running", False):
                    await aclose()
        else:
            iterator = iter(produced)
            try:
                for item in iterator:
                    if self._send_message(item, convert):
                        await self._writable()
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()

    def _send_message(self, item: Any, convert: Callable[[Any], Any]) -> bool:
        """
        Send one message of the handler's stream, spending a credit.

        @return: whether to wait for L{_writable} before the next one (no
            credit left, or the connection's writes are paused).
        @raise InvalidArgument: the item does not fit the message type.
        """
        try:
            value = convert(item)
        except Mismatch as e:
            raise InvalidArgument(f"bad stream message: {e.describe('message')}") from None
        streams = self.streams
        conn = streams.conn
        if conn.credit(self.call_id) <= 0:
            return True  # the stream was ended under the handler: it is being cancelled
        streams.queued(conn.send_message(self.call_id, value))
        return conn.credit(self.call_id) <= 0 or streams.paused

    @property
    def credit(self) -> int:
        """
        The MESSAGE frames the client lets us send now.
        """
        return self.streams.conn.credit(self.call_id)

    def _writable(self) -> Deferred[None]:
        """
        @return: a Deferred firing once the stream has credit and the
            transport takes writes.
        """
        self.streams.flush()
        if self.credit > 0 and not self.streams.paused:
            return succeed(None)
        d: Deferred[None] = Deferred(self._forget_wait)
        self._waiting = d
        return d

    def _forget_wait(self, d: Deferred[None]) -> None:
        if self._waiting is d:
            self._waiting = None

    def wake(self) -> None:
        """
        Credit arrived or the transport resumed: continue iterating if both
        allow it.
        """
        d = self._waiting
        if d is not None and self.credit > 0 and not self.streams.paused:
            self._waiting = None
            d.callback(None)

    def ended(self, value: Any) -> None:
        """
        The handler finished: send RESULT.

        @param value: its final value, as plain data.
        """
        self._close()
        conn = self.streams.conn
        try:
            size = conn.send_result(self.call_id, value)
        except Exception as e:
            internal = unencodable(f"stream {self.call_id}", "msgpack", e)
            size = conn.send_error(self.call_id, internal.code, internal.message)
        self.streams.queued(size)

    def abort(self, error: RPCError) -> None:
        """
        End the stream with an error of ours (a bad frame from the client):
        the handler is cancelled and the client gets C{error}.

        @param error: what the client is told.
        """
        self._aborted = error
        dispatcher = self.streams.protocol.dispatcher
        assert dispatcher is not None  # streams exist only after connectionMade
        dispatcher.cancel(self.call_id)

    def failed(self, failure: Failure) -> None:
        """
        The handler failed, was cancelled or ran out of time: send ERROR.

        @param failure: why (an L{RPCError} as the Dispatcher maps it).
        """
        self._close()
        error = self._aborted or failure.value
        assert error is not None  # Failure() raises rather than hold no exception
        code, message, details = error_fields(error)
        self.streams.queued(self.streams.conn.send_error(self.call_id, code, message, details))

    def _close(self) -> None:
        self.streams.forget(self)
        if self.inbox is not None:
            self.inbox.end()


class StreamMessages:
    """
    The caller's messages on a client- or bidirectional-streaming call, as
    the handler sees them: an async iterator that ends when the caller
    half-closes::

        @exposed
        async def Sum(self, numbers: AsyncIterator[int]) -> int:
            total = 0
            async for n in numbers:
                total += n
            return total

    Each message taken hands credit back to the caller, half a window at a
    time.
    """

    def __init__(self, stream: ServerStream, convert: Callable[[Any], Any] | None) -> None:
        self._stream = stream
        self._convert = convert
        self._queue: deque[Any] = deque()
        self._ended = False
        self._waiting: Deferred[Any] | None = None

    def grant(self, n: int) -> None:
        """
        Give the caller its first credit (its window).

        @param n: messages it may send.
        """
        streams = self._stream.streams
        streams.conn.grant_window(self._stream.call_id, n)
        streams.queued(1)

    def __aiter__(self) -> StreamMessages:
        return self

    def __anext__(self) -> Deferred[Any]:
        """
        @return: a Deferred firing with the next message (converted to the
            annotated type), failing with C{StopAsyncIteration} after the
            caller's END, or with L{InvalidArgument} for a message that does
            not fit the annotation.
        """
        if self._queue:
            try:
                return succeed(self._take(self._queue.popleft()))
            except InvalidArgument as e:
                return fail(e)
        if self._ended:
            return fail(StopAsyncIteration())
        d: Deferred[Any] = Deferred(self._forget_wait)
        self._waiting = d
        return d

    def _forget_wait(self, d: Deferred[Any]) -> None:
        if self._waiting is d:
            self._waiting = None

    def _take(self, value: Any) -> Any:
        if not self._ended:
            streams = self._stream.streams
            if streams.conn.message_consumed(self._stream.call_id):
                streams.queued(1)
        if self._convert is None:
            return value
        try:
            return self._convert(value)
        except Mismatch as e:
            raise InvalidArgument(f"bad stream message: {e.describe('message')}") from None

    def put(self, value: Any) -> None:
        """
        A MESSAGE arrived (the connection counted its credit).

        @param value: its decoded value.
        """
        d = self._waiting
        if d is None:
            self._queue.append(value)
            return
        self._waiting = None
        try:
            message = self._take(value)
        except InvalidArgument as e:
            d.errback(e)
        else:
            d.callback(message)

    def end(self) -> None:
        """
        The caller half-closed (or the stream is over): iteration ends after
        the queued messages.
        """
        self._ended = True
        d = self._waiting
        if d is not None:
            self._waiting = None
            d.errback(StopAsyncIteration())

