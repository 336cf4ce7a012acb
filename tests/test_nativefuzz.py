"""
Hostile native frames for both sides of the native protocol, without
sockets: valid frames with fields replaced by random msgpack values, fields
dropped or added, frames truncated, reordered, random bytes, all split
anywhere.  Neither the server nor the client protocol may raise or log a
failure, and when the bad frames were call-level (the connection stays up),
a good call sent after them on the same connection is still answered.
"""

from __future__ import annotations

import copy
import struct
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rpcd.client import Client
from rpcd.examples.arith import Arith
from rpcd.server import Limits, RPCServer
from rpcd.service import ServiceRegistry
from rpcd.wire.frames import PREFACE, FrameReader
from rpcd.wire.native import NativeServerProtocol
from rpcd.wire.native_client import NativeClientProtocol
from tests.test_framefields import Slow
from tests.test_wirefuzz import chunks, mutated

FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

GOOD_ID = 123_456_789

# Frames a client sends; ids 7 (a client stream), 8 (a server stream) and 9
# (a running unary call) are open when the fuzzed frames arrive.
CLIENT_FRAMES: list[list[Any]] = [
    [0, 1, "Arith.Multiply", {"A": 2, "B": 3}],
    [0, 2, "Slow.Wait", 5, {"timeout": 1.5, "metadata": {"k": "v"}}],
    [0, 3, "Slow.Ticks", 2, {"stream": True, "window": 4}],
    [3, 9], [4, 7, 1], [5, 7], [6, 8, 1], [7, b"ping"], [8, b"pong"],
]
OPENING = [[0, 7, "Slow.Collect", None, {"stream": True}],
           [0, 8, "Slow.Ticks", 3, {"stream": True, "window": 2}],
           [0, 9, "Slow.Wait", 1]]

# Frames a server sends; calls 1 and 2 and stream 3 are pending.
SERVER_FRAMES: list[list[Any]] = [
    [1, 1, 5], [2, 2, 5, "not found", None], [2, 1, 3, "bad", {"field": "A"}],
    [4, 3, "message"], [6, 3, 1], [1, 3, None], [7, b"ping"], [8, b"x"],
]

# Values that trip type and range checks, then anything msgpack can carry.
NASTY = [None, True, False, -1, 0, 2 ** 63, 2 ** 64 - 1, -2 ** 63, 1.5, -0.001, float("nan"),
         float("inf"), 1e300, "", "x", b"x", [], [1], {}, {"a": 1}, {"timeout": -1}]
values = st.sampled_from(NASTY).map(copy.deepcopy) | st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 64 - 1) | st.floats()
    | st.text(max_size=12) | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["timeout", "metadata", "stream", "window", "x"]) | st.text(max_size=6),
        inner, max_size=4),
    max_leaves=8)
OPTION_KEYS = ["timeout", "metadata", "stream", "window"]


@st.composite
def mutated_body(draw: st.DrawFn, samples: list[list[Any]]) -> list[Any]:
    """A sample frame body with fields (or option values) replaced, dropped or added."""
    body = copy.deepcopy(draw(st.sampled_from(samples)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.integers(0, 4))
        maps = [field for field in body[1:] if type(field) is dict]
        if kind <= 1 and len(body) > 1:
            body[draw(st.integers(1, len(body) - 1))] = draw(values)
        elif kind == 2 and maps:
            target = draw(st.sampled_from(maps))
            target[draw(st.sampled_from(OPTION_KEYS + sorted(target)))] = draw(values)
        elif kind == 3:
            del body[draw(st.integers(1, len(body))):]
        elif draw(st.booleans()):
            body.append(draw(values))
        else:
            body[0] = draw(st.integers(-3, 12))
    return body


def encode(body: Any) -> bytes:
    data = msgpack.packb(body, use_bin_type=True)
    return struct.pack(">I", len(data)) + data


@st.composite
def field_mutations(draw: st.DrawFn, samples: list[list[Any]]) -> bytes:
    """Well-framed frames with bad fields, in any order."""
    return b"".join(encode(b) for b in draw(st.lists(mutated_body(samples), min_size=1, max_size=4)))


def byte_mutations(samples: list[list[Any]]) -> st.SearchStrategy[bytes]:
    """Frames in any order with bytes flipped, inserted or cut (the json fuzz's mutator)."""
    return mutated([encode(body) for body in samples])


def failures(events: list[dict[str, Any]]) -> list[str]:
    return [e["log_failure"].getTraceback() for e in events if "log_failure" in e]


class ServerFuzzTests(SynchronousTestCase):
    """Hostile frames at the server protocol."""

    def feed(self, data: bytes, cuts: list[int]) -> tuple[list[list[Any]], bool]:
        """
        Open calls and streams, feed the data split at the cuts, then a good
        call; return the frames written after the opening and whether the
        server is closing the connection.
        """
        clock = Clock()
        registry = ServiceRegistry()
        registry.add(Arith)
        registry.add(Slow(clock))
        protocol = NativeServerProtocol(RPCServer(registry, clock, Limits(max_frame_bytes=4096)))
        transport = StringTransport()
        with capturedLogs() as events:
            protocol.makeConnection(transport)
            protocol.dataReceived(PREFACE + b"".join(encode(b) for b in OPENING))
            clock.advance(0)
            transport.clear()
            for chunk in chunks(data, cuts):
                protocol.dataReceived(chunk)
            protocol.dataReceived(encode([0, GOOD_ID, "Arith.Multiply", {"A": 3, "B": 4}]))
            for _ in range(4):
                clock.advance(1)
            closing = transport.disconnecting
            output = transport.value()
            protocol.connectionLost(Failure(Exception("done")))
        self.assertEqual(failures(events), [])
        reader = FrameReader()
        written = list(reader.feed(output))
        self.assertEqual(reader.buffered(), 0)
        return written, closing

    @FUZZ
    @given(field_mutations(CLIENT_FRAMES + OPENING), st.lists(st.integers(0, 10_000), max_size=4))
    def test_bad_fields(self, data: bytes, cuts: list[int]) -> None:
        """Bad fields end in answers or a GOAWAY; with no GOAWAY the good call is answered."""
        written, closing = self.feed(data, cuts)
        goaways = [f for f in written if f[0] == 9]
        if goaways:
            [goaway] = goaways
            self.assertEqual(written[-1], goaway)
            self.assertIsInstance(goaway[3], str)
            self.assertTrue(closing)
        elif not closing:
            self.assertIn(GOOD_ID, [f[1] for f in written if f[0] in (1, 2)])

    @FUZZ
    @given(byte_mutations(CLIENT_FRAMES + OPENING) | st.binary(max_size=200),
           st.lists(st.integers(0, 10_000), max_size=6))
    def test_bad_bytes(self, data: bytes, cuts: list[int]) -> None:
        """Broken bytes end in well-formed replies and at most one GOAWAY, last."""
        written, _ = self.feed(data, cuts)
        goaways = [f for f in written if f[0] == 9]
        self.assertLessEqual(len(goaways), 1)
        if goaways:
            self.assertEqual(written[-1], goaways[0])


class ClientFuzzTests(SynchronousTestCase):
    """Hostile frames at the client protocol, as a malicious server would send."""

    def feed(self, data: bytes, cuts: list[int]) -> None:
        clock = Clock()
        channel = NativeClientProtocol(clock, max_frame=4096)
        transport = StringTransport()
        client = Client(channel)
        outcomes: list[Any] = []

        def keep(d: Deferred[Any]) -> Deferred[Any]:
            return d.addBoth(outcomes.append)
        with capturedLogs() as events:
            channel.makeConnection(transport)
            channel.dataReceived(PREFACE)
            calls = [keep(client.call("S.M", i, timeout=5 if i == 2 else None)) for i in (1, 2)]
            stream = client.stream("S.Stream", None)
            keep(stream.result())
            good = client.call("S.M", 3)
            keep(good)
            for chunk in chunks(data, cuts):
                channel.dataReceived(chunk)
            closing = transport.disconnecting
            channel.dataReceived(encode([1, 4, "good"]))  # `good` is call 4
            clock.advance(10)
            channel.connectionLost(Failure(Exception("done")))
        self.assertEqual(failures(events), [])
        self.assertTrue(all(d.called for d in calls))
        if not closing:
            self.assertTrue(good.called)
        list(FrameReader().feed(transport.value()[len(PREFACE):]))

    @FUZZ
    @given(field_mutations(SERVER_FRAMES), st.lists(st.integers(0, 10_000), max_size=4))
    def test_bad_fields(self, data: bytes, cuts: list[int]) -> None:
        """Bad fields from a server fail calls or close; a good reply after them is taken."""
        self.feed(data, cuts)

    @FUZZ
    @given(byte_mutations(SERVER_FRAMES) | st.binary(max_size=200),
           st.lists(st.integers(0, 10_000), max_size=6))
    def test_bad_bytes(self, data: bytes, cuts: list[int]) -> None:
        """Broken bytes from a server never raise or log a failure."""
        self.feed(data, cuts)
