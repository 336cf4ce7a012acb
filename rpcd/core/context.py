"""
The context of one call, handed to methods that ask for it.

A method asks by annotating a parameter with L{CallContext}::

    @exposed
    def Hello(self, name: str, ctx: CallContext) -> str:
        return f"hello {name} from {ctx.peer}"
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from rpcd.core.session import Session


class CallContext:
    """
    One call's context.

    @ivar session: the connection's L{rpcd.core.session.Session} (peer, TLS
        identity, login state).
    @ivar method: the C{Service.Method} being called.
    @ivar metadata: key/value metadata the caller sent (may be empty).
    @ivar deadline: the clock time by which the call must finish, or None.
    @ivar clock: the reactor's clock, for timers.
    @ivar reply_metadata: metadata the method sends back to the caller
        (gRPC sends it as response headers, or trailers once the first
        message is out; protocols without reply metadata ignore it).
    """

    __slots__ = ("session", "method", "metadata", "deadline", "clock", "reply_metadata")

    def __init__(self, session: Session, method: str, metadata: dict[str, Any] | None,
                 deadline: float | None, clock: IReactorTime) -> None:
        self.session = session
        self.method = method
        self.metadata = metadata or {}
        self.deadline = deadline
        self.clock = clock
        self.reply_metadata: dict[str, Any] = {}

    @property
    def peer(self) -> str:
        """
        @return: the peer's address as C{host:port} (or a Unix path).
        """
        return self.session.peer

    def time_remaining(self) -> float | None:
        """
        @return: seconds left before the deadline (never negative), or None
            when the call has no deadline.
        """
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self.clock.seconds())

    def __repr__(self) -> str:
        return f"<CallContext {self.method} from {self.peer}>"


current_deadline: ContextVar[tuple[float, Any] | None] = ContextVar("rpcd_deadline", default=None)
"""
The deadline of the call being handled, as C{(clock time, clock)}, or None:
set by the dispatcher while a handler with a deadline starts, and kept by
the coroutines it starts (Twisted copies the context into them).  rpcd's
client shortens the timeout of calls made there to what is left (see
L{remaining}), so a deadline shrinks as a call travels from daemon to
daemon.
"""


def remaining() -> float | None:
    """
    @return: seconds left of the deadline of the call being handled (never
        negative), or None outside a handler or without a deadline.
    """
    current = current_deadline.get()
    if current is None:
        return None
    deadline, clock = current
    return max(0.0, deadline - clock.seconds())


def shorten(timeout: float | None) -> float | None:
    """
    @param timeout: a call's own timeout in seconds, or None.
    @return: the timeout, shortened to what is left of the deadline of the
        call being handled.
    """
    left = remaining()
    if left is None or (timeout is not None and timeout <= left):
        return timeout
    return left
