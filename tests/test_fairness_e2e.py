"""
End-to-end per-turn fairness: the real daemon with a turn slice so small
that nearly every read waits for a turn, under pipelined native, gob and
HTTP clients at once; every call is answered, in order, nothing lost.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from rpcd.wire.frames import PREFACE, RESULT, FrameReader, encode_frame
from rpcd.wire.gobrpc import GobClientCodec
from tests.daemon import Daemon
from tests.test_limits_e2e import LOOPBACK, bounded, config


class _Collector(Protocol):
    """
    Sends its requests at once and collects the replies until C{count}
    have come.

    @ivar done: fires with the reply ids, in the order they came.
    """

    def __init__(self, requests: bytes, count: int, parse: Any) -> None:
        self.requests = requests
        self.count = count
        self.parse = parse
        self.ids: list[int] = []
        self.done: Deferred[list[int]] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.requests)

    def dataReceived(self, data: bytes) -> None:
        self.ids.extend(self.parse(data))
        if len(self.ids) >= self.count and not self.done.called:
            self.done.callback(self.ids)


def _native(count: int) -> tuple[bytes, Any]:
    reader = FrameReader(1 << 24)
    seen_preface = [b""]

    def parse(data: bytes) -> list[int]:
        if seen_preface[0] is not None:
            data = seen_preface[0] + data
            if len(data) < len(PREFACE):
                seen_preface[0] = data
                return []
            data, seen_preface[0] = data[len(PREFACE):], None
        frames, error = reader.split(data)
        assert error is None, error
        return [f[1] for f in frames if f[0] == RESULT]

    requests = PREFACE + b"".join(encode_frame([0, i, "Arith.Multiply", {"A": i, "B": 2}])
                                  for i in range(1, count + 1))
    return requests, parse


def _gob(count: int) -> tuple[bytes, Any]:
    codec = GobClientCodec()
    requests = b"".join(codec.encode_request(i, "Arith.Multiply", {"A": i, "B": 2})
                        for i in range(1, count + 1))
    return requests, lambda data: [seq for seq, _, error, _ in codec.feed(data)]


class TurnsTests(TestCase):
    """Many pipelining connections at once, each read waiting its turn: all answered in order."""

    timeout = 120

    async def test_all_answered_in_order(self) -> None:
        """Six native and three gob connections pipelining thousands of calls at once get every reply, in order."""
        daemon = await Daemon.start(self, "--config", config(
            self, "turn_slice = 0.000001\nidle_timeout = 0"), *LOOPBACK)
        clients = []
        for make, count in [(_native, 4000)] * 6 + [(_gob, 1500)] * 3:
            requests, parse = make(count)
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port, timeout=10)
            clients.append((await connectProtocol(endpoint, _Collector(requests, count, parse)),
                            count))
        results = await bounded(gatherResults([c.done for c, _ in clients]), 100)
        for ids, (_, count) in zip(results, clients):
            self.assertEqual(ids, list(range(1, count + 1)))
        for client, _ in clients:
            client.transport.loseConnection()
