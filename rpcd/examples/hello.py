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

    def __init__(self, session: Session, require_login: bool = True) -> None:
        """
        @param session: the connection this instance serves.
        @param require_login: C{Hello} needs a C{Login} first (4.3.4); false
            for the plain service of seed 001's reverse RPC (4.3.3), whose
            caller calls C{Hello} at once.
        """
        self.session = session
        self.require_login = require_login

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
        if self.require_login and self.session.user is None:
            raise Unauthenticated("please login")
        return "hello:" + request + ", from" + self.session.peer
