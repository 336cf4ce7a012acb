"""
The context of one call, handed to methods that ask for it.

A method asks by annotating a parameter with L{CallContext}::

    @exposed
    def Hello(self, name: str, ctx: CallContext) -> str:
        return f"hello {name} from {ctx.peer}"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from rpcd.session import Session


class CallContext:
    """
    One call's context.

    @ivar session: the connection's L{rpcd.session.Session} (peer, TLS
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
