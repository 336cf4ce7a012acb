"""
Services and helpers shared by the JSON and HTTP wire tests.

C{Math} has the methods of the JSON-RPC 2.0 specification's examples
(section 7).  rpcd names every method C{Service.Method}, so the examples'
bare names become C{Math.subtract}, C{Math.sum}, C{Math.update},
C{Math.notify_hello}, C{Math.notify_sum} and C{Math.get_data}; the names the
examples use for methods that do not exist (C{foobar}, C{foo.get}) are kept.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from rpcd.examples.arith import Arith, Cal, ServiceA
from rpcd.server import Limits, RPCServer
from rpcd.service import ServiceRegistry, exposed


class Math:
    """The JSON-RPC 2.0 specification's example methods."""

    def __init__(self) -> None:
        self.notified: list[tuple[str, Any]] = []

    @exposed
    def subtract(self, minuend: int, subtrahend: int) -> int:
        """minuend - subtrahend."""
        return minuend - subtrahend

    @exposed
    def sum(self, a: int, b: int, c: int = 0) -> int:
        """a + b + c."""
        return a + b + c

    @exposed
    def update(self, a: int, b: int, c: int, d: int, e: int) -> None:
        """Record an update (a notification in the examples)."""
        self.notified.append(("update", [a, b, c, d, e]))

    @exposed
    def notify_hello(self, n: int) -> None:
        """Record a hello."""
        self.notified.append(("notify_hello", n))

    @exposed
    def notify_sum(self, a: int, b: int, c: int) -> None:
        """Record a sum."""
        self.notified.append(("notify_sum", a + b + c))

    @exposed
    def get_data(self) -> list:
        """The example's data."""
        return ["hello", 5]


class Odd:
    """Methods whose answers come later or are not plain JSON."""

    def __init__(self) -> None:
        self.waiting: dict[str, Deferred[Any]] = {}
        self.cancelled: list[str] = []

    @exposed
    def Later(self, name: str) -> Deferred[Any]:
        """Answer when the test fires C{waiting[name]}."""
        d: Deferred[Any] = Deferred(lambda d: self.cancelled.append(name))
        self.waiting[name] = d
        return d

    @exposed
    def Bytes(self) -> bytes:
        """Some bytes (base64 in JSON)."""
        return b"\x00\xffhi"

    @exposed
    def NaN(self) -> float:
        """A float JSON cannot carry."""
        return float("nan")

    @exposed
    def Nothing(self) -> None:
        """Return nothing."""

    @exposed
    def Doc(self, items: list[int]) -> int:
        """Count <items> & "things" for <script>alert(1)</script>."""
        return len(items)


def make_server(*, clock: Clock | None = None, limits: Limits = Limits()) -> tuple[RPCServer, Math, Odd]:
    """
    A server with the seed services, C{Math} and C{Odd}.

    @return: the server and the C{Math} and C{Odd} instances.
    """
    registry = ServiceRegistry()
    for cls in (Arith, Cal, ServiceA):
        registry.add(cls)
    math, odd = Math(), Odd()
    registry.add(math)
    registry.add(odd)
    return RPCServer(registry, clock or Clock(), limits), math, odd


class CountingTransport(StringTransport):
    """A StringTransport that counts its C{write} calls."""

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def connect_protocol(server: RPCServer, protocols: Any = None) -> tuple[Any, CountingTransport]:
    """
    A sniffing server protocol on a counting StringTransport, as a daemon
    builds it for an accepted connection.

    @param server: the server.
    @param protocols: the wire protocols served (all by default).
    @return: the protocol and its transport.
    """
    factory = server.factory() if protocols is None else server.factory(frozenset(protocols))
    protocol = factory.buildProtocol(None)
    transport = CountingTransport()
    protocol.makeConnection(transport)
    return protocol, transport
