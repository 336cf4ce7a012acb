"""
The client side of a connection, whatever its wire protocol: pending calls
matched by id, deadlines, cancellation, and failing everything at once when
the connection is lost.

Each wire protocol's client subclasses L{ClientChannel} and implements
L{ClientChannel.send_call} and L{ClientChannel.send_cancel}; it reports
replies with L{ClientChannel.resolve} and L{ClientChannel.reject}.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Callable, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import INegotiated, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from rpcd.errors import ConnectionLost, DeadlineExceeded, EncodeError, NotRun, RPCError
from rpcd.wire.fields import check_metadata, check_method, check_timeout
from rpcd.wire.sockopts import set_keepalive, set_no_delay

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime


class ClientChannel(Protocol):
    """
    Calls in flight on one connection.

    @ivar pending: call id to the caller's Deferred.
    @ivar peer_name: how errors name the other side.
    @ivar going_away: once the server sent a graceful GOAWAY, its message:
        the calls it will answer are still pending, new calls fail with
        L{NotRun} (L{rpcd.client.Client} sends them on a new connection).
    @ivar on_goaway: called with the channel when a graceful GOAWAY arrives.
    @ivar resend: when set (by a L{rpcd.client.Client} that redials), called
        with each pending call a graceful GOAWAY says was not run, and its
        L{NotRun} error, instead of failing it: the caller sends it again
        elsewhere and settles it (see L{PendingCall.request}).
    """

    transport: ITCPTransport

    codec_name = "abstract"
    ready_on_connect = True
    """Whether calls can start as soon as the transport connects; codecs
    whose server speaks first (a preface, a handshake) call L{ready} later."""

    def __init__(self, clock: IReactorTime) -> None:
        """
        @param clock: for call deadlines.
        """
        self.clock = clock
        self.pending: dict[int, Deferred] = {}
        self._ids = itertools.count(1)
        self.peer_name = "the server"
        self.connected_d: Deferred[ClientChannel] = Deferred(self._abort_handshake)
        self.closed_d: Deferred[None] = Deferred()
        self.lost_reason: Failure | None = None
        self.going_away: str | None = None
        self.on_goaway: list[Callable[[ClientChannel], None]] = []
        self.resend: Callable[[PendingCall, NotRun], None] | None = None

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        set_keepalive(self.transport)
        peer = self.transport.getPeer()
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        if host is not None:
            self.peer_name = f"{host}:{port}"
        if self.ready_on_connect:
            self.ready()

    def _abort_handshake(self, d: Deferred[ClientChannel]) -> None:
        # Whoever waited for the handshake gave up: drop the half-open connection.
        if self.transport is not None:
            self.transport.abortConnection()

    def ready(self) -> None:
        """
        The channel can take calls; fire L{connected_d}.  Codecs with a
        handshake call this when it is done.
        """
        if not self.connected_d.called:
            self.connected_d.callback(self)

    def call(self, method: str, value: Any = None, timeout: float | None = None,
             metadata: dict[str, Any] | None = None) -> Deferred[Any]:
        """
        Start a call.

        @param method: C{Service.Method}.
        @param value: the argument value.
        @param timeout: seconds to wait before failing with
            L{DeadlineExceeded} (and cancelling the call on the server).
        @param metadata: key/value metadata (codecs that cannot carry it
            ignore it).
        @return: a Deferred firing with the result; it fails with an
            L{RPCError} subclass for a remote error, L{DeadlineExceeded} for
            a timeout, L{ConnectionLost} when the connection goes first, and
            C{CancelledError} when cancelled by the caller.
        @raise TypeError: a method, timeout or metadata of the wrong type
            (nothing is sent).
        @raise ValueError: a timeout that is negative, not finite or over
            L{rpcd.wire.fields.MAX_TIMEOUT}, or metadata over its bounds
            (nothing is sent).
        """
        if type(method) is not str:
            check_method(method)
        if timeout is not None:
            timeout = check_timeout(timeout)
        if metadata is not None:
            metadata = check_metadata(metadata)
        if self.lost_reason is not None:
            return _failed(ConnectionLost(f"connection to {self.peer_name} is closed; "
                                          f"cannot call {method}"))
        if self.going_away is not None:
            return _failed(NotRun(f"{self.peer_name} is going away ({self.going_away}); "
                                  f"{method} was not sent"))
        call_id = next(self._ids)
        d = PendingCall(self._cancel_call)
        d.call_id = call_id
        d.request = (method, value, metadata,
                     None if timeout is None else self.clock.seconds() + timeout)
        self.pending[call_id] = d
        try:
            self.send_call(call_id, method, value, timeout, metadata)
        except Exception as e:
            del self.pending[call_id]
            return _failed(e if isinstance(e, RPCError) else
                           EncodeError(f"cannot send {method}: the {self.codec_name} codec cannot "
                                       f"encode its argument: {type(e).__name__}: {e}"))
        if timeout is not None:
            timer = self.clock.callLater(timeout, self._expire, call_id, method, timeout)
            d.addBoth(_cancel_timer, timer)
        return d

    def _cancel_call(self, d: Deferred[Any]) -> None:
        # The caller cancelled: tell the server, if the call is still pending.
        call_id = cast(PendingCall, d).call_id
        if self.pending.pop(call_id, None) is not None:
            self.send_cancel(call_id)

    def _expire(self, call_id: int, method: str, timeout: float) -> None:
        d = self.pending.pop(call_id, None)
        if d is None:
            return
        self.send_cancel(call_id)
        d.errback(DeadlineExceeded(f"{method} did not answer within {timeout:g} s "
                                   f"(cancelled on {self.peer_name})"))

    def resolve(self, call_id: int, value: Any) -> None:
        """
        A call succeeded.

        @param call_id: its id.
        @param value: the decoded result.
        """
        d = self.pending.pop(call_id, None)
        if d is not None:
            d.callback(value)

    def reject(self, call_id: int, error: Exception) -> None:
        """
        A call failed.

        @param call_id: its id.
        @param error: the error (an L{RPCError} for remote errors).
        """
        d = self.pending.pop(call_id, None)
        if d is not None:
            d.errback(error)

    def send_call(self, call_id: int, method: str, value: Any, timeout: float | None,
                  metadata: dict[str, Any] | None) -> None:
        """
        Write a call to the wire.
        """
        raise NotImplementedError()

    def send_cancel(self, call_id: int) -> None:
        """
        Tell the server the caller gave up (codecs without a cancel message
        do nothing).
        """

    def go_away(self, last_id: int, message: str) -> None:
        """
        The server said it goes away gracefully: it answers the calls up to
        C{last_id} and runs none after.  Those after fail with L{NotRun}
        (to be retried elsewhere); new calls are not sent here.

        @param last_id: the highest call id the server will answer.
        @param message: its reason.
        """
        first = self.going_away is None
        self.going_away = message
        resend = self.resend
        for call_id in [k for k in self.pending if k > last_id]:
            d = self.pending.pop(call_id)
            error = NotRun(f"{self.peer_name} went away before running call {call_id} "
                           f"({message})")
            if resend is not None and isinstance(d, PendingCall):
                resend(d, error)
            else:
                d.errback(error)
        if first:
            for listener in list(self.on_goaway):
                listener(self)

    def fail_all(self, error: Exception) -> None:
        """
        Fail every pending call with one error.

        @param error: the error.
        """
        pending, self.pending = self.pending, {}
        for d in pending.values():
            d.errback(error)

    def close(self) -> Deferred[None]:
        """
        Close the connection.

        @return: a Deferred firing when it is closed.
        """
        if self.transport is not None and self.lost_reason is None:
            self.transport.loseConnection()
        return when_fired(self.closed_d)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost_reason = reason
        why = self.describe_loss(reason)
        self.fail_all(ConnectionLost(f"connection to {self.peer_name} lost before the "
                                     f"call was answered: {why}"))
        if not self.connected_d.called:
            self.connected_d.errback(ConnectionLost(f"connection to {self.peer_name} closed "
                                                    f"during the handshake: {why}"))
        if not self.closed_d.called:
            self.closed_d.callback(None)


    def describe_loss(self, reason: Failure | None) -> str:
        """
        Say why the connection was lost, in words a user can act on (a TLS
        failure is described by L{rpcd.tls.tlsinfo.describe_tls_failure}).

        @param reason: what C{connectionLost} got.
        @return: one phrase.
        """
        if reason is None:
            return "closed"
        if INegotiated.providedBy(self.transport):
            from rpcd.tls.tlsinfo import describe_tls_failure
            return describe_tls_failure(reason, side="client", transport=self.transport)
        return reason.getErrorMessage()


class PendingCall(Deferred[Any]):
    """
    A call's Deferred, which knows its id and request: its canceller is one
    bound method of the channel, not a closure made per call, and a call
    the server did not run can be sent again without a callback added to
    every call in case it happens (L{ClientChannel.resend}).

    @ivar call_id: the call's id on its channel.
    @ivar request: C{(method, value, metadata, deadline)}, the deadline in
        the channel clock's seconds or None.
    @ivar tries: sends left after this one (set on a call sent again).
    @ivar moved_to: once sent again, the new call's Deferred: this one
        fires with its result, and cancelling this one cancels it.
    """

    __slots__ = ("call_id", "request", "tries", "moved_to")
    call_id: int
    request: tuple[str, Any, dict[str, Any] | None, float | None]
    tries: int
    moved_to: Deferred[Any]

    def cancel(self) -> None:
        moved = getattr(self, "moved_to", None)
        if moved is not None and not self.called:
            moved.cancel()  # settles this one (see move_to)
            if self.called:
                return
        super().cancel()

    def move_to(self, other: Deferred[Any]) -> None:
        """
        Fire with C{other}'s result, and cancel C{other} when cancelled.

        @param other: the Deferred of the call sent again.
        """
        self.moved_to = other
        other.addBoth(_settle, self)


def _settle(result: Any, d: Deferred[Any]) -> None:
    if not d.called:
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)


def _failed(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d


def _cancel_timer(result: Any, timer: Any) -> Any:
    if timer.active():
        timer.cancel()
    return result


def when_fired(d: Deferred[Any]) -> Deferred[None]:
    """
    A new Deferred that fires with None when C{d} fires, either way, without
    changing C{d}'s result (so many callers can wait on one event).

    @param d: the event.
    @return: the new Deferred.
    """
    out: Deferred[None] = Deferred()

    def fire(result: Any) -> Any:
        out.callback(None)
        return result

    d.addBoth(fire)
    return out


__all__ = ["ClientChannel", "PendingCall", "when_fired"]
