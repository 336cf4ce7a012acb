"""
One gRPC call on the server (an HTTP/2 stream): its request messages, its
handler run by the connection's dispatcher, its replies under the caller's
flow-control window, and its status.  L{rpcd.server.grpcserver} owns the
connection and hands each stream's events to its L{GrpcCall}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Coroutine, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable

from google.protobuf import any_pb2, json_format, struct_pb2
from google.protobuf.message import DecodeError, Message
from h2.errors import ErrorCodes
from h2.exceptions import FlowControlError
from h2.exceptions import ProtocolError as H2ProtocolError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from rpcd.core.dispatch import error_fields
from rpcd.errors import Cancelled, Code, Internal, RPCError
from rpcd.core.protos import GrpcMethod, message_to_plain, plain_to_message, wants_plain
from rpcd.core.service import Kind
from rpcd.wire.grpcmsg import (
    ACCEPT_ENCODING,
    MessageReader,
    encode_message,
    encode_metadata,
    encode_status,
    status_headers,
)

if TYPE_CHECKING:
    from rpcd.core.context import CallContext
    from rpcd.core.service import BoundMethod
    from rpcd.server.grpcserver import GrpcServerProtocol

log = Logger()

COMPRESS_FROM = 1024
"""Reply messages this long or longer are gzipped when the caller used gzip."""

REPLY_HEADERS: list[tuple[Any, Any]] = [
    (b":status", b"200"), (b"content-type", b"application/grpc"),
    (b"grpc-accept-encoding", ACCEPT_ENCODING.encode("ascii"))]
"""A reply's headers before metadata (never changed in place; bytes, which
h2 takes as they are)."""

OK_STATUS: list[tuple[Any, Any]] = [(b"grpc-status", b"0")]
"""The trailers of a call that succeeded (never changed in place)."""

MIN_FRAME_SIZE = 16384
"""The smallest SETTINGS_MAX_FRAME_SIZE a peer may set (RFC 9113 6.5.2)."""

COALESCE = 16384
"""Reply bytes a streaming handler's messages may gather before they go to
h2 (one DATA frame, the default SETTINGS_MAX_FRAME_SIZE)."""

STREAMING_IN = (Kind.CLIENT_STREAM, Kind.BIDI_STREAM)
STREAMING_OUT = (Kind.SERVER_STREAM, Kind.BIDI_STREAM)


class GrpcCall:
    """
    One gRPC call (an HTTP/2 stream).

    @ivar route: where it goes, or None for an unknown path.
    @ivar reader: splits its DATA into messages.
    @ivar inbox: the caller's messages, for client and bidirectional
        streaming methods.
    @ivar request: the one request message of a unary or server-streaming
        call, once it arrived.
    @ivar out: reply bytes waiting for the caller's window.
    @ivar trailers: the trailers, once the call ended, until they are sent.
    @ivar done: the trailers are queued (or the stream was reset).
    """

    # What a new call starts with (set on the instance once it changes;
    # class attributes make a unary call's creation cheaper).
    reader: MessageReader | None = None
    inbox: GrpcMessages | None = None
    request: Message | None = None
    timeout: float | None = None
    metadata: Mapping[str, Any] = MappingProxyType({})
    compress = False
    context: CallContext | None = None
    started = False
    half_closed = False
    headers_sent = False
    done = False
    unacknowledged = 0
    held = 0
    trailers: list[tuple[Any, Any]] | None = None
    _waiting: Deferred[None] | None = None

    def __init__(self, protocol: GrpcServerProtocol, stream_id: int,
                 route: GrpcMethod | None, path: str) -> None:
        self.protocol = protocol
        self.conn = protocol.conn
        self.stream_id = stream_id
        self.route = route
        self.path = path
        self.received_at = protocol.clock.seconds()
        self.out = bytearray()

    # Requests.

    def message_received(self, payload: bytes, size: int) -> None:
        """
        A whole request message arrived.

        @param payload: its bytes, decompressed.
        @param size: what it counts against the connection's budget.
        """
        route = self.route
        assert route is not None  # no reader is made for an unknown path
        try:
            message = route.input.FromString(payload)
        except DecodeError as e:
            self.finish(Code.INTERNAL, f"grpc: cannot parse the request as "
                        f"{route.input.DESCRIPTOR.full_name}: {e}")
            return
        if self.inbox is not None:
            self.inbox.put(message, size)
        elif self.request is None:
            self.request = message
            self.start()
        else:
            self.finish(Code.INTERNAL, f"grpc: {route.name} takes one request message, "
                        "got more")

    def start(self) -> None:
        """
        Run the handler.
        """
        route = self.route
        dispatcher = self.protocol.dispatcher
        assert route is not None and dispatcher is not None
        timeout = self.timeout
        if timeout is not None:
            # The deadline runs from the request's headers, not its message.
            timeout -= self.protocol.clock.seconds() - self.received_at
            if timeout <= 0:
                self.finish(Code.DEADLINE_EXCEEDED, f"{route.name}: the deadline passed before "
                            "the request message arrived")
                return
        self.started = True
        fast = self.protocol.unary_calls.get(route.name) if self.inbox is None else None
        if fast is not None:
            # The dispatcher's hot path: a plain result comes back as it is,
            # with no Deferred on the way.
            call, plain = fast
            request = self.request
            try:
                result = call(message_to_plain(request) if plain else request, self.stream_id,
                              timeout)
            except RPCError as e:
                self.finish(e.code, e.message, e.details)
                return
            if type(result) is not route.output and isinstance(result, Deferred):
                result.addCallbacks(self._ended, self._failed)
            else:
                self._ended(result)
            return
        try:
            d = dispatcher.open_stream(route.name, self.stream_id, self._run,
                                       timeout=timeout, metadata=dict(self.metadata))
        except RPCError as e:
            self.finish(e.code, e.message, e.details)
            return
        d.addCallbacks(self._ended, self._failed)

    def _run(self, method: BoundMethod, context: CallContext | None) -> Deferred:
        self.context = context
        route = self.route
        assert route is not None
        if method.spec.kind is not route.kind:
            raise Internal(f"{route.name} is {method.spec.kind.value} in rpcd but "
                           f"{route.kind.value} in the proto")
        plain = wants_plain(method)
        if route.kind is Kind.UNARY and self.inbox is None:
            # Later calls of a unary method the dispatcher calls straight
            # (no context, guard or interceptors) skip open_stream.
            dispatcher = self.protocol.dispatcher
            simple = None if dispatcher is None else dispatcher.simple_calls.get(route.name)
            if simple is not None:
                self.protocol.unary_calls[route.name] = (simple, plain)
        if self.inbox is not None:
            if plain:
                self.inbox.convert = message_to_plain
            result = method.invoke_stream(None, context, self.inbox)
        else:
            result = method.invoke(message_to_plain(self.request) if plain else self.request,
                                   context)
        if route.kind in STREAMING_OUT:
            return Deferred.fromCoroutine(self._send_all(result))
        if isinstance(result, Deferred):
            return result
        if isinstance(result, Coroutine):
            return Deferred.fromCoroutine(result)
        return succeed(result)

    async def _send_all(self, produced: Any) -> None:
        if isinstance(produced, (Deferred, Coroutine)):
            produced = await produced
        if hasattr(produced, "__anext__"):
            try:
                while True:
                    # Messages the handler yields without waiting are sent
                    # to h2 together (one DATA frame per COALESCE bytes),
                    # and whatever is queued goes out before it waits.
                    d = Deferred.fromCoroutine(_next(produced))
                    if not d.called and self.out and not self.done:
                        self.pump()
                    try:
                        item = await d
                    except StopAsyncIteration:
                        break
                    if self.send(item, flush=False):
                        await self._writable()
            finally:
                aclose = getattr(produced, "aclose", None)
                if aclose is not None and not getattr(produced, "ag_running", False):
                    await aclose()
        else:
            iterator = iter(produced)
            try:
                for item in iterator:
                    if self.send(item):
                        await self._writable()
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()

    # Replies.

    def _serialize(self, item: Any) -> bytes:
        route = self.route
        assert route is not None
        output = route.output
        if not isinstance(item, output):
            if isinstance(item, Mapping):
                try:
                    item = plain_to_message(item, output)
                except ValueError as e:
                    raise Internal(f"{route.name} replied with a mapping that is not a "
                                   f"{output.DESCRIPTOR.full_name}: {e}") from None
            else:
                raise Internal(f"{route.name} replied with a {type(item).__name__}, "
                               f"not a {output.DESCRIPTOR.full_name}")
        return item.SerializeToString()

    def send(self, item: Any, last: bool = False, flush: bool = True) -> bool:
        """
        Send one reply message.

        @param item: a message of the method's output type (or a mapping in
            its JSON form).
        @param last: the call's only (or last) message: it is queued for the
            L{finish} that follows, so headers, message and trailers go to
            h2 in one L{pump}.
        @param flush: whether to hand it to h2 now; if not, and the caller's
            window and the transport would take it, it waits (up to
            L{COALESCE} bytes) for the next message or the next L{pump}.
        @return: whether to wait for L{_writable} before the next one.
        @raise Internal: the item is not such a message.
        """
        payload = self._serialize(item)
        if self.done:
            raise Cancelled(f"{self.path}: the call is over (reset or ended)")
        if not self.headers_sent:
            self._send_headers()
            if self.done:
                raise Cancelled(f"{self.path}: the stream was closed")
        self.out += encode_message(payload, self.compress and len(payload) >= COMPRESS_FROM)
        if last:
            return False
        if not flush and len(self.out) < COALESCE and not self.protocol.paused:
            try:
                room = self.conn.local_flow_control_window(self.stream_id)
            except H2ProtocolError:
                room = -1  # the stream closed under us: pump() finds out
            if room >= len(self.out):
                return False  # the caller's window and the transport take it all
        self.pump()
        return bool(self.out) or self.protocol.paused

    def _send_headers(self) -> None:
        self.headers_sent = True
        headers = REPLY_HEADERS
        if self.compress:
            headers = headers + [(b"grpc-encoding", b"gzip")]
        metadata = self._reply_metadata()
        if metadata:
            headers = headers + metadata
        try:
            self.conn.send_headers(self.stream_id, headers)
        except H2ProtocolError:
            self._gone()  # the stream closed under us
        else:
            self.protocol.sent_something()

    def _reply_metadata(self) -> list[tuple[str, str]]:
        context = self.context
        if context is None or not context.reply_metadata:
            return []
        metadata, context.reply_metadata = context.reply_metadata, {}
        try:
            return encode_metadata(metadata)
        except ValueError as e:
            log.error("{method}: reply metadata not sent: {why}", method=self.path, why=e)
            return []

    def pump(self) -> None:
        """
        Send what the caller's window allows, then the trailers once
        everything before them is out; wake a handler waiting to send.
        """
        if self.protocol._lost:
            return
        conn = self.conn
        out = self.out
        sid = self.stream_id
        try:
            if out and len(out) <= MIN_FRAME_SIZE:
                # One frame (the common unary reply): h2 refuses it whole,
                # sending nothing, when the window is smaller.
                try:
                    conn.send_data(sid, bytes(out))
                    out.clear()
                except FlowControlError:
                    pass
            while out:
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size,
                           len(out))
                if room <= 0:
                    break
                conn.send_data(sid, bytes(out[:room]))
                del out[:room]
            if not out and self.trailers is not None:
                trailers, self.trailers = self.trailers, None
                conn.send_headers(sid, trailers, end_stream=True)
                if not self.half_closed:  # the caller has not ended its side
                    conn.reset_stream(sid, ErrorCodes.NO_ERROR)
                self.protocol.forget(self)
        except H2ProtocolError:
            self._gone()
        self.protocol.sent_something()
        self.protocol.flush()
        self.wake()

    def wake(self) -> None:
        """
        Let a handler waiting to send go on, once its replies are out and
        the transport takes writes.
        """
        waiting = self._waiting
        if waiting is not None and ((not self.out and not self.protocol.paused) or self.done):
            self._waiting = None
            waiting.callback(None)

    def _writable(self) -> Deferred[None]:
        if (not self.out and not self.protocol.paused) or self.done:
            return succeed(None)
        d: Deferred[None] = Deferred(self._forget_wait)
        self._waiting = d
        return d

    def _forget_wait(self, d: Deferred[None]) -> None:
        if self._waiting is d:
            self._waiting = None

    def _ended(self, value: Any) -> None:
        route = self.route
        assert route is not None
        if self.done:
            return
        if route.kind not in STREAMING_OUT:
            try:
                self.send(value, last=True)
            except RPCError as e:
                log.error("{method}: {why}", method=route.name, why=e.message)
                self.finish(e.code, e.message)
                return
        self.finish(Code.OK)

    def _failed(self, failure: Failure) -> None:
        error = failure.value
        assert error is not None
        code, message, details = error_fields(error)
        self.finish(code, message, details)

    def finish(self, code: int, message: str = "", details: Any = None) -> None:
        """
        End the call with a status (trailers after any queued reply, or a
        trailers-only response when nothing was sent).

        @param code: the status code.
        @param message: for C{grpc-message}.
        @param details: the error's details (see L{status_details}).
        """
        if self.done:
            return
        self.done = True
        if self.inbox is not None:
            self.inbox.end()
        if self.started and code != Code.OK:
            dispatcher = self.protocol.dispatcher
            if dispatcher is not None:
                dispatcher.cancel(self.stream_id)
        if code == Code.OK and not message:
            status = OK_STATUS
        else:
            status = status_headers(code, message, status_details(code, message, details))
        if not self.headers_sent:
            self.headers_sent = True
            self.trailers = REPLY_HEADERS + self._reply_metadata() + status
        else:
            metadata = self._reply_metadata()
            self.trailers = metadata + status if metadata else status
        self.pump()

    def _gone(self) -> None:
        """
        The stream closed under us (the caller reset it, or h2 did over a
        stream error): nothing more is sent; a handler still sending gets
        L{Cancelled} from its next L{send}.
        """
        self.done = True
        self.out.clear()
        self.trailers = None
        if self.inbox is not None:
            self.inbox.end()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)
        self.protocol.forget(self)

    def cancelled(self) -> None:
        """
        The caller reset the stream: cancel the handler.
        """
        if self.done:
            return
        self.done = True
        self.out.clear()
        if self.inbox is not None:
            self.inbox.end()
        dispatcher = self.protocol.dispatcher
        if self.started and dispatcher is not None:
            dispatcher.cancel(self.stream_id)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)


async def _next(produced: Any) -> Any:
    """
    @return: the async iterator's next item (raises C{StopAsyncIteration}
        at its end).
    """
    return await produced.__anext__()


def status_details(code: int, message: str, details: Any) -> bytes | None:
    """
    The C{grpc-status-details-bin} for an error's details: a
    C{google.rpc.Status} whose details are the message(s) given, each packed
    in an C{Any}, or plain data as a C{google.protobuf.Value}.

    @return: the serialized Status, or None without details.
    """
    if details is None or code == Code.OK:
        return None
    items = details if isinstance(details, (list, tuple)) and details and all(
        isinstance(d, Message) for d in details) else [details]
    packed: list[tuple[str, bytes]] = []
    for item in items:
        if not isinstance(item, Message):
            try:
                item = json_format.ParseDict(item, struct_pb2.Value())
            except (json_format.ParseError, TypeError, ValueError):
                item = struct_pb2.Value(string_value=repr(item))
        holder = any_pb2.Any()
        holder.Pack(item)
        packed.append((holder.type_url, holder.value))
    return encode_status(code, message, packed)


class GrpcMessages:
    """
    The caller's messages on a client- or bidirectional-streaming call, as
    the handler sees them: an async iterator of request messages that ends
    when the caller half-closes.  Taking a message opens the caller's window
    for what was held back.
    """

    def __init__(self, call: GrpcCall) -> None:
        self._call = call
        self.convert: Callable[[Message], Any] | None = None
        self._queue: deque[tuple[Any, int]] = deque()
        self.queued_bytes = 0
        self._ended = False
        self._waiting: Deferred[Any] | None = None

    def queued(self) -> int:
        """
        @return: messages waiting for the handler.
        """
        return len(self._queue)

    def __aiter__(self) -> GrpcMessages:
        return self

    def __anext__(self) -> Deferred[Any]:
        """
        @return: a Deferred firing with the next message, or failing with
            C{StopAsyncIteration} after the caller half-closed.
        """
        if self._queue:
            message, size = self._queue.popleft()
            self.queued_bytes -= size
            self._took()
            return succeed(message)
        if self._ended:
            return fail(StopAsyncIteration())
        d: Deferred[Any] = Deferred(self._forget_wait)
        self._waiting = d
        return d

    def _forget_wait(self, d: Deferred[Any]) -> None:
        if self._waiting is d:
            self._waiting = None

    def _took(self) -> None:
        self._call.protocol.account(self._call)

    def put(self, message: Message, size: int = 0) -> None:
        """
        A message arrived (given to the handler as plain data when it takes
        mappings, see L{rpcd.core.protos.wants_plain}).
        """
        if self._ended:
            return
        if self.convert is not None:
            message = self.convert(message)
        d = self._waiting
        if d is None:
            self._queue.append((message, size))
            self.queued_bytes += size
            return
        self._waiting = None
        d.callback(message)

    def end(self) -> None:
        """
        The caller half-closed (or the call is over): iteration ends after
        the queued messages.
        """
        self._ended = True
        d = self._waiting
        if d is not None:
            self._waiting = None
            d.errback(StopAsyncIteration())
