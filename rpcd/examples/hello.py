"""
The per-connection C{HelloService} of seed 001 (4.3.4): it knows which
connection it serves, and C{Hello} needs a C{Login} on that connection first.
"""

from __future__ import annotations

from rpcd.errors import Unauthenticated
from rpcd.core.service import exposed, service
from rpcd.core.session import Session


@service(per_connection=True)
class HelloService:
    """Greets logged-in callers by their address; one instance per connection."""

    def __init__(self, session: Session) -> None:
        """
        @param session: the connection this instance serves.
        """
        self.session = session

    @exposed
    async def Login(self, request: str) -> str:
        """
        Log this connection in with "user:password".

        A request without ":" is a login with no password: refused and
        counted as a failed login like any other malformed credentials.
        """
        user, sep, password = request.partition(":")
        try:
            await self.session.login(user, password if sep else None)
        except Unauthenticated as e:
            if sep or "no password" not in e.message:
                raise
            raise Unauthenticated("auth failed: send \"user:password\"") from None
        return ""

    @exposed
    def Hello(self, request: str) -> str:
        """Return "hello:" + request + ", from" + the caller's address."""
        if self.session.user is None:
            raise Unauthenticated("please login")
        return "hello:" + request + ", from" + self.session.peer
