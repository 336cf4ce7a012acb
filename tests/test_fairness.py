"""
Tests for per-turn fairness (L{rpcd.server.fairness}) without sockets: the
scheduler on a L{Clock} with a timer the test moves, and the wire protocols
behind the sniffer queueing a connection that asks to start calls after the
turn's slice, keeping its bytes unparsed, then answering every call in
order.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from rpcd.server.fairness import FAIR_CHUNK, NEW_MAX_SLICES, NEW_MIN_SLICES, TurnScheduler, Waiter
from rpcd.server import Limits, RPCServer, SniffingProtocol
from rpcd.core.service import ServiceRegistry, exposed
from rpcd.wire.frames import PREFACE, RESULT, FrameReader, encode_frame
from rpcd.wire.gobrpc import GobClientCodec


class _Timer:
    """A timer the test (or a service) moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Work:
    """A service whose calls take as long as the test says, logging who ran."""

    def __init__(self, timer: _Timer) -> None:
        self.timer = timer
        self.log: list[str] = []

    @exposed
    def Heavy(self, who: str) -> str:
        """Take 20 ms of the fake timer."""
        self.timer.now += 0.02
        self.log.append(who)
        return who

    @exposed
    def Light(self, who: str) -> str:
        """Take no time."""
        self.log.append(who)
        return who


def _setup(slice_seconds: float = 0.01) -> tuple[RPCServer, _Work, Clock]:
    clock = Clock()
    timer = _Timer()
    registry = ServiceRegistry()
    work = _Work(timer)
    registry.add(work, name="Work")
    server = RPCServer(registry, clock, Limits(idle_timeout=0, handshake_timeout=0,
                                                keepalive_interval=0))
    server.turns = TurnScheduler(clock, slice_seconds, timer)
    return server, work, clock


def _connect(server: RPCServer, port: int) -> tuple[SniffingProtocol, StringTransport]:
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", port))
    protocol = server.factory().buildProtocol(IPv4Address("TCP", "10.0.0.1", port))
    protocol.makeConnection(transport)
    return protocol, transport


def _calls(method: str, who: str, ids: range) -> bytes:
    return b"".join(encode_frame([0, i, f"Work.{method}", who]) for i in ids)


def _results(data: bytes) -> list[Any]:
    frames, error = FrameReader(1 << 30).split(data[len(PREFACE):])
    assert error is None
    return [f[1] for f in frames if f[0] == RESULT]


def _iteration(clock: Clock) -> None:
    """
    Run the calls due now, as one reactor iteration does: a C{callLater(0)}
    made by them waits for the next (C{Clock.advance} would run it too).
    """
    due = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
    for call in due:
        if call.active():
            clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


class _Participant:
    def __init__(self, name: str, log: list[str], timer: _Timer, cost: float = 0.0,
                 backlog: int = FAIR_CHUNK) -> None:
        self.finish = 0.0
        self.last_cost: float | None = None
        self.in_queue = False
        self.backlog = backlog  # a whole slice predicted for a first turn unless the test says
        self.name = name
        self.log = log
        self.timer = timer
        self.cost = cost

    def turn_granted(self) -> None:
        self.log.append(self.name)
        self.timer.now += self.cost


class SchedulerTests(SynchronousTestCase):
    """The turn scheduler queues work asked for after the slice and grants it in later iterations."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.timer = _Timer()
        self.turns = TurnScheduler(self.clock, 0.01, self.timer)
        self.log: list[str] = []

    def participant(self, name: str, cost: float = 0.0, backlog: int = FAIR_CHUNK) -> _Participant:
        return _Participant(name, self.log, self.timer, cost, backlog)

    def test_no_timer_while_unloaded(self) -> None:
        """Work that stays within the slice sets no timer: an unloaded daemon's reads cost no reactor call."""
        a = self.participant("a")
        for _ in range(5):
            self.assertTrue(self.turns.may_run(a))
            self.timer.now += 0.001
            self.turns.done(a)
            self.timer.now += 1  # the reactor waits for the next read
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_within_slice_runs(self) -> None:
        """Every connection that asks within the turn's slice may run at once."""
        a, b = self.participant("a"), self.participant("b")
        self.assertTrue(self.turns.may_run(a))
        self.timer.now += 0.005
        self.turns.done(a)
        self.assertTrue(self.turns.may_run(b))
        self.assertEqual(self.turns.waiting(), 0)

    def test_after_slice_queued_then_granted(self) -> None:
        """A connection asking after the slice is queued, and granted its turn in the next iteration."""
        a, b = self.participant("a"), self.participant("b")
        self.assertTrue(self.turns.may_run(a))
        self.timer.now += 0.02
        self.turns.done(a)
        self.assertFalse(self.turns.may_run(b))
        self.assertTrue(b.in_queue)
        self.assertEqual(self.log, [])
        _iteration(self.clock)
        self.assertEqual(self.log, ["b"])
        self.assertFalse(b.in_queue)
        self.assertEqual((self.turns.deferrals, self.turns.turns), (1, 1))

    def test_one_heavy_turn_per_iteration(self) -> None:
        """A granted turn that uses the whole slice ends the iteration's grants; the rest wait for the next."""
        opener = self.participant("opener")
        self.turns.may_run(opener)
        self.timer.now += 0.02
        self.turns.done(opener)
        heavy = [self.participant(f"h{i}", cost=0.02) for i in range(3)]
        for h in heavy:
            self.assertFalse(self.turns.may_run(h))
        _iteration(self.clock)
        self.assertEqual(self.log, ["h0"])
        _iteration(self.clock)
        self.assertEqual(self.log, ["h0", "h1"])
        _iteration(self.clock)
        self.assertEqual(self.log, ["h0", "h1", "h2"])
        _iteration(self.clock)  # the last pending turn finds nobody waiting
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cheap_goes_first(self) -> None:
        """A queued connection whose last work was cheap is granted before fresh and heavy ones queued earlier."""
        probe = self.participant("probe")
        self.assertTrue(self.turns.may_run(probe))
        self.turns.done(probe)  # cost 0: last_cost 0
        _iteration(self.clock)
        heavy = self.participant("heavy", cost=0.02)
        self.assertTrue(self.turns.may_run(heavy))
        self.timer.now += 0.03
        self.turns.done(heavy)
        fresh = [self.participant(f"fresh{i}", cost=0.02) for i in range(3)]
        for p in [heavy, *fresh, probe]:
            self.assertFalse(self.turns.may_run(p))
        _iteration(self.clock)
        self.assertEqual(self.log[0], "probe")
        for _ in range(5):
            _iteration(self.clock)
        self.assertEqual(sorted(self.log), sorted(["probe", "heavy", "fresh0", "fresh1", "fresh2"]))
        self.assertEqual(self.log[-1], "heavy")

    def test_first_turn_predicted_by_backlog(self) -> None:
        """A connection never charged with one small request waiting is granted before never-charged ones with a pipeline waiting that asked earlier."""
        opener = self.participant("opener")
        self.turns.may_run(opener)
        self.timer.now += 0.02
        self.turns.done(opener)
        flood = [self.participant(f"flood{i}", cost=0.02, backlog=65536) for i in range(5)]
        for p in flood:
            self.assertFalse(self.turns.may_run(p))
        probe = self.participant("probe", backlog=40)
        self.assertFalse(self.turns.may_run(probe))
        _iteration(self.clock)
        self.assertEqual(self.log, ["probe", "flood0"])

    def test_predict_first_bounds(self) -> None:
        """A first turn is predicted at a slice per FAIR_CHUNK bytes waiting, from NEW_MIN_SLICES to NEW_MAX_SLICES slices."""
        predict = self.turns.predict_first
        self.assertEqual([predict(0), predict(FAIR_CHUNK), predict(2 * FAIR_CHUNK), predict(1 << 30)],
                         [0.01 * NEW_MIN_SLICES, 0.01, 0.02, 0.01 * NEW_MAX_SLICES])

    def test_tiny_slice_still_grants(self) -> None:
        """A slice shorter than the timer's step still grants one queued connection per iteration (no livelock)."""
        class Ticking(_Timer):
            def __call__(self) -> float:
                self.now += 0.001
                return self.now
        turns = TurnScheduler(self.clock, 0.0001, Ticking())
        a, b, c = self.participant("a"), self.participant("b"), self.participant("c")
        turns.may_run(a)
        turns.done(a)
        self.assertEqual([turns.may_run(b), turns.may_run(c)], [False, False])
        _iteration(self.clock)
        self.assertEqual(self.log, ["b"])
        _iteration(self.clock)
        self.assertEqual(self.log, ["b", "c"])

    def test_zero_slice_never_queues(self) -> None:
        """With a slice of 0 nothing is ever queued and no timer is set."""
        turns = TurnScheduler(self.clock, 0, self.timer)
        a = self.participant("a")
        for _ in range(3):
            self.timer.now += 1
            self.assertTrue(turns.may_run(a))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop(self) -> None:
        """Stopping forgets the queued connections and the pending turn."""
        a, b = self.participant("a"), self.participant("b")
        self.turns.may_run(a)
        self.timer.now += 0.02
        self.turns.done(a)
        self.assertFalse(self.turns.may_run(b))
        self.turns.stop()
        self.assertEqual((self.turns.waiting(), self.clock.getDelayedCalls()), (0, []))
        self.assertFalse(b.in_queue)

    def test_waiter_forgotten(self) -> None:
        """A waiter whose connection is gone does nothing when its turn comes."""
        called: list[int] = []
        waiter = Waiter(lambda: called.append(1))
        waiter.turn_granted()
        waiter.forget()
        waiter.turn_granted()
        self.assertEqual(called, [1])


class NativeTurnTests(SynchronousTestCase):
    """Native connections behind the sniffer take turns: a read after the slice waits, unparsed, and nothing is lost or reordered."""

    def setUp(self) -> None:
        self.server, self.work, self.clock = _setup()

    def test_second_read_waits_its_turn(self) -> None:
        """A read arriving after another connection used up the slice is not started, its reading is paused, and it is answered in the next iteration."""
        heavy, heavy_t = _connect(self.server, 1)
        other, other_t = _connect(self.server, 2)
        heavy.dataReceived(PREFACE + _calls("Heavy", "h", range(1, 4)))
        other.dataReceived(PREFACE + _calls("Light", "o", range(1, 3)))
        self.assertEqual(self.work.log, ["h", "h", "h"])
        self.assertEqual(other_t.producerState, "paused")
        self.assertEqual(_results(other_t.value()), [])
        _iteration(self.clock)
        self.assertEqual(self.work.log, ["h", "h", "h", "o", "o"])
        self.assertEqual(_results(other_t.value()), [1, 2])
        self.assertEqual(other_t.producerState, "producing")

    def test_reads_while_waiting_kept_in_order(self) -> None:
        """Reads that arrive while a connection waits are kept and answered after it, in order."""
        heavy, _ = _connect(self.server, 1)
        other, other_t = _connect(self.server, 2)
        heavy.dataReceived(PREFACE + _calls("Heavy", "h", range(1, 2)))
        other.dataReceived(PREFACE + _calls("Light", "o", range(1, 3)))
        other.dataReceived(_calls("Light", "o", range(3, 6)))
        _iteration(self.clock)
        self.assertEqual(_results(other_t.value()), [1, 2, 3, 4, 5])

    def test_probe_before_fresh_heavy(self) -> None:
        """A light connection that asks after fresh heavy ones is granted its turn first."""
        probe, probe_t = _connect(self.server, 1)
        probe.dataReceived(PREFACE + _calls("Light", "p", range(1, 2)))
        _iteration(self.clock)
        opener, _ = _connect(self.server, 2)
        opener.dataReceived(PREFACE + _calls("Heavy", "x", range(1, 2)))
        heavies = [_connect(self.server, 10 + i) for i in range(3)]
        for protocol, _ in heavies:
            protocol.dataReceived(PREFACE + _calls("Heavy", "h", range(1, 2)))
        probe.dataReceived(_calls("Light", "p", range(2, 3)))
        self.assertEqual(self.work.log, ["p", "x"])
        _iteration(self.clock)
        self.assertEqual(self.work.log, ["p", "x", "p", "h"])
        self.assertEqual(_results(probe_t.value()), [1, 2])
        for _ in range(3):
            _iteration(self.clock)
        self.assertEqual(self.work.log, ["p", "x", "p", "h", "h", "h"])
        for _, transport in heavies:
            self.assertEqual(_results(transport.value()), [1])

    def test_large_read_fed_in_chunks(self) -> None:
        """While others wait, a large read is parsed a chunk at a time, one chunk a turn, every call answered in order."""
        opener, _ = _connect(self.server, 1)
        opener.dataReceived(PREFACE + _calls("Heavy", "x", range(1, 2)))
        waiting, _ = _connect(self.server, 2)
        waiting.dataReceived(PREFACE + _calls("Heavy", "w", range(1, 2)))
        _iteration(self.clock)  # the waiting one's turn uses the slice: the next turn is open
        big, big_t = _connect(self.server, 3)
        waiting.dataReceived(_calls("Heavy", "w", range(2, 3)))  # queued again
        data = PREFACE + _calls("Heavy", "b", range(1, 1001))
        self.assertGreater(len(data), 3 * FAIR_CHUNK)
        big.dataReceived(data)
        next_call = 3
        for _ in range(1000):
            if not self.clock.getDelayedCalls():
                break
            if not waiting.throttle.in_queue and next_call < 10:
                # Someone else keeps waiting while the big read's first pieces are parsed.
                waiting.dataReceived(_calls("Heavy", "w", range(next_call, next_call + 1)))
                next_call += 1
            _iteration(self.clock)
        self.assertEqual(_results(big_t.value()), list(range(1, 1001)))
        self.assertGreater(self.server.turns.turns, 3)
        # The others' calls ran between the big read's pieces, not after them.
        last_b = len(self.work.log) - 1 - self.work.log[::-1].index("b")
        self.assertIn("w", self.work.log[self.work.log.index("b"):last_b])

    def test_half_close_while_waiting(self) -> None:
        """A peer that shuts down its write side while its read waits for a turn is answered, then the connection closes."""
        heavy, _ = _connect(self.server, 1)
        other, other_t = _connect(self.server, 2)
        heavy.dataReceived(PREFACE + _calls("Heavy", "h", range(1, 2)))
        other.dataReceived(PREFACE + _calls("Light", "o", range(1, 4)))
        other.readConnectionLost()
        self.assertFalse(other_t.disconnecting)
        _iteration(self.clock)
        self.assertEqual(_results(other_t.value()), [1, 2, 3])
        self.assertTrue(other_t.disconnecting)

    def test_lost_while_waiting(self) -> None:
        """A connection lost while it waits for its turn gets nothing run when the turn comes."""
        heavy, _ = _connect(self.server, 1)
        other, _ = _connect(self.server, 2)
        heavy.dataReceived(PREFACE + _calls("Heavy", "h", range(1, 2)))
        other.dataReceived(PREFACE + _calls("Light", "o", range(1, 3)))
        other.connectionLost(Exception("reset"))
        _iteration(self.clock)
        self.assertEqual(self.work.log, ["h"])

    def test_slice_zero(self) -> None:
        """With turn_slice 0 every read is served at once."""
        self.server.turns.slice_seconds = 0
        heavy, _ = _connect(self.server, 1)
        other, other_t = _connect(self.server, 2)
        heavy.dataReceived(PREFACE + _calls("Heavy", "h", range(1, 4)))
        other.dataReceived(PREFACE + _calls("Light", "o", range(1, 3)))
        self.assertEqual(_results(other_t.value()), [1, 2])


class GobTurnTests(SynchronousTestCase):
    """Gob connections take turns too."""

    def test_gob_waits_its_turn(self) -> None:
        """A gob read after the slice waits for the next iteration; then every call is answered, in order."""
        server, work, clock = _setup()
        heavy, _ = _connect(server, 1)
        heavy.dataReceived(PREFACE + _calls("Heavy", "h", range(1, 3)))
        gob, gob_t = _connect(server, 2)
        codec = GobClientCodec()
        gob.dataReceived(b"".join(codec.encode_request(i, "Work.Light", "g", reply_type=str)
                                  for i in range(1, 5)))
        self.assertEqual(work.log, ["h", "h"])
        _iteration(clock)
        self.assertEqual([seq for seq, _, _, _ in codec.feed(gob_t.value())], [1, 2, 3, 4])


class HTTPTurnTests(SynchronousTestCase):
    """Pipelined HTTP requests take turns too."""

    def test_http_waits_its_turn(self) -> None:
        """Pipelined HTTP requests after the slice wait for the next iteration, then are all answered in order."""
        server, work, clock = _setup()
        heavy, _ = _connect(server, 1)
        heavy.dataReceived(PREFACE + _calls("Heavy", "h", range(1, 3)))
        http, http_t = _connect(server, 2)
        body = b'{"jsonrpc": "2.0", "id": %d, "method": "Work.Light", "params": ["w"]}'
        requests = b"".join(
            b"POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body % i), body % i) for i in range(1, 4))
        http.dataReceived(requests)
        self.assertEqual(work.log, ["h", "h"])
        _iteration(clock)
        answers = http_t.value()
        self.assertEqual(answers.count(b"HTTP/1.1 200"), 3)
        self.assertLess(answers.index(b'"id": 1') if b'"id": 1' in answers else answers.index(b'"id":1'),
                        answers.index(b'"id": 3') if b'"id": 3' in answers else answers.index(b'"id":3'))
        self.assertEqual(work.log, ["h", "h", "w", "w", "w"])


def _http_requests(method: str, who: str, ids: range) -> bytes:
    """Pipelined JSON-RPC 2.0 POSTs, one per id."""
    out = []
    for i in ids:
        body = b'{"jsonrpc":"2.0","id":%d,"method":"Work.%s","params":["%s"]}' % (
            i, method.encode(), who.encode())
        out.append(b"POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return b"".join(out)


class HTTPFloodTurnTests(SynchronousTestCase):
    """New HTTP connections that pipeline heavy calls do a bounded piece a turn, and a probe on another connection goes ahead of them."""

    def setUp(self) -> None:
        self.server, self.work, self.clock = _setup()
        opener, _ = _connect(self.server, 1)
        opener.dataReceived(PREFACE + _calls("Heavy", "x", range(1, 2)))  # uses up the slice
        self.floods = [_connect(self.server, 10 + i) for i in range(10)]
        for protocol, _ in self.floods:
            protocol.dataReceived(_http_requests("Heavy", "h", range(1, 21)))

    def test_probe_before_flood(self) -> None:
        """A probe's call that comes after ten flooding connections is answered in the next iteration, before a round of theirs."""
        probe, probe_t = _connect(self.server, 2)
        probe.dataReceived(PREFACE + _calls("Light", "p", range(1, 2)))
        self.assertEqual(self.work.log, ["x"])
        _iteration(self.clock)
        self.assertEqual(_results(probe_t.value()), [1])
        self.assertLessEqual(self.work.log.count("h"), 1)

    def test_one_heavy_call_a_turn(self) -> None:
        """Each iteration runs one heavy call of the flood (the slice is shorter than one), and every flood connection is answered in order in the end."""
        ran = []
        for _ in range(400):
            if not self.clock.getDelayedCalls():
                break
            before = self.work.log.count("h")
            _iteration(self.clock)
            ran.append(self.work.log.count("h") - before)
        self.assertEqual((max(ran), sum(ran)), (1, 200))
        for _, transport in self.floods:
            answers = transport.value()
            self.assertEqual(answers.count(b"HTTP/1.1 200"), 20)
            self.assertEqual([int(i) for i in re.findall(rb'"id":(\d+)', answers)], list(range(1, 21)))
