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

import msgpack
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rpcd.server.backpressure import take_over_producer
from rpcd.core.convert import Mismatch as _Mismatch
from rpcd.core.dispatch import error_fields
from rpcd.errors import Code, InvalidArgument, ProtocolError, RPCError
from rpcd.wire.fields import CallOptions, frame_name, read_id
from rpcd.wire.flow import DEFAULT_WINDOW, MAX_WINDOW, ReceiveWindow, check_credit
from rpcd.wire.frames import CREDIT, END, ERROR, MESSAGE, RESULT, encode_frame, pack_length

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

_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack


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
        transport = protocol.transport
        assert transport is not None  # made for a CALL frame, after connectionMade
        self.transport: ITransport = transport
        self.clock = protocol.server.clock
        self.streams: dict[Any, ServerStream] = {}
        self.paused = False
        self._registered = False
        self._previous: Any = None
        self._out: list[bytes] = []
        self._out_size = 0
        self._flush_call: IDelayedCall | None = None

    def open(self, call_id: int, method: str, value: Any, options: CallOptions,
             out: list[bytes]) -> None:
        """
        Start a stream for a CALL frame with C{"stream"} in its options.

        @param call_id: the CALL's id.
        @param method: C{Service.Method}.
        @param value: the CALL's argument.
        @param options: the CALL's options, checked (see
            L{rpcd.wire.fields.parse_options}).
        @param out: frames to write after this read (an error that ends the
            stream at once goes there).
        """
        dispatcher = self.protocol.dispatcher
        assert dispatcher is not None  # set by connectionMade, before any frame
        if call_id in self.streams or call_id in dispatcher.running:
            out.append(error_frame(call_id, Code.INVALID_ARGUMENT,
                                   f"call id {call_id} is already in use on this connection"))
            return
        window = DEFAULT_WINDOW if options.window is None else options.window
        stream = ServerStream(self, call_id, window)
        self.streams[call_id] = stream
        self._register()
        try:
            d = dispatcher.open_stream(method, call_id,
                                       lambda m, ctx: stream.start(m, ctx, value),
                                       timeout=options.timeout, metadata=options.metadata,
                                       value=value)
        except RPCError as e:
            self.streams.pop(call_id, None)
            out.append(error_frame(call_id, e.code, e.message, e.details))
            return
        d.addCallbacks(stream.ended, stream.failed)

    def frame_received(self, frame: list[Any], out: list[bytes]) -> None:
        """
        Handle a MESSAGE, END or CREDIT frame from the client.

        Frames for a stream that is not running are ignored (they crossed
        the server's final frame on the wire); a bad field of a frame for a
        running stream fails that stream with INVALID_ARGUMENT.

        @param frame: the decoded frame.
        @param out: frames to write after this read.
        @raise ProtocolError: an id that cannot be read, a MESSAGE beyond
            the credit granted or after END, credit over L{MAX_WINDOW}, or
            an unknown frame type.
        """
        kind = frame[0]
        if kind not in (MESSAGE, CREDIT, END):
            raise ProtocolError(f"unexpected {frame_name(kind)} from a client")
        call_id = read_id(frame)
        stream = self.streams.get(call_id)
        if stream is None:
            return
        if kind == MESSAGE:
            if len(frame) < 3:
                stream.abort(InvalidArgument(f"MESSAGE {call_id}: needs [4, id, value], "
                                             f"got {len(frame)} fields"))
            elif stream.inbox is None:
                raise ProtocolError(f"stream {call_id}: MESSAGE beyond the granted credit "
                                    "(this method takes no messages)")
            else:
                stream.inbox.put(frame[2])
        elif kind == CREDIT:
            try:
                n = check_credit(frame[2] if len(frame) > 2 else None)
            except ValueError as e:
                stream.abort(InvalidArgument(f"CREDIT {call_id}: {e}"))
                return
            stream.credit += n
            if stream.credit > MAX_WINDOW:
                raise ProtocolError(f"stream {call_id}: credit over {MAX_WINDOW} messages")
            stream.wake()
        elif stream.inbox is not None:
            stream.inbox.end()

    def send(self, data: bytes) -> None:
        """
        Queue frames for the peer; they are written at the end of this
        reactor turn, or at once when enough are waiting.

        @param data: encoded frames.
        """
        if self.protocol.closing:
            return  # after a GOAWAY nothing more is sent
        self._out.append(data)
        self._out_size += len(data)
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
        if self._out:
            data = b"".join(self._out)
            self._out = []
            self._out_size = 0
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
        self._out = []
        self._out_size = 0


class ServerStream:
    """
    One stream on the server.

    @ivar call_id: the id of the CALL that opened it.
    @ivar credit: MESSAGE frames the client lets us send now.
    @ivar inbox: the client's messages, for methods that take them.
    """

    def __init__(self, streams: ServerStreams, call_id: Any, window: int) -> None:
        self.streams = streams
        self.call_id = call_id
        self.credit = window
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
            self.inbox = StreamMessages(self, spec.convert_message_in, RECEIVE_WINDOW)
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
            body = _packb([MESSAGE, self.call_id, convert(item)])
        except _Mismatch as e:
            raise InvalidArgument(f"bad stream message: {e.describe('message')}") from None
        self.streams.send(pack_length(len(body)) + body)
        self.credit -= 1
        return self.credit <= 0 or self.streams.paused

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
        try:
            frame = encode_frame([RESULT, self.call_id, value])
        except Exception as e:
            log.error("stream {id} ended with a value msgpack cannot encode: {error}",
                      id=self.call_id, error=e)
            frame = error_frame(self.call_id, Code.INTERNAL, f"the result cannot be encoded: {e}")
        self.streams.send(frame)

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
        self.streams.send(error_frame(self.call_id, code, message, details))

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

    def __init__(self, stream: ServerStream, convert: Callable[[Any], Any] | None,
                 window: int) -> None:
        self._stream = stream
        self._convert = convert
        self._queue: deque[Any] = deque()
        self._ended = False
        self._waiting: Deferred[Any] | None = None
        self._window = ReceiveWindow(window, 0)

    def grant(self, n: int) -> None:
        """
        Give the caller its first credit.

        @param n: messages it may send.
        """
        self._window.available += n
        self._stream.streams.send(encode_frame([CREDIT, self._stream.call_id, n]))

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
        n = self._window.consumed()
        if n and not self._ended:
            self._stream.streams.send(encode_frame([CREDIT, self._stream.call_id, n]))
        if self._convert is None:
            return value
        try:
            return self._convert(value)
        except _Mismatch as e:
            raise InvalidArgument(f"bad stream message: {e.describe('message')}") from None

    def put(self, value: Any) -> None:
        """
        A MESSAGE arrived.

        @param value: its decoded value.
        @raise ProtocolError: beyond the granted credit, or after END.
        """
        if self._ended:
            raise ProtocolError(f"stream {self._stream.call_id}: MESSAGE after END")
        self._window.received(self._stream.call_id)
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


def error_frame(call_id: Any, code: int, message: str, details: Any = None) -> bytes:
    """
    @return: an encoded ERROR frame (without C{details} if they cannot be
        encoded).
    """
    try:
        return encode_frame([ERROR, call_id, int(code), message, details])
    except Exception:
        return encode_frame([ERROR, call_id, int(code), message, None])

