"""
End-to-end per-turn fairness: the real daemon with a turn slice so small
that nearly every read waits for a turn, under pipelined native, gob and
HTTP clients at once; every call is answered, in order, nothing lost.  And
a probe on its own connection answered while HTTP clients that pipeline
calls of a large value and never read hold theirs.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from rpcd.wire.frames import PREFACE, RESULT, FrameReader, encode_frame
from rpcd.wire.gobrpc import GobClientCodec
from rpcd.client import connect
from tests.daemon import Daemon
from tests.test_limits_e2e import LOOPBACK, bounded, config, raw


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


def _get_calls(port: int) -> tuple[int, int]:
    """
    @return: how many C{KVStoreService.Get} calls the daemon has served, and
        how many HTTP connections it has open besides the one asking (from
        C{/debug/rpc.json}).
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/debug/rpc.json", timeout=30) as answer:
        status = json.load(answer)
    calls = sum(method["calls"] for service in status["services"]
                for method in service["methods"] if method["name"] == "KVStoreService.Get")
    return calls, status["connections"].get("http", 0) - 1


class HTTPFloodTests(TestCase):
    """A probe is answered while HTTP clients pipeline calls of a large value and never read."""

    timeout = 120

    async def test_probe_before_backlog(self) -> None:
        """Eight non-reading HTTP connections each pipelining 400 Gets of 512 KiB: a native probe's calls are answered while every flood connection is open with most of its requests not yet run."""
        connections, calls, value = 8, 400, "x" * (512 * 1024)
        daemon = await Daemon.start(self, "--config", config(
            self, "write_buffer_bytes = 1048576\nidle_timeout = 0",
            "[http]\nmetrics = true\n[services.Arith]\n[services.KVStoreService]\n"), *LOOPBACK)
        setter = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(setter.close)
        await setter.call("KVStoreService.Set", ["big", value])
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "KVStoreService.Get",
                           "params": ["big"]}).encode()
        request = (b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        floods = await gatherResults([raw(daemon.port, read=False) for _ in range(connections)])
        for flood in floods:
            self.addCleanup(flood.transport.abortConnection)
            flood.transport.write(request * calls)
        # Wait (on the daemon's own figures) until every flood connection
        # has had calls run: each holds its connection with replies unread.
        for _ in range(600):
            served, _ = await deferToThread(_get_calls, daemon.port)
            if served >= connections:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertGreaterEqual(served, connections)
        probe = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(probe.close)
        for i in range(1, 6):
            self.assertEqual(await bounded(probe.call("Arith.Multiply", {"A": i, "B": 7}), 30), 7 * i)
        served, open_http = await deferToThread(_get_calls, daemon.port)
        # The probe went ahead of the floods' backlog: nearly all of it waits.
        self.assertEqual(open_http, connections)
        self.assertLess(served, connections * calls // 4)
        self.assertEqual([flood.closed.called for flood in floods], [False] * connections)
        self.assertEqual([flood.received for flood in floods], [b""] * connections)
        print(f"\nhttp flood: {connections} x {calls} pipelined Gets of 512 KiB, not read: "
              f"5 probe calls answered with {served} Gets run")
