"""
Graceful shutdown: the daemon's top service, which drains before it stops.

On C{stopService} (twistd calls it when SIGTERM or SIGINT stops the
reactor, and waits for its Deferred), in this order, one log line each:

 1. readiness turns NOT_SERVING (C{Health}, gRPC health, C{/readyz}) and
    systemd is told C{STOPPING=1};
 2. the daemon leaves discovery (its etcd lease is revoked);
 3. it stops listening;
 4. every connection is told to go away (L{SniffingProtocol.drain}: native
    and gRPC GOAWAY with the last call id that will be answered; HTTP, gob
    and JSON-RPC answer what they read, then close);
 5. it waits for the calls and streams running, up to C{shutdown_grace}
    seconds; then what is left fails with UNAVAILABLE and is cancelled;
 6. the other services stop (reverse connections, the login pool).

L{DaemonService.stop_now} (a second signal) skips the rest of the wait.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from rpcd.core.health import HealthState
from rpcd.core.twistedcompat import waiting_for_port
from rpcd.daemon.sdnotify import notify

if TYPE_CHECKING:
    from rpcd.server.factory import RPCServer

log = Logger()

DRAIN_REASON = "the server is shutting down"

# Seconds leaving discovery may take before the drain goes on without it.
DISCOVERY_TIMEOUT = 5.0

# Seconds connections closed by stop_now have to send their last bytes.
STOP_WAIT = 1.0


class DaemonService(MultiService):
    """
    Everything a daemon runs; ready once all its listeners listen, and
    drained before it stops.

    @ivar rpc_server: the daemon's L{RPCServer}.
    @ivar health: its L{HealthState}.
    @ivar shutdown_grace: seconds running calls get to end when draining.
    @ivar listeners: the listening services.
    @ivar discovery: the etcd registration service, or None.
    @ivar on_drain: called with this service when a drain starts (twistd's
        side installs the second-signal handlers there).
    """

    def __init__(self, rpc_server: RPCServer, health: HealthState, shutdown_grace: float,
                 notify: Callable[[str], Any] = notify) -> None:
        super().__init__()
        self.rpc_server = rpc_server
        self.health = health
        self.shutdown_grace = shutdown_grace
        self.listeners: list[Any] = []
        self.discovery: Any = None
        self.on_drain: Callable[[DaemonService], None] | None = None
        self._notify = notify
        self._draining: Deferred[None] | None = None
        self._grace_timer: Any = None
        self._done: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        waiting = [w for w in (waiting_for_port(s) for s in self.listeners)
                   if w is not None]
        ports: Deferred[Any] = DeferredList(waiting, fireOnOneErrback=True, consumeErrors=True) \
            if waiting else succeed(None)
        ports.addCallbacks(self._listening, lambda _: None)

    def _listening(self, _: object) -> None:
        # Ready once the reactor runs (its signal handlers are installed:
        # a SIGTERM right after READY=1 drains, it does not kill).
        call_later = getattr(self.rpc_server.clock, "callLater", None)
        if call_later is not None:
            call_later(0, self._ready)
        else:
            self._ready()

    def _ready(self) -> None:
        if self._draining is not None or not self.running:
            return
        self.health.set_ready(True)
        self._notify("READY=1")
        log.info("rpcd ready: readiness SERVING")

    def stopService(self) -> Deferred[None]:
        """
        Drain, then stop every service.

        @return: a Deferred firing with None once everything has stopped.
        """
        d = self.drain()
        d.addCallback(lambda _: MultiService.stopService(self))
        return d

    def drain(self) -> Deferred[None]:
        """
        Drain (see the module docstring); once only.

        @return: a Deferred firing with None when no connection is left; it
            does not fail.
        """
        if self._draining is None:
            self._draining = Deferred.fromCoroutine(self._drain())
        done: Deferred[None] = Deferred()

        def fire(result: object) -> object:
            done.callback(None)
            return result
        self._draining.addBoth(fire)
        return done

    async def _drain(self) -> None:
        server = self.rpc_server
        clock = server.clock
        seconds = getattr(clock, "seconds", lambda: 0.0)  # a MemoryReactor has no clock
        started = seconds()
        self.health.draining = True
        self.health.set_ready(False)
        self._notify("STOPPING=1")
        if self.on_drain is not None:
            self.on_drain(self)
        log.info("draining: readiness NOT_SERVING")
        if self.discovery is not None and self.discovery.running:
            leaving = self.discovery.stopService()
            leaving.addTimeout(DISCOVERY_TIMEOUT, clock)
            await leaving.addErrback(lambda f: log.warn("draining: leaving discovery failed: {e}",
                                                        e=f.getErrorMessage()))
            log.info("draining: left discovery")
        stopped = [listener.stopService() for listener in self.listeners if listener.running]
        await DeferredList([d for d in stopped if d is not None], consumeErrors=True)
        log.info("draining: stopped listening on {n} endpoint(s)", n=len(stopped))
        connections = list(server.open_connections)
        calls = sum(len(getattr(getattr(c.inner, "dispatcher", None), "running", ())) for c in connections)
        log.info("draining: {n} connection(s) told to go away, {calls} call(s) running; "
                 "waiting up to {grace:g} s (server.shutdown_grace)",
                 n=len(connections), calls=calls, grace=self.shutdown_grace)
        gone = DeferredList([c.drain(DRAIN_REASON) for c in connections])
        if not gone.called:
            done = self._done = Deferred()
            gone.addCallback(lambda _: done.callback(None) if not done.called else None)
            self._grace_timer = clock.callLater(self.shutdown_grace, self.stop_now,
                                                f"the server shut down: the call outlived "
                                                f"server.shutdown_grace ({self.shutdown_grace:g} s)")
            await done
        if self._grace_timer is not None and self._grace_timer.active():
            self._grace_timer.cancel()
        log.info("drained in {seconds:.3f} s", seconds=seconds() - started)

    def stop_now(self, why: str = "the server shut down at once (second signal)") -> None:
        """
        Stop waiting: fail what still runs with UNAVAILABLE and close every
        connection (the grace is over, or a second signal came).

        @param why: the errors' message.
        """
        self._grace_timer = None
        connections = list(self.rpc_server.open_connections)
        if connections:
            log.info("draining: {why}; closing {n} connection(s)", why=why, n=len(connections))
        for c in connections:
            c.stop_now(why)
        done = self._done
        if done is not None and not done.called:
            # Closed connections are gone once their last bytes are sent; a
            # peer that does not read them is not waited for long.
            self.rpc_server.clock.callLater(
                STOP_WAIT, lambda: done.callback(None) if not done.called else None)


__all__ = ["DaemonService", "DRAIN_REASON"]
