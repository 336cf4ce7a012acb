"""
End-to-end limits against abuse: the real daemon on loopback against
slowloris connections, connection floods, a peer that never reads, too many
calls in flight, file descriptor exhaustion and idle connections; and Unix
socket endpoints.

Every wait is bounded and on real state (a log line, a closed connection, a
call's answer); bytes are dribbled with timers, which is the attack itself,
not synchronisation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import TestCase

from rpcd.client import connect
from rpcd.errors import ResourceExhausted
from rpcd.wire.frames import PREFACE, encode_frame
from tests.cli import rpcd
from tests.daemon import Daemon, socket_path, temp_dir
from tests.test_tls_e2e import PKI


class Raw(Protocol):
    """
    A raw connection: records what it receives and when it is closed.

    @ivar closed: fires with the time the connection closed.
    """

    def __init__(self, read: bool = True) -> None:
        self.read = read
        self.received = b""
        self.closed: Deferred[float] = Deferred()
        self.answered: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if not self.read:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.answered.called:
            self.answered.callback(None)

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(time.monotonic())


def raw(port: int, *, read: bool = True, source: str | None = None) -> Deferred[Raw]:
    """
    @param port: the daemon's port on 127.0.0.1.
    @param read: whether to read what the daemon sends.
    @param source: a loopback address to connect from (127.0.0.2...).
    @return: a Deferred firing with the connected L{Raw} protocol.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10,
                                  bindAddress=(source, 0) if source else None)
    return connectProtocol(endpoint, Raw(read))


async def refused(port: int, source: str | None = None) -> bool:
    """
    Connect, and tell whether the daemon refused the connection (it reset
    it, or closed it without a byte) or took it (it sent its preface).

    @return: whether it was refused.
    """
    try:
        peer = await raw(port, source=source)
    except ConnectError:
        return True
    peer.transport.write(PREFACE)
    await bounded(DeferredList([peer.closed, peer.answered], fireOnOneCallback=True), 30)
    took = peer.answered.called
    peer.transport.abortConnection()
    await peer.closed
    return not took


def bounded(d: Deferred[Any], seconds: float) -> Deferred[Any]:
    """
    @return: C{d}, failing with a timeout after C{seconds}.
    """
    return d.addTimeout(seconds, reactor)


def config(test: TestCase, limits: str, services: str = "[services.Arith]\n[services.KVStoreService]\n") -> str:
    path = Path(temp_dir(test)) / "rpcd.toml"
    path.write_text(f"[server]\nlisten = []\n[limits]\n{limits}\n{services}")
    return str(path)


LOOPBACK = ("--listen", "tcp:0:interface=127.0.0.1")


class TimeoutTests(TestCase):
    """The handshake and idle timeouts on the real daemon."""

    timeout = 30

    async def test_slowloris(self) -> None:
        """Byte-a-while senders are cut off at handshake_timeout: while sniffing, in a TLS handshake, and in an HTTP head."""
        pki = PKI(Path(temp_dir(self)))
        daemon = await Daemon.start(
            self, "--config", config(self, "handshake_timeout = 1.0\nidle_timeout = 0"),
            *LOOPBACK, "--listen", pki.server("rpcd-tls"), listeners=2)
        plain, tls = daemon.ports
        attacks = [(plain, b" \r\n "), (tls, b"\x16\x03\x01\x00\xff\x01"),
                   (plain, b"POST /rpc HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaa")]
        peers = []
        for port, data in attacks:
            peer = await raw(port)
            peers.append(peer)
            drip = iter(data)
            loop = LoopingCall(lambda d=drip, p=peer: p.transport.write(bytes([next(d, 32)])))
            loop.start(0.2)
            self.addCleanup(lambda loop=loop: loop.running and loop.stop())
        # No wall-clock bound (a loaded machine may run late): the log lines
        # below say that the handshake timer closed each one.
        await gatherResults([p.closed for p in peers])
        await daemon.wait_for_log(r"no protocol identified within 1 s", timeout=5)
        await daemon.wait_for_log(r"the TLS handshake did not finish within 1 s", timeout=5)
        await daemon.wait_for_log(r"the http preamble did not finish within 1 s", timeout=5)
        client = await connect(f"tcp:127.0.0.1:{plain}")
        self.addCleanup(client.close)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 2, "B": 2}), 4)

    async def test_idle(self) -> None:
        """A connection with no traffic and no running call is closed after idle_timeout; one with a running call is not."""
        daemon = await Daemon.start(self, "--config", config(self, "idle_timeout = 1.0"), *LOOPBACK)
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        busy = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(busy.close)
        watching = busy.call("KVStoreService.Watch", 5)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 2, "B": 3}), 6)
        await client.closed
        await daemon.wait_for_log(r"closing 127\.0\.0\.1:\d+: idle for 1 s", timeout=5)
        await busy.call("KVStoreService.Set", ["k", "v"])
        self.assertEqual(await watching, "k")


class CapTests(TestCase):
    """Connection caps, in total and per peer, refusing at accept."""

    timeout = 120  # hundreds of connections and a daemon: slow on a loaded machine

    async def test_per_peer_and_total(self) -> None:
        """The sixth connection from a host is refused, other hosts get in, and the total cap holds for everyone."""
        daemon = await Daemon.start(self, "--config", config(
            self, "max_connections = 12\nmax_connections_per_peer = 5\nidle_timeout = 0"), *LOOPBACK)
        port = daemon.port
        held = []
        for source in ("127.0.0.1", "127.0.0.2"):
            for _ in range(5):
                peer = await raw(port, source=source)
                peer.transport.write(PREFACE)
                held.append(peer)
        self.assertTrue(await refused(port, source="127.0.0.1"))
        await daemon.wait_for_log(r"refusing connection from 127\.0\.0\.1:\d+: 5 connections from "
                                  r"127\.0\.0\.1 are open")
        for source in ("127.0.0.3", "127.0.0.3"):
            held.append(await raw(port, source=source))
        self.assertTrue(await refused(port, source="127.0.0.4"))
        await _close_all([held.pop()])
        self.assertFalse(await refused(port, source="127.0.0.4"), "no place freed by a closed connection")
        await _close_all(held)
        client = await connect(f"tcp:127.0.0.1:{port}")
        self.addCleanup(client.close)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 3, "B": 3}), 9)

    async def test_flood(self) -> None:
        """300 connections at once from one host: all but the per-peer cap are closed at once, the log is not flooded, and the daemon still answers."""
        daemon = await Daemon.start(self, "--config", config(
            self, "max_connections_per_peer = 20\nidle_timeout = 0"), *LOOPBACK)
        results = await DeferredList([raw(daemon.port) for _ in range(300)], consumeErrors=True)
        peers = [p for ok, p in results if ok]
        self.addCleanup(_abort_all, peers)
        for p in peers:
            p.transport.write(PREFACE)
        reset = len(results) - len(peers)
        # Every connection is either answered or closed, however long a
        # loaded machine takes (connections dropped from a full accept queue
        # retry their SYN).
        await gatherResults([DeferredList([p.closed, p.answered], fireOnOneCallback=True)
                             for p in peers])
        answered = [p for p in peers if p.answered.called]
        turned_away = reset + len([p for p in peers if p.closed.called and not p.answered.called])
        self.assertEqual((len(answered), turned_away), (20, 280))
        print(f"\nflood: 300 connections from one host: {len(answered)} served, {turned_away} refused "
              f"({reset} reset at connect); {daemon.count_log('refusing connection')} log lines")
        self.assertLess(daemon.count_log(r"refusing connection"), 20)
        self.assertLess(daemon.open_fds(), 80)
        await _close_all(peers)
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 3, "B": 4}), 12)


async def _close_all(peers: list[Raw]) -> None:
    """
    Half-close every connection still open, and wait until the daemon has
    closed each one.  The daemon counts a connection closed
    (L{rpcd.server.limits.ConnectionCaps}) in the same step as it closes the
    socket, so a connection made after this finds every place these held
    freed; waiting for our own side's close only (C{loseConnection}) would
    race the daemon reading the FIN.
    """
    for p in peers:
        if not p.closed.called:
            p.transport.loseWriteConnection()
    await gatherResults([p.closed for p in peers])


async def _abort_all(peers: list[Raw]) -> None:
    """Close every connection still open, and wait until they are closed."""
    for p in peers:
        if not p.closed.called:
            p.transport.abortConnection()
    await gatherResults([p.closed for p in peers])


class ResourceTests(TestCase):
    """A peer that never reads, too many calls in flight, and running out of file descriptors."""

    timeout = 45

    async def test_slow_reader(self) -> None:
        """A peer that sends many calls and never reads stops being read: the daemon's memory stays bounded and others are served."""
        daemon = await Daemon.start(self, "--config", config(
            self, "write_buffer_bytes = 262144\nidle_timeout = 0"), *LOOPBACK)
        setter = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(setter.close)
        await setter.call("KVStoreService.Set", ["big", "x" * 4096])
        baseline = daemon.rss_kib()
        reader = await raw(daemon.port, read=False)
        call = b"".join(encode_frame([0, i, "KVStoreService.Get", "big"]) for i in range(1, 1001))
        reader.transport.write(PREFACE)
        sent = 0
        for _ in range(300):  # 300 x 1000 calls: 1.2 GB of replies if all were answered
            reader.transport.write(call)
            sent += len(call)
        await daemon.wait_for_log(r"is not reading its replies", timeout=15)
        other = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(other.close)
        self.assertEqual(await other.call("Arith.Multiply", {"A": 6, "B": 7}), 42)
        peak = daemon.rss_peak_kib()
        grown = peak - baseline
        print(f"\nslow reader: sent {sent // 1024} KiB of calls; daemon RSS {baseline} KiB -> "
              f"peak {peak} KiB (+{grown} KiB)")
        self.assertLess(grown, 96 * 1024)
        reader.transport.abortConnection()
        await reader.closed

    async def test_in_flight_cap(self) -> None:
        """The fourth call running on a connection is refused; once one ends, calls are taken again."""
        daemon = await Daemon.start(self, "--config", config(
            self, "max_calls_per_connection = 3"), *LOOPBACK)
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        watches = [client.call("KVStoreService.Watch", 30) for _ in range(3)]
        with self.assertRaises(ResourceExhausted) as caught:
            await client.call("Arith.Multiply", {"A": 1, "B": 1})
        self.assertIn("limit 3", caught.exception.message)
        other = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(other.close)
        self.assertEqual(await other.call("Arith.Multiply", {"A": 2, "B": 2}), 4)
        await other.call("KVStoreService.Set", ["k", "v"])
        self.assertEqual(await gatherResults(watches), ["k"] * 3)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 1, "B": 1}), 1)

    async def test_fd_exhaustion(self) -> None:
        """With RLIMIT_NOFILE at 64, 100 connections make accept fail with EMFILE; the daemon lives on and answers once they close."""
        daemon = await Daemon.start(self, "--config", config(self, "idle_timeout = 0"), *LOOPBACK,
                                    nofile=64)
        self.assertLess(daemon.open_fds(), 64)
        results = await DeferredList([raw(daemon.port) for _ in range(100)], consumeErrors=True)
        peers = [p for ok, p in results if ok]
        await daemon.wait_for_log(r"EMFILE", timeout=10)
        for p in peers:
            p.transport.abortConnection()
        await gatherResults([p.closed for p in peers])
        client = await bounded(connect(f"tcp:127.0.0.1:{daemon.port}"), 15)
        self.addCleanup(client.close)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 5, "B": 5}), 25)
        self.assertTrue(daemon.running)


class UnixSocketTests(TestCase):
    """unix: endpoints for listening and for clients."""

    timeout = 30

    async def test_unix(self) -> None:
        """The daemon listens on a Unix socket; the client library and rpcd call reach it with unix: endpoints."""
        path = socket_path(self)
        daemon = await Daemon.start(self, "--listen", f"unix:{path}")
        self.assertEqual((daemon.ports, daemon.addresses), ([None], [str(path)]))
        client = await connect(f"unix:{path}")
        self.addCleanup(client.close)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 7, "B": 8}), 56)
        code, out, err = await rpcd(self, "call", f"unix:{path}", "Arith.Multiply",
                                    '{"A": 3, "B": 4}')
        self.assertEqual((code, out.strip()), (0, "12"), err)
