"""
Per-connection state: who the peer is, how it authenticated, and the
per-connection service instances.

Each protocol instance holds one L{Session} for its whole life.  Login state
belongs to the session and is gone when the connection closes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.logger import Logger

from rpcd.errors import ResourceExhausted, Unauthenticated

if TYPE_CHECKING:
    from rpcd.service import BoundMethod, ServiceRegistry

log = Logger()


class Session:
    """
    One connection's context.

    @ivar peer: the peer's address, C{host:port}, as Go's
        C{conn.RemoteAddr().String()} gives it (IPv6 hosts in brackets).
    @ivar peer_host: the peer's host alone (the key for rate limits).
    @ivar protocol: the wire protocol name (C{native}, C{gob}, C{jsonrpc}, ...).
    @ivar tls_identity: the peer's verified certificate identity, or None.
    @ivar user: the logged-in user, or None.
    @ivar data: free space for services to keep per-connection state.
    """

    def __init__(self, registry: ServiceRegistry, peer: str, peer_host: str,
                 authenticator: Any = None, tls_identity: Any = None,
                 protocol: str = "native") -> None:
        """
        @param registry: where per-connection services come from.
        @param peer: the peer's address text.
        @param peer_host: the peer's host.
        @param authenticator: an L{rpcd.login.Authenticator}, or None when the
            daemon has no users (every login then fails).
        @param tls_identity: the verified client certificate identity.
        @param protocol: the wire protocol's name.
        """
        self.registry = registry
        self.peer = peer
        self.peer_host = peer_host
        self.protocol = protocol
        self.tls_identity = tls_identity
        self.user: str | None = None
        self.data: dict[str, Any] = {}
        self._authenticator = authenticator
        self._bound: dict[str, BoundMethod] | None = None
        self._on_close: list[Callable[[], None]] = []
        self.closed = False

    def lookup(self, name: str) -> BoundMethod | None:
        """
        Find C{Service.Method} among shared and this connection's services.

        @param name: the full method name.
        @return: the bound method, or None.
        """
        method = self.registry.lookup_shared(name)
        if method is not None:
            return method
        if self._bound is None:
            if not self.registry.has_per_connection():
                return None
            self._bound = self.registry.bind_connection(self)
        return self._bound.get(name)

    async def login(self, user: str, password: str) -> None:
        """
        Check a user's password and mark this connection logged in.

        @param user: the user name.
        @param password: the password.
        @raise Unauthenticated: wrong user or password ("auth failed").
        @raise ResourceExhausted: too many failed attempts from this host.
        """
        if self._authenticator is None:
            raise Unauthenticated("auth failed: this daemon has no users configured")
        wait = self._authenticator.retry_after(self.peer_host)
        if wait is not None:
            raise ResourceExhausted(f"too many failed logins from {self.peer_host}; "
                                    f"try again in {wait:.0f} s")
        ok = await self._authenticator.authenticate(self.peer_host, user, password)
        if not ok:
            log.info("failed login for {user!r} from {peer}", user=user, peer=self.peer)
            raise Unauthenticated("auth failed")
        log.info("{peer} logged in as {user!r}", peer=self.peer, user=user)
        self.user = user

    def on_close(self, callback: Callable[[], None]) -> None:
        """
        Run a callback when the connection closes (immediately if it has).

        @param callback: called with no arguments.
        """
        if self.closed:
            callback()
        else:
            self._on_close.append(callback)

    def close(self) -> None:
        """
        Mark the connection closed: forget the login and run close callbacks.
        """
        if self.closed:
            return
        self.closed = True
        self.user = None
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.failure("session close callback failed for {peer}", peer=self.peer)

    def __repr__(self) -> str:
        return f"<Session {self.protocol} {self.peer} user={self.user!r}>"


def describe_address(address: Any) -> tuple[str, str]:
    """
    Text for a Twisted address, as Go prints a net.Addr.

    @param address: an C{IAddress} (IPv4Address, IPv6Address, UNIXAddress...).
    @return: C{(peer, host)}, e.g. C{("127.0.0.1:50312", "127.0.0.1")}.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        if ":" in host:
            return f"[{host}]:{port}", host
        return f"{host}:{port}", host
    name = getattr(address, "name", None)
    if name is not None:
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        return text or "@", "unix"
    return str(address), str(address)


__all__ = ["Session", "describe_address"]
