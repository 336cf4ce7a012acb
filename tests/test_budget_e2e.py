"""
End-to-end memory budget, slow-loris and half-close tests: the real daemon
on loopback against peers that pipeline calls of a large value and never
read, trickle a gob or Go jsonrpc message, or shut down their write side
after their requests (raw sockets, and a stock Go program).

Every wait is on real state (a log line, a reply, a closed connection);
bytes are trickled with timers, which is the attack itself, not
synchronisation.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from rpcd.client import connect
from rpcd.wire.frames import PREFACE, RESULT, FrameReader, encode_frame
from rpcd.wire.gobrpc import GobClientCodec
from tests.daemon import Daemon, run
from tests.test_go_e2e import go_program
from tests.test_limits_e2e import LOOPBACK, bounded, config, raw


class NonReadingPeerTests(TestCase):
    """Peers that pipeline calls of a large value and never read cost at most their write cap each."""

    timeout = 120

    async def pipeline(self, protocol: str, request: Any) -> None:
        connections, calls, value_size, cap = 8, 400, 512 * 1024, 1024 * 1024
        daemon = await Daemon.start(self, "--config", config(
            self, f"write_buffer_bytes = {cap}\nmax_frame_bytes = {cap}\nidle_timeout = 0"),
            *LOOPBACK)
        setter = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(setter.close)
        await setter.call("KVStoreService.Set", ["big", "x" * value_size])
        baseline = daemon.rss_kib()
        peers = await gatherResults([raw(daemon.port, read=False) for _ in range(connections)])
        mark = len(daemon.output)
        for peer in peers:
            peer.transport.write(request(calls))
        # Every connection stops starting calls (one line each, the first time).
        for _ in range(connections):
            found = await daemon.wait_for_log(r"is not reading its replies", after=mark, timeout=60)
            mark = found.end()
        probe = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(probe.close)
        self.assertEqual(await bounded(probe.call("Arith.Multiply", {"A": 6, "B": 7}), 30), 42)
        grown = daemon.rss_peak_kib() - baseline
        # Unbounded, this is 8 x 400 x 512 KiB = 1.6 GB of replies.
        allowed = connections * (cap + 3 * value_size) // 1024 + 64 * 1024
        print(f"\n{protocol}: {connections} x {calls} calls of a {value_size // 1024} KiB value, "
              f"not read: daemon RSS +{grown} KiB (allowed {allowed} KiB)")
        self.assertLess(grown, allowed)
        for peer in peers:
            peer.transport.abortConnection()
        await gatherResults([peer.closed for peer in peers])

    async def test_native(self) -> None:
        """Native: the daemon's memory stays within the write caps and a probe on another connection answers."""
        await self.pipeline("native", lambda n: PREFACE + b"".join(
            encode_frame([0, i, "KVStoreService.Get", "big"]) for i in range(1, n + 1)))

    async def test_gob(self) -> None:
        """Go gob: the same bound."""
        def requests(n: int) -> bytes:
            codec = GobClientCodec()  # one per connection: it sends its types once
            return b"".join(codec.encode_request(i, "KVStoreService.Get", "big")
                            for i in range(1, n + 1))
        await self.pipeline("gob", requests)

    async def test_jsonrpc(self) -> None:
        """Go jsonrpc: the same bound."""
        await self.pipeline("jsonrpc", lambda n: b"".join(
            json.dumps({"method": "KVStoreService.Get", "params": ["big"], "id": i}).encode()
            + b"\n" for i in range(1, n + 1)))

    async def test_batch(self) -> None:
        """JSON-RPC 2.0 batches: the same bound."""
        await self.pipeline("jsonrpc2 batch", lambda n: b"".join(
            json.dumps([{"jsonrpc": "2.0", "method": "KVStoreService.Get", "params": ["big"],
                         "id": i * 100 + j} for j in range(100)]).encode()
            for i in range(1, n // 100 + 1)))


class SlowMessageTests(TestCase):
    """A message trickled a byte at a time is closed at message_timeout, on every protocol."""

    timeout = 60

    async def trickle(self, data: bytes) -> None:
        daemon = await Daemon.start(self, "--config", config(
            self, "message_timeout = 0.3\nhandshake_timeout = 30.0"), *LOOPBACK)
        peer = await raw(daemon.port)
        mark = len(daemon.output)
        chunks = iter(data[i:i + 1] for i in range(len(data) - 1))  # never the last byte
        loop = LoopingCall(lambda: peer.transport.write(next(chunks, b"")))
        loop.clock = reactor
        loop.start(0.03)  # about ten bytes within the timeout, and never all of them
        try:
            await daemon.wait_for_log(r"closing 127\.0\.0\.1:\d+: a message was not complete "
                                      r"within 0\.3 s of its first byte .*limits\.message_timeout",
                                      after=mark, timeout=30)
            await bounded(peer.closed, 10)
        finally:
            loop.stop()
        # The daemon still serves.
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 2, "B": 3}), 6)

    async def test_gob(self) -> None:
        """A gob request trickled a byte at a time is closed with the reason logged."""
        await self.trickle(GobClientCodec().encode_request(1, "KVStoreService.Get", "k" * 200))

    async def test_jsonrpc(self) -> None:
        """A Go jsonrpc request trickled a byte at a time is closed with the reason logged."""
        await self.trickle(json.dumps({"method": "KVStoreService.Get", "params": ["k" * 200],
                                       "id": 1}).encode())

    async def test_native(self) -> None:
        """A native frame trickled a byte at a time is closed with the reason logged."""
        await self.trickle(PREFACE + encode_frame([0, 1, "KVStoreService.Get", "k" * 200]))


def _half_close(port: int, request: bytes) -> bytes:
    """
    In a thread: send a request, shut down the write side, read until the
    daemon closes.

    @return: everything received.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            data = sock.recv(65536)
            if not data:
                return received
            received += data


class HalfCloseTests(TestCase):
    """A peer that sends its requests then shuts down its write side is answered, then closed."""

    timeout = 60

    async def test_raw_sockets(self) -> None:
        """Native, gob and Go jsonrpc requests followed by a FIN are all answered before the daemon closes."""
        daemon = await Daemon.shared(self, *LOOPBACK)
        native = await deferToThread(_half_close, daemon.port, PREFACE + b"".join(
            encode_frame([0, i, "Arith.Multiply", {"A": i, "B": 7}]) for i in range(1, 4)))
        frames, error = FrameReader().split(native[len(PREFACE):])
        self.assertIsNone(error)
        self.assertEqual([f[2] for f in frames if f[0] == RESULT], [7, 14, 21])
        codec = GobClientCodec()
        gob = await deferToThread(_half_close, daemon.port,
                                  codec.encode_request(5, "KVStoreService.Get", "nope"))
        self.assertEqual([(seq, error) for seq, _, error, _ in codec.feed(gob)],
                         [(5, "not found")])
        jsonrpc = await deferToThread(_half_close, daemon.port, json.dumps(
            {"method": "Arith.Multiply", "params": [{"A": 6, "B": 7}], "id": 9}).encode() + b"\n")
        self.assertEqual(json.loads(jsonrpc), {"id": 9, "result": 42, "error": None})

    async def test_go_close_write(self) -> None:
        """Go's stock gob and jsonrpc clients that CloseWrite after their call get the reply."""
        program = await go_program(self, "halfclose")
        daemon = await Daemon.shared(self, *LOOPBACK)
        code, out, err = await run(self, [program, f"127.0.0.1:{daemon.port}"])
        self.assertEqual((code, out), (0, "gob 42\njsonrpc 42\n"), err)
