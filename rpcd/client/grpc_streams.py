"""
Streaming gRPC calls from rpcd's client (L{rpcd.client.grpc}), with the
same API as the native protocol's L{rpcd.client.streams.ClientStream}::

    stream = client.stream("HelloWorldService.SayHelloChat", timeout=10)
    await stream.send({"greeting": "hi"})     # fires once HTTP/2's window took it
    stream.close_send()                       # half-close
    async for message in stream:              # the server's messages, as dicts
        print(message)
    await stream.result()                     # None, or a client stream's response

The server's messages wait here until the application takes them; HTTP/2's
window for the stream is handed back only while less than a window's worth
waits (L{rpcd.wire.grpc_client_h2}), so a slow reader slows the server.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed

from rpcd.client.streams import StreamEnd
from rpcd.errors import Code, DeadlineExceeded, RPCError

if TYPE_CHECKING:
    from rpcd.client.grpc import GRPCClientChannel, GRPCCall


class GRPCStream(StreamEnd):
    """
    One streaming gRPC call, from the caller's side.

    @ivar method: the method's C{package.Service.Method}.
    @ivar headers: the response metadata, once it came (else None).
    @ivar trailers: the trailing metadata, once the call ended (else None).
    @ivar done: fires with the final value or fails with the call's error.
    """

    def __init__(self, channel: GRPCClientChannel, call: GRPCCall | None, method: str = "") -> None:
        self._channel = channel
        self._call = call
        self.method = call.method.name if call is not None else method
        self.headers: dict[str, Any] | None = None
        self.trailers: dict[str, Any] | None = None
        self.done: Deferred[Any] = Deferred(self._cancelled)
        self.done.addBoth(self._finished)
        self._ended = False
        self._error: BaseException | None = None
        self._value: Any = None
        self._result_waiters: list[Deferred[Any]] = []
        self._queue: deque[tuple[Any, int]] = deque()
        self._waiting: Deferred[Any] | None = None
        self._sends: deque[Deferred[None]] = deque()
        self._started = False
        self._early: deque[tuple[Any, bool]] = deque()
        self._half_closed = False
        self._timer: Any = None

    @classmethod
    def failed(cls, channel: GRPCClientChannel, method: str, error: BaseException) -> GRPCStream:
        """
        @return: a stream that already failed with C{error}.
        """
        stream = cls(channel, None, method)
        stream.fail(error)
        return stream

    def fail(self, error: BaseException) -> None:
        """
        End the stream with C{error} (before it reached the channel).
        """
        if not self.done.called:
            self.done.errback(error)

    # From the channel.

    def started(self) -> None:
        """
        The call has its HTTP/2 stream: send what waited for it.
        """
        self._started = True
        early, self._early = self._early, deque()
        for value, end in early:
            self._write(value, end)

    def headers_received(self, metadata: dict[str, Any]) -> None:
        self.headers = metadata

    def message_received(self, value: Any, size: int) -> None:
        d = self._waiting
        if d is not None:
            self._waiting = None
            self._consumed(size)
            d.callback(value)
            return
        self._queue.append((value, size))

    def drained(self, pending: int) -> None:
        """
        Bytes still wait for the server's window: fire the sends once none do.
        """
        if pending == 0:
            sends, self._sends = self._sends, deque()
            for d in sends:
                d.callback(None)

    def expire_after(self, timeout: float) -> None:
        self._timer = self._channel.clock.callLater(timeout, self._expire, timeout)

    def _consumed(self, size: int) -> None:
        if self._call is not None and not self._ended:
            self._channel.stream_consumed(self._call, size)

    # Receiving.

    def __aiter__(self) -> GRPCStream:
        return self

    def __anext__(self) -> Deferred[Any]:
        """
        @return: a Deferred firing with the next message, failing with
            C{StopAsyncIteration} at the end or with the stream's error.
        """
        if self._queue:
            value, size = self._queue.popleft()
            self._consumed(size)
            return succeed(value)
        if self._ended:
            return fail(self._error or StopAsyncIteration())
        d: Deferred[Any] = Deferred(lambda d: self.cancel())
        self._waiting = d
        return d

    # Sending.

    def send(self, value: Any) -> Deferred[None]:
        """
        Send one request message.

        @param value: a message of the request type, or a dict in
            protobuf's JSON mapping.
        @return: a Deferred firing once HTTP/2's flow control took the
            message; failing with the stream's error if it ended, with
            L{RPCError} (FAILED_PRECONDITION) after L{close_send}, or
            (INVALID_ARGUMENT) for a value that does not fit.
        """
        if self._ended:
            return fail(self._error or RPCError(f"{self.method}: the stream has ended",
                                                code=Code.FAILED_PRECONDITION))
        if self._half_closed or self._call is None or not self._call.method.client_streaming:
            return fail(RPCError(f"{self.method}: no more requests can be sent",
                                 code=Code.FAILED_PRECONDITION))
        try:
            self._channel.protos.request(self._call.method, value)
        except RPCError as e:
            return fail(e)
        if not self._started:
            self._early.append((value, False))
            d: Deferred[None] = Deferred()
            self._sends.append(d)
            return d
        return self._write(value, False)

    def _write(self, value: Any, end: bool) -> Deferred[None]:
        assert self._call is not None
        pending = self._channel.stream_send(self._call, value, end)
        if pending == 0 and not self._sends:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._sends.append(d)
        return d

    def close_send(self) -> None:
        """
        Half-close: no more requests follow.
        """
        if self._half_closed or self._ended or self._call is None:
            return
        self._half_closed = True
        if self._call.method.client_streaming:
            if self._started:
                self._write(None, True)
            else:
                self._early.append((None, True))

    # Ending.

    def cancel(self) -> None:
        """
        Give up: RST_STREAM CANCEL; the stream fails with L{Cancelled}.
        """
        if not self.done.called:
            self.done.cancel()

    def _cancelled(self, d: Deferred[Any]) -> None:
        if self._call is not None and self._channel.pending.pop(self._call.call_id, None) is not None:
            self._channel.send_cancel(self._call.call_id)

    def _expire(self, timeout: float) -> None:
        self._timer = None
        if self._call is None or self._channel.pending.pop(self._call.call_id, None) is None:
            return
        self._channel.send_cancel(self._call.call_id)
        self.done.errback(DeadlineExceeded(f"{self.method} did not end within {timeout:g} s "
                                           f"(cancelled on {self._channel.peer_name})"))

    def _finished(self, outcome: Any) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        sends, self._sends = list(self._sends), deque()
        self.settle(outcome, sends)

    def __repr__(self) -> str:
        return f"<GRPCStream {self.method}>"
