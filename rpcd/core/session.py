"""
Per-connection state: who the peer is, how it authenticated, and the
per-connection service instances.

Each protocol instance holds one L{Session} for its whole life.  Login state
belongs to the session and is gone when the connection closes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from rpcd.errors import ResourceExhausted, Unauthenticated

if TYPE_CHECKING:
    from rpcd.core.service import BoundMethod, ServiceRegistry

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
    @ivar data: free space for services to keep per-connection state
        (made on first use).
    """

    __slots__ = ("registry", "peer", "peer_host", "protocol", "tls_identity", "user",
                 "closed", "_data", "_authenticator", "_bound", "_on_close", "_login_running")

    def __init__(self, registry: ServiceRegistry, peer: str, peer_host: str,
                 authenticator: Any = None, tls_identity: Any = None,
                 protocol: str = "native") -> None:
        """
        @param registry: where per-connection services come from.
        @param peer: the peer's address text.
        @param peer_host: the peer's host.
        @param authenticator: an L{rpcd.daemon.login.Authenticator}, or None when the
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
        # Made on first use: most connections never need them.
        self._data: dict[str, Any] | None = None
        self._authenticator = authenticator
        self._bound: dict[str, BoundMethod] | None = None
        self._on_close: list[Callable[[], None]] | None = None
        self._login_running = False
        self.closed = False

    @property
    def data(self) -> dict[str, Any]:
        """
        Free space for services to keep per-connection state.
        """
        data = self._data
        if data is None:
            data = self._data = {}
        return data

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

    async def login(self, user: object, password: object) -> None:
        """
        Check a user's password and mark this connection logged in.

        One login at a time per connection: its check runs to the end even
        if the call is cancelled, and another login on this connection is
        refused until then.

        @param user: the user name, as the peer sent it.
        @param password: the password, as the peer sent it.
        @raise Unauthenticated: wrong user or password ("auth failed"), or
            malformed credentials ("auth failed: " and what is wrong).
        @raise ResourceExhausted: a login is already being checked on this
            connection, too many failed attempts from this host (or against
            this user from it), or too many logins are being checked.
        """
        if self._authenticator is None:
            raise Unauthenticated("auth failed: this daemon has no users configured")
        if self._login_running:
            raise ResourceExhausted("a login is already being checked on this connection; "
                                    "wait for its answer before sending another")
        try:
            checked = self._authenticator.login(self.peer_host, user, password)
        except Unauthenticated as e:
            log.info("refused a malformed login from {peer}: {why}", peer=self.peer, why=e.message)
            raise
        self._login_running = True

        def done(result: object) -> object:
            self._login_running = False
            return result
        ok = await _shielded(checked.addBoth(done))
        if not ok:
            log.info("failed login for {user!r} from {peer}", user=user, peer=self.peer)
            raise Unauthenticated("auth failed")
        if self.closed:
            return
        assert isinstance(user, str)  # the check matched it
        log.info("{peer} logged in as {user!r}", peer=self.peer, user=user)
        self.user = user

    def on_close(self, callback: Callable[[], None]) -> None:
        """
        Run a callback when the connection closes (immediately if it has).

        @param callback: called with no arguments.
        """
        if self.closed:
            callback()
        elif self._on_close is None:
            self._on_close = [callback]
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
        callbacks, self._on_close = self._on_close, None
        for callback in callbacks or ():
            try:
                callback()
            except Exception:
                log.failure("session close callback failed for {peer}", peer=self.peer)

    def __repr__(self) -> str:
        return f"<Session {self.protocol} {self.peer} user={self.user!r}>"


def _shielded(d: Deferred[Any]) -> Deferred[Any]:
    """
    A Deferred with C{d}'s result whose cancellation leaves C{d} alone.

    @param d: a Deferred that must run to its end (a password check, whose
        end frees the connection's login slot).
    @return: the new Deferred.
    """
    waiter: Deferred[Any] = Deferred()

    def forward(result: object) -> None:
        if waiter.called:
            if isinstance(result, Failure):
                log.failure("a cancelled login's check failed", result)
            return
        if isinstance(result, Failure):
            waiter.errback(result)
        else:
            waiter.callback(result)
    d.addBoth(forward)
    return waiter


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
