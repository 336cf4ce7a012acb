"""
rpcd's client speaking gRPC (codec C{grpc} of L{rpcd.client.connect}): calls
any gRPC server (grpc-go, grpcio, rpcd) over HTTP/2, plaintext (prior
knowledge, as gRPC does) or TLS with ALPN C{h2}, given the server's
C{.proto} files.

    client = await connect("tls:host=server.razeen.me:port=8080:trustRoots=ca.pem:"
                           "certificate=client.pem:privateKey=client.key",
                           codec="grpc", proto="hello_world.proto")
    reply = await client.call("HelloWorldService.SayHelloWorld",
                              {"greeting": "hi", "infos": {"hello": "world"}}, timeout=5)
    # {'reply': 'Hello World !!'}
    stream = client.stream("HelloWorldService.ListHello", {"greeting": "hi"})
    async for message in stream: ...

Requests are messages of the method's request type or dicts in protobuf's
JSON mapping; responses are dicts in that mapping.  A timeout is sent as
C{grpc-timeout} and also enforced here (RST_STREAM CANCEL, then
L{rpcd.errors.DeadlineExceeded}); metadata travels as headers (C{-bin} keys
take bytes); a non-OK status fails the call with the L{rpcd.errors.RPCError}
of its code, C{grpc-message} as its message and the trailing metadata as its
C{details} (C{grpc-status-details-bin} among them, as bytes).  Responses
may be C{gzip}-compressed; requests are sent uncompressed.  Calls beyond
the server's C{MAX_CONCURRENT_STREAMS} wait for a free stream.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger

from rpcd.errors import Code, InvalidArgument, ProtocolError, RPCError, error_from_wire
from rpcd.client.grpc_protos import GRPCMethod, ProtoSet, load_protos_in_thread
from rpcd.client.channel import ClientChannel
from rpcd.wire.grpc_client_h2 import (
    CallClosed,
    CallHeaders,
    CallMessage,
    GRPCClientConnection,
    Ready,
    Terminated,
)
from rpcd.wire.grpc_client_messages import DEFAULT_MAX_MESSAGE_SIZE, encode_message, encode_metadata

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from rpcd.client.grpc_streams import GRPCStream

log = Logger()

#: Seconds a closing connection waits for the server to close its side.
CLOSE_GRACE = 2.0


class GRPCCall:
    """
    A call's state on the channel: its stream (None while it waits for one),
    and what receives its events.
    """

    def __init__(self, call_id: int, method: GRPCMethod) -> None:
        self.call_id = call_id
        self.method = method
        self.stream_id: int | None = None
        self.response: Any = None
        self.responses = 0
        self.stream: GRPCStream | None = None


class GRPCClientChannel(ClientChannel):
    """
    gRPC calls on one HTTP/2 connection.

    @ivar protos: the services and messages the calls use.
    @ivar h2: the sans-IO connection, once connected.
    """

    codec_name = "grpc"
    ready_on_connect = False

    def __init__(self, clock: IReactorTime, protos: ProtoSet,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        """
        @param clock: for deadlines.
        @param protos: the C{.proto} files' services.
        @param max_message_size: the largest response message accepted.
        """
        super().__init__(clock)
        self.protos = protos
        self.max_message_size = max_message_size
        self.h2: GRPCClientConnection | None = None
        self.calls: dict[int, GRPCCall] = {}
        self.by_stream: dict[int, GRPCCall] = {}
        self.waiting: deque[tuple[GRPCCall, Callable[[], None]]] = deque()

    @classmethod
    def prepare(cls, reactor: Any, proto: Any = None) -> Deferred[Callable[[], ClientChannel]]:
        """
        Load the C{.proto} files once for every connection made.

        @param reactor: the reactor.
        @param proto: a path, a list of paths, or a L{ProtoSet}.
        @return: a Deferred firing with a channel maker, or failing with
            C{ValueError} (no C{proto}, or protoc refused it).
        """
        if isinstance(proto, ProtoSet):
            return succeed(lambda: cls(reactor, proto))
        if not proto:
            d: Deferred[Callable[[], ClientChannel]] = Deferred()
            d.errback(ValueError("the grpc codec needs the server's .proto file(s): proto=PATH"))
            return d
        paths = [proto] if isinstance(proto, (str, bytes)) or hasattr(proto, "__fspath__") else proto
        return load_protos_in_thread(reactor, paths).addCallback(
            lambda protos: lambda: cls(reactor, protos))

    def connectionMade(self) -> None:
        tls = ISSLTransport.providedBy(self.transport)
        handle: Any = self.transport.getHandle() if tls else None  # type: ignore[attr-defined]
        if handle is not None:
            # Before the handshake starts (TLSMemoryBIOProtocol connects the
            # application first): offer HTTP/2.
            handle.set_alpn_protos([b"h2"])
        super().connectionMade()
        peer = self.transport.getPeer()
        authority = f"{getattr(peer, 'host', 'localhost')}:{getattr(peer, 'port', '')}".rstrip(":")
        if handle is not None:
            name = handle.get_servername()
            if name:
                authority = f"{name.decode('idna')}:{getattr(peer, 'port', 443)}"
        self.h2 = GRPCClientConnection(scheme="https" if tls else "http", authority=authority,
                                       max_message_size=self.max_message_size)
        self.h2.initiate()
        self._write()

    def _write(self) -> None:
        if self.h2 is not None and self.transport is not None:
            data = self.h2.data_to_send()
            if data:
                self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        assert self.h2 is not None
        try:
            events = self.h2.receive(data)
        except ProtocolError as e:
            self._write()
            why = f"{self.peer_name}: {e}"
            log.warn("{why}; closing the connection", why=why)
            self.fail_all(RPCError(why, code=Code.INTERNAL))
            self.transport.loseConnection()
            return
        for event in events:
            if isinstance(event, CallMessage):
                self._message(event)
            elif isinstance(event, CallClosed):
                self._closed(event)
            elif isinstance(event, CallHeaders):
                call = self.by_stream.get(event.stream_id)
                if call is not None and call.stream is not None:
                    call.stream.headers_received(event.metadata)
            elif isinstance(event, Ready):
                self._ready_event()
            elif isinstance(event, Terminated):
                log.info("{peer} sent GOAWAY (last stream {last})", peer=self.peer_name,
                         last=event.last_stream_id)
        self._start_waiting()
        self._drained()
        self._write()

    def _ready_event(self) -> None:
        negotiated = getattr(self.transport, "negotiatedProtocol", None)
        if negotiated not in (None, b"h2"):
            self.connected_d.errback(ProtocolError(
                f"{self.peer_name} chose ALPN {negotiated!r}, not h2: it does not speak gRPC here"))
            self.transport.abortConnection()
            return
        self.ready()

    # Starting calls.

    def _start(self, call: GRPCCall, start: Callable[[], None]) -> None:
        assert self.h2 is not None
        if self.h2.terminated:
            raise RPCError(f"{self.peer_name} is going away (GOAWAY): no new calls",
                           code=Code.UNAVAILABLE)
        self.calls[call.call_id] = call
        if self.h2.can_start() and not self.waiting:
            start()
        else:
            self.waiting.append((call, start))

    def _start_waiting(self) -> None:
        h2 = self.h2
        while self.waiting and h2 is not None and h2.can_start():
            call, start = self.waiting.popleft()
            if call.call_id in self.calls:
                start()
        if h2 is not None and h2.terminated:
            while self.waiting:
                call, _ = self.waiting.popleft()
                self._finish(call, RPCError(f"{self.peer_name} went away (GOAWAY) before the call "
                                            "started", code=Code.UNAVAILABLE))

    def send_call(self, call_id: int, method: str, value: Any, timeout: float | None,
                  metadata: dict[str, Any] | None) -> None:
        found = self.protos.method(method)
        if found.client_streaming or found.server_streaming:
            raise InvalidArgument(f"{found.name} is {found.kind}: open it with stream()")
        payload = encode_message(self.protos.request(found, value))
        try:
            fields = encode_metadata(metadata)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        call = GRPCCall(call_id, found)

        def start() -> None:
            assert self.h2 is not None
            stream_id = self.h2.start_call(found.path, fields, timeout)
            call.stream_id = stream_id
            self.by_stream[stream_id] = call
            self.h2.send(stream_id, payload, end_stream=True)
            self._write()
        self._start(call, start)

    def send_cancel(self, call_id: int) -> None:
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        if call.stream_id is not None and self.h2 is not None:
            self.by_stream.pop(call.stream_id, None)
            self.h2.cancel(call.stream_id)
            self._write()
            self._start_waiting()
            self._write()

    def open_stream(self, method: str, value: Any = None, *, timeout: float | None = None,
                    metadata: dict[str, Any] | None = None,
                    window: int | None = None) -> GRPCStream:
        """
        Open a streaming call (or a unary one, as a stream of one message).

        @param method: the method (see L{ProtoSet.method}).
        @param value: the request of a unary or server-streaming method;
            None for client-streaming and bidirectional ones (send with
            L{GRPCStream.send}).
        @param timeout: seconds the whole stream may take.
        @param metadata: request metadata.
        @param window: unused (HTTP/2's flow control sets the window).
        @return: the stream (already failed if the call cannot start).
        """
        from rpcd.client.grpc_streams import GRPCStream
        call_id = next(self._ids)
        try:
            found = self.protos.method(method)
        except RPCError as e:
            return GRPCStream.failed(self, method, e)
        call = GRPCCall(call_id, found)
        stream = GRPCStream(self, call)
        call.stream = stream
        if self.lost_reason is not None:
            stream.fail(error_from_wire(Code.UNAVAILABLE, f"connection to {self.peer_name} "
                                                          f"is closed; cannot call {method}"))
            return stream
        try:
            fields = encode_metadata(metadata)
            first = None if found.client_streaming else encode_message(self.protos.request(found, value))
        except (ValueError, RPCError) as e:
            stream.fail(e if isinstance(e, RPCError) else InvalidArgument(str(e)))
            return stream
        if found.client_streaming and value is not None:
            stream.fail(InvalidArgument(f"{found.name} is {found.kind}: send its requests "
                                        "with send(), not as the argument"))
            return stream
        self.pending[call_id] = stream.done

        def start() -> None:
            assert self.h2 is not None
            stream_id = self.h2.start_call(found.path, fields, timeout)
            call.stream_id = stream_id
            self.by_stream[stream_id] = call
            if first is not None:
                self.h2.send(stream_id, first, end_stream=True)
            stream.started()
            self._write()
        try:
            self._start(call, start)
        except RPCError as e:
            self.pending.pop(call_id, None)
            stream.fail(e)
            return stream
        if timeout is not None:
            stream.expire_after(timeout)
        return stream

    # Events.

    def _message(self, event: CallMessage) -> None:
        call = self.by_stream.get(event.stream_id)
        if call is None:
            return
        try:
            message = call.method.response_class.FromString(event.payload)
        except Exception as e:
            self._abort_call(call, RPCError(f"{call.method.name}: the server sent a response that "
                                            f"is not a {call.method.response_class.DESCRIPTOR.full_name}: "
                                            f"{e}", code=Code.INTERNAL))
            return
        value = self.protos.to_json(message)
        if call.stream is not None and call.method.server_streaming:
            call.stream.message_received(value, event.size)
            return
        assert self.h2 is not None
        self.h2.consumed(event.stream_id, event.size)
        call.responses += 1
        call.response = value
        if call.responses > 1:
            self._abort_call(call, RPCError(f"{call.method.name}: the server sent more than one "
                                            "response to a call that takes one", code=Code.INTERNAL))

    def _abort_call(self, call: GRPCCall, error: RPCError) -> None:
        if call.stream_id is not None and self.h2 is not None:
            self.by_stream.pop(call.stream_id, None)
            self.h2.cancel(call.stream_id)
        self._finish(call, error)

    def _closed(self, event: CallClosed) -> None:
        call = self.by_stream.pop(event.stream_id, None)
        if call is None:
            return
        if event.code != Code.OK:
            details = dict(event.metadata)
            if event.details is not None:
                details["grpc-status-details-bin"] = event.details
            self._finish(call, error_from_wire(event.code, event.message, details or None),
                         event.metadata)
            return
        if not call.method.server_streaming and call.responses != 1:
            self._finish(call, RPCError(f"{call.method.name}: the server ended the call with OK "
                                        "but no response", code=Code.INTERNAL), event.metadata)
            return
        self._finish(call, None if call.method.server_streaming else call.response, event.metadata)

    def _finish(self, call: GRPCCall, outcome: Any, trailers: dict[str, Any] | None = None) -> None:
        self.calls.pop(call.call_id, None)
        if call.stream is not None:
            call.stream.trailers = trailers
        if isinstance(outcome, Exception):
            self.reject(call.call_id, outcome)
        else:
            self.resolve(call.call_id, outcome)

    def _drained(self) -> None:
        h2 = self.h2
        if h2 is None:
            return
        for call in list(self.by_stream.values()):
            if call.stream is not None and call.stream_id is not None:
                call.stream.drained(h2.pending(call.stream_id))

    # Used by GRPCStream.

    def stream_send(self, call: GRPCCall, value: Any, end_stream: bool = False) -> int:
        """
        @return: the bytes of the stream still waiting for the server's window.
        @raise RPCError: the value does not fit the request type.
        """
        assert self.h2 is not None and call.stream_id is not None
        data = b"" if value is None else encode_message(self.protos.request(call.method, value))
        self.h2.send(call.stream_id, data, end_stream=end_stream)
        self._write()
        return self.h2.pending(call.stream_id)

    def stream_consumed(self, call: GRPCCall, size: int) -> None:
        """
        The application took a message of C{size} bytes from the stream.
        """
        if self.h2 is not None and call.stream_id is not None:
            self.h2.consumed(call.stream_id, size)
            self._write()

    def close(self) -> Deferred[None]:
        """
        Close the connection: GOAWAY, then close (TLS's close_notify
        included); calls still pending fail with L{rpcd.errors.ConnectionLost}.
        A peer that leaves the connection open is cut off after
        L{CLOSE_GRACE} seconds.

        @return: a Deferred firing when it is closed.
        """
        if self.transport is not None and self.lost_reason is None and self.h2 is not None:
            self.h2.conn.close_connection()
            self._write()
            timer = self.clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

            def stop_timer(result: Any) -> Any:
                if timer.active():
                    timer.cancel()
                return result
            self.closed_d.addBoth(stop_timer)
        return super().close()

    def connectionLost(self, reason: Any = None) -> None:
        self.waiting.clear()
        self.by_stream.clear()
        self.calls.clear()
        super().connectionLost(reason)

_Call = GRPCCall  # the old name, for code written before it was public
