"""
Tests for L{rpcd.interceptors}: the chain on the server (through the
dispatcher and in-memory connections) and on the client.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from rpcd.config import ConfigError, parse
from rpcd.context import CallContext, current_deadline, remaining
from rpcd.dispatch import Dispatcher
from rpcd.errors import (
    Code,
    DeadlineExceeded,
    PermissionDenied,
    ResourceExhausted,
    RPCError,
    Unimplemented,
)
from rpcd.interceptors import ClientCall, ServerCall, load, load_all
from rpcd.interfaces import IClientInterceptor, IServerInterceptor
from rpcd.service import ServiceRegistry, exposed
from rpcd.session import Session
from rpcd.testing import MemoryConnection


class Svc:
    def __init__(self) -> None:
        self.pending: list[Deferred[int]] = []
        self.remaining: list[float | None] = []

    @exposed
    def Double(self, n: int) -> int:
        self.remaining.append(remaining())
        return n * 2

    @exposed
    def Meta(self, n: int, ctx: CallContext) -> str:
        return str(ctx.metadata.get("added"))

    @exposed
    def Wait(self, n: int) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        self.pending.append(d)
        return d

    @exposed
    def Boom(self, n: int) -> int:
        raise ZeroDivisionError("nope")

    @exposed
    async def Count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    @exposed
    async def Sum(self, numbers: AsyncIterator[int]) -> int:
        total = 0
        async for n in numbers:
            total += n
        return total


@implementer(IServerInterceptor, IClientInterceptor)
class Recorder:
    """Records what it sees; optionally refuses or adds metadata."""

    def __init__(self, name: str, log: list[Any], refuse: RPCError | None = None,
                 add: dict[str, Any] | None = None) -> None:
        self.name = name
        self.log = log
        self.refuse = refuse
        self.add = add or {}
        self.calls: list[Any] = []

    def intercept(self, call: Any, proceed: Callable[[Any], Deferred[Any]]) -> Deferred[Any]:
        self.calls.append(call)
        self.log.append(f"{self.name} in")
        if self.refuse is not None:
            raise self.refuse
        call.metadata.update(self.add)

        def out(result: Any) -> Any:
            self.log.append(f"{self.name} out {result!r}")
            return result
        return proceed(call).addBoth(out)


class AsyncRecorder:
    """An async def interceptor that records codes and durations."""

    def __init__(self) -> None:
        self.codes: list[str] = []
        self.durations: list[float] = []

    async def intercept(self, call: Any, proceed: Callable[[Any], Deferred[Any]]) -> Any:
        try:
            result = await proceed(call)
        except RPCError as e:
            self.codes.append(e.code.name)
            self.durations.append(call.elapsed())
            raise
        self.codes.append("OK")
        self.durations.append(call.elapsed())
        return result


class ServerChainTests(SynchronousTestCase):
    """The server's chain, through the dispatcher."""

    def make(self, *interceptors: Any) -> Dispatcher:
        self.clock = Clock()
        self.svc = Svc()
        registry = ServiceRegistry(interceptors=interceptors)
        registry.add(self.svc, name="S")
        self.session = Session(registry, "127.0.0.1:5000", "127.0.0.1", protocol="native")
        return Dispatcher(self.session, self.clock)

    def test_interfaces(self) -> None:
        """A recorder provides both interfaces."""
        verifyObject(IServerInterceptor, Recorder("a", []))
        verifyObject(IClientInterceptor, Recorder("a", []))

    def test_order(self) -> None:
        """The first interceptor is outermost: in first, out last; a plain result stays plain."""
        log: list[str] = []
        d = self.make(Recorder("a", log), Recorder("b", log))
        self.assertEqual(d.call("S.Double", 4), 8)
        self.assertEqual(log, ["a in", "b in", "b out 8", "a out 8"])
        self.assertEqual(d.simple_calls, {})

    def test_call_fields(self) -> None:
        """The call shows method, kind, protocol, peer, session, metadata and deadline."""
        r = Recorder("a", [])
        d = self.make(r)
        d.call("S.Wait", 1, "k", timeout=5.0, metadata={"m": 1})
        call = r.calls[0]
        self.assertIsInstance(call, ServerCall)
        self.assertEqual((call.method, call.kind, call.protocol, call.peer, call.peer_host,
                          call.metadata, call.deadline, call.user, call.known),
                         ("S.Wait", "unary", "native", "127.0.0.1:5000", "127.0.0.1",
                          {"m": 1}, 5.0, None, True))
        self.assertIs(call.session, self.session)

    def test_refusal(self) -> None:
        """An interceptor raising an RPCError refuses the call with its code; the handler never runs."""
        log: list[str] = []
        d = self.make(Recorder("a", log), Recorder("b", log, refuse=PermissionDenied("no")))
        e = self.assertRaises(PermissionDenied, d.call, "S.Double", 1)
        self.assertEqual(e.code, Code.PERMISSION_DENIED)
        self.assertEqual(self.svc.remaining, [])
        self.assertEqual(log[-1][:5], "a out")

    def test_metadata_added(self) -> None:
        """Metadata an interceptor adds reaches the handler's context."""
        d = self.make(Recorder("a", [], add={"added": "yes"}))
        self.assertEqual(d.call("S.Meta", 1), "yes")

    def test_errors_observed(self) -> None:
        """Interceptors see handler errors as RPCErrors with codes, and the duration."""
        rec = AsyncRecorder()
        d = self.make(rec)
        with capturedLogs():
            self.assertRaises(RPCError, d.call, "S.Boom", 1)
        self.flushLoggedErrors(ZeroDivisionError)
        self.assertRaises(Unimplemented, d.call, "S.Nope", 1)
        waiting = d.call("S.Wait", 1, "k", timeout=2.0)
        self.clock.advance(2.0)
        self.failureResultOf(waiting, DeadlineExceeded)
        self.assertEqual(rec.codes, ["UNKNOWN", "UNIMPLEMENTED", "DEADLINE_EXCEEDED"])
        self.assertEqual(rec.durations[-1], 2.0)

    def test_async_result(self) -> None:
        """A handler's Deferred result passes through an async interceptor once it fires."""
        rec = AsyncRecorder()
        d = self.make(rec)
        result = d.call("S.Wait", 1, "k")
        self.assertNoResult(result)
        self.clock.advance(3)
        self.svc.pending[0].callback(7)
        self.assertEqual(self.successResultOf(result), 7)
        self.assertEqual((rec.codes, rec.durations), (["OK"], [3.0]))

    def test_cancel_reaches_handler(self) -> None:
        """Cancelling a call by its key cancels the handler and the chain sees CANCELLED."""
        rec = AsyncRecorder()
        d = self.make(rec)
        result = d.call("S.Wait", 1, "k")
        self.assertTrue(d.cancel("k"))
        self.failureResultOf(result, RPCError)
        self.assertEqual(rec.codes, ["CANCELLED"])

    def test_unexpected_interceptor_error(self) -> None:
        """An interceptor's own non-RPC exception reaches the caller as an RPCError and is logged."""
        class Broken:
            def intercept(self, call: Any, proceed: Any) -> Any:
                raise KeyError("x")
        d = self.make(Broken())
        with capturedLogs():
            e = self.assertRaises(RPCError, d.call, "S.Double", 1)
        self.assertIn("KeyError", e.message)
        self.flushLoggedErrors(KeyError)

    def test_deadline_contextvar(self) -> None:
        """A handler called with a timeout sees the remaining deadline; without, none."""
        d = self.make(Recorder("a", []))
        d.call("S.Double", 1, timeout=4.0)
        d.call("S.Double", 1)
        self.assertEqual(self.svc.remaining, [4.0, None])
        self.assertIsNone(current_deadline.get())

    def test_deadline_contextvar_without_interceptors(self) -> None:
        """The deadline also reaches handlers on the hot path (no interceptors)."""
        d = self.make()
        d.call("S.Double", 1)
        d.call("S.Double", 1, timeout=3.0)
        d.call("S.Double", 1)
        self.assertEqual(self.svc.remaining, [None, 3.0, None])
        self.assertIn("S.Double", d.simple_calls)


class StreamChainTests(SynchronousTestCase):
    """Streams through the server's and the client's chain, in memory."""

    def connect(self, server: list[Any], client: list[Any] = []) -> MemoryConnection:
        registry = ServiceRegistry(interceptors=server)
        registry.add(Svc(), name="S")
        conn = MemoryConnection(registry)
        conn.client.interceptors = tuple(client)
        return conn

    def test_server_stream_wrapped(self) -> None:
        """A sent filter on the server changes each message out; the chain sees the stream's kind."""
        kinds: list[str] = []

        class Times10:
            def intercept(self, call: Any, proceed: Any) -> Any:
                kinds.append(call.kind)
                call.wrap_messages(sent=lambda m: m * 10)
                return proceed(call)
        conn = self.connect([Times10()])
        stream = conn.client.stream("S.Count", 3)

        async def collect() -> list[int]:
            return [m async for m in stream]
        d = Deferred.fromCoroutine(collect())
        conn.flush()
        self.assertEqual(self.successResultOf(d), [0, 10, 20])
        self.assertEqual(kinds, ["server_stream"])

    def test_client_stream_wrapped_both_sides(self) -> None:
        """A received filter on the server and a sent filter on the client both apply, and both chains see the end."""
        server = AsyncRecorder()
        client = AsyncRecorder()

        class Plus1:
            def intercept(self, call: Any, proceed: Any) -> Any:
                call.wrap_messages(received=lambda m: m + 1)
                return proceed(call)

        class Times2:
            def intercept(self, call: Any, proceed: Any) -> Any:
                call.wrap_messages(sent=lambda m: m * 2)
                return proceed(call)
        conn = self.connect([server, Plus1()], [client, Times2()])
        stream = conn.client.stream("S.Sum")

        async def send() -> Any:
            for n in (1, 2, 3):
                await stream.send(n)
            stream.close_send()
            return await stream.result()
        d = Deferred.fromCoroutine(send())
        conn.flush()
        # (2 + 1) + (4 + 1) + (6 + 1)
        self.assertEqual(self.successResultOf(d), 15)
        self.assertEqual((server.codes, client.codes), (["OK"], ["OK"]))

    def test_stream_refused(self) -> None:
        """A server interceptor refusing a stream ends it with its code."""
        conn = self.connect([Recorder("a", [], refuse=ResourceExhausted("slow down"))])
        stream = conn.client.stream("S.Count", 3)
        d = stream.result()
        conn.flush()
        self.assertEqual(self.failureResultOf(d, RPCError).value.code, Code.RESOURCE_EXHAUSTED)

    def test_client_refuses_stream(self) -> None:
        """A client interceptor refusing a stream raises its error from stream()."""
        conn = self.connect([], [Recorder("a", [], refuse=PermissionDenied("not you"))])
        self.assertRaises(PermissionDenied, conn.client.stream, "S.Count", 3)


class ClientChainTests(SynchronousTestCase):
    """The client's chain on unary calls."""

    def test_client_order_metadata_and_fields(self) -> None:
        """Client interceptors run in order, add metadata the server sees, and see the call's fields."""
        log: list[str] = []
        registry = ServiceRegistry()
        registry.add(Svc(), name="S")
        conn = MemoryConnection(registry)
        a, b = Recorder("a", log), Recorder("b", log, add={"added": "client"})
        conn.client.interceptors = (a, b)
        conn.client.codec = "native"
        d = conn.client.call("S.Meta", 1, timeout=9)
        conn.flush()
        self.assertEqual(self.successResultOf(d), "client")
        self.assertEqual(log, ["a in", "b in", "b out 'client'", "a out 'client'"])
        call = a.calls[0]
        self.assertIsInstance(call, ClientCall)
        self.assertEqual((call.method, call.kind, call.timeout, call.side),
                         ("S.Meta", "unary", 9, "client"))

    def test_client_refusal(self) -> None:
        """A client interceptor refusing a call fails it without sending anything."""
        conn = MemoryConnection([Svc])
        conn.client.interceptors = (Recorder("a", [], refuse=PermissionDenied("no")),)
        d = conn.client.call("Svc.Double", 1)
        self.failureResultOf(d, PermissionDenied)
        self.assertEqual(conn.server.registry.call_counts, {})

    def test_client_deadline_shrinks(self) -> None:
        """A call made while a handler's deadline runs gets at most what is left of it."""
        clock = Clock()
        seen: list[float | None] = []

        class Spy:
            def intercept(self, call: Any, proceed: Any) -> Any:
                seen.append(call.timeout)
                raise PermissionDenied("stop here")
        conn = MemoryConnection([Svc], clock=clock)
        conn.client.interceptors = (Spy(),)
        token = current_deadline.set((clock.seconds() + 2.0, clock))
        try:
            conn.client.call("Svc.Double", 1, timeout=10).addErrback(lambda f: None)
            conn.client.call("Svc.Double", 1, timeout=1).addErrback(lambda f: None)
            conn.client.call("Svc.Double", 1).addErrback(lambda f: None)
        finally:
            current_deadline.reset(token)
        self.assertEqual(seen, [2.0, 1, 2.0])


class LoadTests(SynchronousTestCase):
    """Interceptors from config."""

    def test_module_factory_with_options(self) -> None:
        """A module:factory entry is called with its options (and the clock when it takes one)."""
        clock = Clock()
        made = load("tests.test_interceptors:make_tagger", {"tag": "t1"}, clock)
        self.assertEqual((made.tag, made.clock), ("t1", clock))

    def test_unknown_builtin(self) -> None:
        """An unknown built-in's name is refused, naming the built-ins."""
        e = self.assertRaises(ValueError, load, "nosuch")
        self.assertIn("access_log", str(e))

    def test_bad_options(self) -> None:
        """Options the factory rejects give an error naming the entry."""
        config = parse('[[interceptors]]\nuse = "tests.test_interceptors:make_tagger"\n'
                       'options = { colour = 1 }\n', "x.toml")
        e = self.assertRaises(ValueError, load_all, config.interceptors)
        self.assertIn("interceptors[0]", str(e))

    def test_config_errors_name_key(self) -> None:
        """Bad [[interceptors]] entries are refused naming the key."""
        for text, key in [('interceptors = 1', "interceptors"),
                          ('[[interceptors]]\noptions = {}', "interceptors[0].use"),
                          ('[[interceptors]]\nuse = "a b"', "interceptors[0].use"),
                          ('[[interceptors]]\nuse = "x"\noptions = 3', "interceptors[0].options"),
                          ('[[interceptors]]\nuse = "x"\nfoo = 3', "interceptors[0]")]:
            e = self.assertRaises(ConfigError, parse, text, "x.toml")
            self.assertIn(key, str(e))

    def test_config_parsed(self) -> None:
        """Entries keep their order and options."""
        config = parse('[[interceptors]]\nuse = "access_log"\noptions = { slow_ms = 5 }\n'
                       '[[interceptors]]\nuse = "m:f"\n', "x.toml")
        self.assertEqual([(i.use, dict(i.options)) for i in config.interceptors],
                         [("access_log", {"slow_ms": 5}), ("m:f", {})])


class Tagger:
    def __init__(self, tag: str, clock: Any) -> None:
        self.tag = tag
        self.clock = clock

    def intercept(self, call: Any, proceed: Any) -> Any:
        return proceed(call)


def make_tagger(tag: str = "", clock: Any = None) -> Tagger:
    """A factory for L{LoadTests}."""
    return Tagger(tag, clock)
