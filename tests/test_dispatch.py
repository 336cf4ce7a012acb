"""
Tests for L{rpcd.dispatch}: results, deadlines, cancellation, the cap on
running handlers, and errors.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from rpcd.context import CallContext
from rpcd.dispatch import Args, Dispatcher, error_fields
from rpcd.errors import (
    Cancelled,
    Code,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    RPCError,
    Unimplemented,
)
from rpcd.service import ServiceRegistry, exposed
from rpcd.session import Session


class Slow:
    def __init__(self) -> None:
        self.pending: list[Deferred[int]] = []
        self.cancelled = 0
        self.seen: list[CallContext] = []

    @exposed
    def Wait(self, n: int) -> Deferred[int]:
        def cancel(d: Deferred[int]) -> None:
            self.cancelled += 1
        d: Deferred[int] = Deferred(cancel)
        self.pending.append(d)
        return d

    @exposed
    async def Async(self, n: int) -> int:
        return n + 1

    @exposed
    def Now(self, n: int) -> int:
        return n * 2

    @exposed
    def Ready(self, n: int) -> Deferred[int]:
        return succeed(n)

    @exposed
    def Boom(self, n: int) -> int:
        raise ZeroDivisionError("division by zero")

    @exposed
    def Missing(self, n: int) -> int:
        raise NotFound("no such thing")

    @exposed
    def Wrong(self, n: int) -> int:
        return "not an int"  # type: ignore[return-value]

    @exposed
    def Context(self, n: int, ctx: CallContext) -> float:
        self.seen.append(ctx)
        return ctx.time_remaining() or -1.0


class DispatcherTests(SynchronousTestCase):
    """One connection's calls."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.slow = Slow()
        registry = ServiceRegistry()
        registry.add(self.slow, name="S")
        self.session = Session(registry, "127.0.0.1:5000", "127.0.0.1")
        self.dispatcher = Dispatcher(self.session, self.clock, max_running=3)

    def test_plain_value_is_immediate(self) -> None:
        """A method returning a value is answered with the value, no Deferred."""
        self.assertEqual(self.dispatcher.call("S.Now", 21), 42)

    def test_deferred_and_coroutine(self) -> None:
        """Deferred and async results come back as Deferreds firing with the value."""
        self.assertEqual(self.successResultOf(self.dispatcher.call("S.Async", 1, "a")), 2)
        self.assertEqual(self.successResultOf(self.dispatcher.call("S.Ready", 5, "b")), 5)

    def test_unknown(self) -> None:
        """An unknown method fails at once with UNIMPLEMENTED."""
        e = self.assertRaises(Unimplemented, self.dispatcher.call, "S.Nope", 1)
        self.assertEqual(e.code, Code.UNIMPLEMENTED)

    def test_bad_argument(self) -> None:
        """An argument of the wrong type fails with INVALID_ARGUMENT naming it."""
        e = self.assertRaises(InvalidArgument, self.dispatcher.call, "S.Now", "x")
        self.assertEqual(e.message, "n: expected int, got str")

    def test_service_error_keeps_code(self) -> None:
        """An RPCError raised by a service reaches the caller unchanged."""
        e = self.assertRaises(NotFound, self.dispatcher.call, "S.Missing", 1)
        self.assertEqual(e.message, "no such thing")

    def test_unexpected_exception(self) -> None:
        """Any other exception becomes UNKNOWN with its type and message, and is logged."""
        with capturedLogs() as events:
            e = self.assertRaises(RPCError, self.dispatcher.call, "S.Boom", 1)
        self.assertEqual((e.code, e.message), (Code.UNKNOWN, "ZeroDivisionError: division by zero"))
        self.assertEqual([ev["log_level"] for ev in events], [LogLevel.critical])
        self.flushLoggedErrors(ZeroDivisionError)

    def test_bad_result(self) -> None:
        """A result that breaks the method's own hint is an error, not garbage on the wire."""
        with capturedLogs():
            e = self.assertRaises(InvalidArgument, self.dispatcher.call, "S.Wrong", 1)
        self.assertIn("S.Wrong returned a bad result: result: expected int, got str", e.message)

    def test_deadline_cancels_handler(self) -> None:
        """When the deadline passes the handler's Deferred is cancelled: DEADLINE_EXCEEDED."""
        d = self.dispatcher.call("S.Wait", 1, "k", timeout=2.0)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        f = self.failureResultOf(d, DeadlineExceeded)
        self.assertIn("deadline of 2 s", f.value.message)
        self.assertEqual(self.slow.cancelled, 1)
        self.assertEqual(self.dispatcher.running, {})

    def test_answer_before_deadline_stops_timer(self) -> None:
        """A call that finishes in time leaves no timer behind."""
        d = self.dispatcher.call("S.Wait", 1, "k", timeout=2.0)
        self.slow.pending[0].callback(7)
        self.assertEqual(self.successResultOf(d), 7)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        """Cancelling by key cancels the handler: CANCELLED."""
        d = self.dispatcher.call("S.Wait", 1, "k")
        self.assertTrue(self.dispatcher.cancel("k"))
        self.failureResultOf(d, Cancelled)
        self.assertFalse(self.dispatcher.cancel("k"))

    def test_running_cap(self) -> None:
        """More running handlers than the cap fail with RESOURCE_EXHAUSTED; finishing frees a slot."""
        for key in range(3):
            self.dispatcher.call("S.Wait", 1, key)
        e = self.assertRaises(ResourceExhausted, self.dispatcher.call, "S.Wait", 1, 99)
        self.assertIn("limit 3", e.message)
        self.slow.pending[0].callback(1)
        self.dispatcher.call("S.Wait", 1, 100)
        self.assertEqual(len(self.dispatcher.running), 3)

    def test_cancelled_handler_counts_until_it_ends(self) -> None:
        """A cancelled coroutine handler keeps its slot until it has really ended."""
        gate: Deferred[None] = Deferred()
        ended = []

        class Stubborn:
            @exposed
            async def Run(self, n: int) -> int:
                try:
                    await gate
                finally:
                    ended.append(n)
                return n

        registry = ServiceRegistry()
        registry.add(Stubborn)
        dispatcher = Dispatcher(Session(registry, "p", "h"), self.clock, max_running=1)
        d = dispatcher.call("Stubborn.Run", 1, "a")
        dispatcher.cancel("a")
        self.failureResultOf(d, Cancelled)
        self.assertEqual(ended, [1])
        self.assertEqual(dispatcher.running, {})

    def test_context(self) -> None:
        """A method asking for the context gets the session, peer and time left."""
        self.clock.advance(100)
        self.assertEqual(self.dispatcher.call("S.Context", 1, timeout=5.0, metadata={"k": "v"}), 5.0)
        ctx = self.slow.seen[0]
        self.assertEqual((ctx.peer, ctx.method, ctx.metadata), ("127.0.0.1:5000", "S.Context", {"k": "v"}))
        self.assertIs(ctx.session, self.session)

    def test_close_cancels_everything(self) -> None:
        """Closing the connection cancels every running handler and closes the session."""
        d1 = self.dispatcher.call("S.Wait", 1, 1)
        d2 = self.dispatcher.call("S.Wait", 1, 2)
        self.dispatcher.close()
        self.failureResultOf(d1, Cancelled)
        self.failureResultOf(d2, Cancelled)
        self.assertTrue(self.session.closed)

    def test_named_and_positional(self) -> None:
        """The argument conventions of JSON-RPC 2.0 reach the method."""
        self.assertEqual(self.dispatcher.call("S.Now", {"n": 4}, args=Args.NAMED), 8)
        self.assertEqual(self.dispatcher.call("S.Now", [5], args=Args.POSITIONAL), 10)

    def test_call_counts(self) -> None:
        """Calls are counted per method, for /debug/rpc."""
        self.dispatcher.call("S.Now", 1)
        self.dispatcher.call("S.Now", 2)
        self.assertEqual(self.session.registry.call_counts["S.Now"], 2)

    def test_error_fields(self) -> None:
        """Errors become (code, message, details) for the wire."""
        self.assertEqual(error_fields(NotFound("x", details={"a": 1})), (5, "x", {"a": 1}))
        self.assertEqual(error_fields(KeyError("k")), (2, "KeyError: 'k'", None))
