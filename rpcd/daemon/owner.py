"""
Process-shared services: with C{server.workers} above 1, a service whose
state spans connections (C{KVStoreService}: a C{Set} on one connection wakes
a C{Watch} on another) runs once, in the supervisor (its I{owner}); each
worker registers a proxy under the same name that sends the calls to the
owner over a private Unix socket with rpcd's own native client.

A service is process-shared when its class says so (L{process_shared}) or
its config entry sets C{process_shared = true}; C{false} overrides the
class.  Its unary and server-streaming methods are proxied (deadlines and
cancellation travel with the call); a client or bidirectional stream, or a
per-connection service, cannot be and is refused at startup with a message
naming the service.  Access checks (C{require_login},
C{require_identity}) run in the worker that holds the caller's connection.
"""

from __future__ import annotations

import dataclasses
from typing import Any, AsyncIterator, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from rpcd.daemon.config import ConfigError, ServiceConfig
from rpcd.core.service import Kind, MethodSpec, ServiceSpec

log = Logger()

_SHARED = "__rpcd_process_shared__"

#: Calls a worker may have running at the owner on its one connection.
OWNER_MAX_CALLS = 1_000_000


def process_shared(cls: type) -> type:
    """
    Class decorator: the service keeps state across connections, so with
    worker processes it runs once, in the supervisor, and the workers call
    it there.

    @param cls: a service class.
    @return: the class, marked.
    """
    setattr(cls, _SHARED, True)
    return cls


def is_process_shared(spec: ServiceSpec, entry: ServiceConfig) -> bool:
    """
    @param spec: a resolved service.
    @param entry: its config entry.
    @return: whether it runs in the owner when there are workers.
    """
    if entry.process_shared is not None:
        return entry.process_shared
    return bool(getattr(spec.cls, _SHARED, False))


def split_shared(services: list[tuple[ServiceSpec, ServiceConfig]]
                 ) -> list[tuple[ServiceSpec, ServiceConfig]]:
    """
    The process-shared services among the resolved ones, checked.

    @param services: from L{rpcd.daemon.resolve_services}.
    @return: those to run in the owner.
    @raise ConfigError: one cannot be proxied (per-connection, or with a
        client or bidirectional stream); the message names it and the fix.
    """
    shared = []
    for spec, entry in services:
        if not is_process_shared(spec, entry):
            continue
        if spec.per_connection:
            raise ConfigError(f"services.{spec.name}: a per-connection service cannot be "
                              "process_shared; set process_shared = false")
        for method in spec.methods.values():
            if method.kind in (Kind.CLIENT_STREAM, Kind.BIDI_STREAM):
                raise ConfigError(
                    f"services.{spec.name}: {spec.name}.{method.name} is a {method.kind.value}, "
                    "which workers cannot send to the process that owns the service; "
                    "set server.workers = 1, or process_shared = false if its state "
                    "needs no sharing across connections")
        shared.append((spec, entry))
    return shared


class OwnerLink:
    """
    A worker's connection to the owner's Unix socket, dialled on first use
    and again after it is lost.

    @ivar path: the owner's socket path.
    """

    def __init__(self, path: str, reactor: Any) -> None:
        self.path = path
        self.reactor = reactor
        self._client: Any = None
        self._waiting: list[Deferred[Any]] = []

    def client(self) -> Deferred[Any]:
        """
        @return: a Deferred firing with a connected L{rpcd.client.Client},
            or failing with the connection error.
        """
        if self._client is not None:
            return succeed(self._client)
        waiting: Deferred[Any] = Deferred()
        self._waiting.append(waiting)
        if len(self._waiting) == 1:
            from rpcd.client import connect
            # No connect timeout: the socket is local, and a worker flooded
            # with calls as it starts must not fail them all because its own
            # loop was too busy to see the owner's answer in time.
            connect(f"unix:{self.path}", reactor=self.reactor,
                    connect_timeout=None).addBoth(self._connected)
        return waiting

    def _connected(self, result: Any) -> None:
        waiting, self._waiting = self._waiting, []
        if isinstance(result, Failure):
            log.error("rpcd worker: cannot reach the process-shared services at {path}: {error}",
                      path=self.path, error=result.getErrorMessage())
            for d in waiting:
                d.errback(result)
            return
        self._client = result
        result.closed.addBoth(lambda _: self._lost(result))
        for d in waiting:
            d.callback(result)

    def _lost(self, client: Any) -> None:
        if self._client is client:
            self._client = None

    def call(self, method: str, value: Any) -> Deferred[Any]:
        """
        Call a method at the owner.

        @param method: C{Service.Method}.
        @param value: its argument value, as it came from the caller.
        @return: a Deferred firing with the result or failing with the
            owner's error; cancelling it cancels the call at the owner.
        """
        client = self._client
        if client is not None:
            # Connected (the common case): the client's own Deferred, with
            # nothing around it (a pending long-poll holds no more).
            return client.call(method, value)
        call: Deferred[Any] | None = None

        def cancel(_: Deferred[Any]) -> None:
            if call is not None:
                call.cancel()
        result: Deferred[Any] = Deferred(cancel)

        def send(client: Any) -> None:
            nonlocal call
            if result.called:
                return
            call = client.call(method, value)
            call.chainDeferred(result)

        def failed(failure: Failure) -> None:
            if not result.called:
                result.errback(failure)
        self.client().addCallbacks(send, failed)
        return result

    async def stream(self, method: str, value: Any) -> AsyncIterator[Any]:
        """
        Open a server stream at the owner and yield its messages.

        @param method: C{Service.Method}.
        @param value: its request.
        """
        client = await self.client()
        stream = client.stream(method, value)
        try:
            async for message in stream:
                yield message
        finally:
            stream.cancel()


def _identity(value: Any) -> Any:
    return value


def proxy_spec(spec: ServiceSpec, link: OwnerLink) -> ServiceSpec:
    """
    A spec with the same name and methods whose instance sends every call to
    the owner.  Arguments are not converted here (the owner does it, once)
    nor are results (the owner sent plain data).

    @param spec: the real service's spec.
    @param link: the connection to the owner.
    @return: the proxy's spec.
    """
    namespace: dict[str, Any] = {"__init__": lambda self, **options: None}
    methods: dict[str, MethodSpec] = {}
    for name, method in spec.methods.items():
        namespace[method.attribute] = _forwarder(f"{spec.name}.{name}", method, link)
        methods[name] = dataclasses.replace(
            method,
            params=tuple(dataclasses.replace(p, convert=_identity) for p in method.params),
            convert_result=_identity,
            convert_message_out=_identity if method.convert_message_out is not None else None)
    proxy = type(f"{spec.cls.__name__}Proxy", (), namespace)
    return dataclasses.replace(spec, cls=proxy, methods=methods)


def _forwarder(full_name: str, method: MethodSpec, link: OwnerLink) -> Callable[..., Any]:
    names = [p.name for p in method.params]
    context = method.context_param

    def value_of(args: tuple, kwargs: dict) -> Any:
        if context is not None:
            kwargs.pop(context, None)
        if len(names) == 1:
            return args[0] if args else kwargs[names[0]]
        if not names:
            return None
        values = dict(zip(names, args))
        values.update(kwargs)
        return values

    if method.kind is Kind.SERVER_STREAM:
        def forward_stream(self: object, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            return link.stream(full_name, value_of(args, kwargs))
        return forward_stream

    def forward(self: object, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return link.call(full_name, value_of(args, kwargs))
    return forward


def wrap_for_worker(link: OwnerLink) -> Callable[[list[tuple[ServiceSpec, ServiceConfig]]],
                                                 list[tuple[ServiceSpec, ServiceConfig]]]:
    """
    @param link: the worker's connection to the owner.
    @return: for L{rpcd.daemon.make_service}: the resolved services with the
        process-shared ones replaced by proxies.
    """
    def wrap(services: list[tuple[ServiceSpec, ServiceConfig]]) -> list[tuple[ServiceSpec, ServiceConfig]]:
        return [(proxy_spec(spec, link), entry) if is_process_shared(spec, entry) else (spec, entry)
                for spec, entry in services]
    return wrap


def owner_server(shared: list[tuple[ServiceSpec, ServiceConfig]], config: Any, reactor: Any) -> Any:
    """
    The owner's server: the process-shared services, built once, with room
    for every call the workers send on their few connections.

    @param shared: from L{split_shared}.
    @param config: the daemon's config.
    @param reactor: the reactor.
    @return: an L{rpcd.server.RPCServer}.
    @raise ConfigError: a constructor rejected its options.
    """
    from rpcd.daemon import build_registry
    from rpcd.server import RPCServer
    # The workers' connections carry every caller's calls, and the peers are
    # the supervisor's own children (it sees them die): no per-connection
    # call cap, no idle or message timeout, no keepalive, no input budget
    # (meant for untrusted peers, they would cut a busy worker off with all
    # its callers' calls); access is checked in the workers.
    limits = dataclasses.replace(config.limits, max_calls_per_connection=OWNER_MAX_CALLS,
                                 idle_timeout=0.0, message_timeout=0.0, keepalive_interval=0.0,
                                 input_budget_bytes=0, max_connection_age=0.0)
    open_entries = [(spec, dataclasses.replace(entry, require_login=False, require_identity=()))
                    for spec, entry in shared]
    return RPCServer(build_registry(open_entries), reactor, limits, None)


__all__ = ["OwnerLink", "is_process_shared", "owner_server", "process_shared", "proxy_spec",
           "split_shared", "wrap_for_worker"]
