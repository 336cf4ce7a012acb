"""
End-to-end keepalive with the real daemon on loopback: a peer in a long
poll that vanishes (stops reading and answering, as behind a firewall that
dropped the connection) is closed after C{keepalive_interval +
keepalive_timeout}; a silent reverse connection is dialled again; a ping
flood gets a GOAWAY; rpcd's client keeps a quiet
connection up by answering and sending PINGs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from rpcd.client import connect
from rpcd.errors import DeadlineExceeded
from rpcd.wire.frames import GOAWAY, PING, PREFACE, FrameReader, encode_frame
from tests.daemon import Daemon, temp_dir

CONFIG = """
[server]
listen = ["tcp:0:interface=127.0.0.1"]
[limits]
idle_timeout = 1
keepalive_interval = 1
keepalive_timeout = 1
keepalive_min_ping_interval = 5
keepalive_max_ping_strikes = 2
[services.KVStoreService]
"""

# For the tests of peers that never answer: a quarter of a second each, and
# an idle timeout shorter than keepalive's half second (it must not be what
# closes a connection whose call is running).
FAST = (CONFIG.replace("idle_timeout = 1\n", "idle_timeout = 0.25\n")
        .replace("keepalive_interval = 1\n", "keepalive_interval = 0.25\n")
        .replace("keepalive_timeout = 1\n", "keepalive_timeout = 0.25\n"))


class _Raw(Protocol):
    """A native peer written by hand: sends what it is told, reads frames until GOAWAY."""

    def __init__(self) -> None:
        self.data = b""
        self.goaway: Deferred[list[Any]] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) < len(PREFACE) or self.goaway.called:
            return
        frames, _ = FrameReader(1 << 20).split(self.data[len(PREFACE):])
        for frame in frames:
            if frame[0] == GOAWAY:
                self.goaway.callback(frame)
                return

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class KeepAliveTests(TestCase):
    """The daemon closes vanished peers and refuses ping floods."""

    timeout = 60

    async def start(self, config: str = CONFIG) -> Daemon:
        path = Path(temp_dir(self)) / "rpcd.toml"
        path.write_text(config, "utf-8")
        return await Daemon.start(self, "--config", str(path))

    async def raw(self, daemon: Daemon) -> _Raw:
        peer = _Raw()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port), peer)
        self.addCleanup(lambda: peer.transport.abortConnection() if peer.transport.connected else None)
        return peer

    async def test_vanished_peer(self) -> None:
        """A peer in a Watch long poll that stops reading is closed by keepalive, not by the idle timeout."""
        daemon = await self.start(FAST)
        peer = await self.raw(daemon)
        peer.transport.write(PREFACE + encode_frame([0, 1, "KVStoreService.Watch", 30]))
        peer.transport.pauseProducing()  # reads nothing more, answers no PING
        await daemon.wait_for_log(r"closing .*no answer to a PING within 0.25 s", timeout=30)
        self.assertNotIn("limits.idle_timeout", daemon.output)
        peer.transport.resumeProducing()
        await peer.lost
        self.assertIn(encode_frame([PING, 1]), peer.data)

    async def test_ping_flood(self) -> None:
        """PINGs sent back to back get a GOAWAY saying too many pings."""
        daemon = await self.start()
        peer = await self.raw(daemon)
        peer.transport.write(PREFACE + encode_frame([PING, 0]) * 10)
        frame = await peer.goaway
        self.assertIn("too many pings", frame[3])
        await daemon.wait_for_log(r"too many pings", timeout=30)

    async def test_live_client_kept(self) -> None:
        """rpcd's client answers the daemon's PINGs, so a long poll outlives interval + timeout of quiet."""
        daemon = await self.start()
        client = await connect(f"tcp:127.0.0.1:{daemon.port}", keepalive_interval=5, keepalive_timeout=5)
        self.addCleanup(client.close)
        with self.assertRaises(DeadlineExceeded):
            await client.call("KVStoreService.Watch", 3)
        self.assertNotIn("no answer to a PING", daemon.output)


class _Silent(Protocol):
    """The listening side of a reverse connection that goes silent after the preface."""

    def connectionMade(self) -> None:
        self.transport.write(PREFACE)
        self.transport.pauseProducing()  # reads nothing, answers no PING
        self.factory.connected.append(self)  # type: ignore[attr-defined]
        waiting, self.factory.waiting = self.factory.waiting, []  # type: ignore[attr-defined]
        for d in waiting:
            d.callback(self)


class ReverseKeepAliveTests(TestCase):
    """A reverse connection whose far side goes silent is noticed and dialled again."""

    timeout = 60

    async def test_half_open_redialled(self) -> None:
        """The daemon closes the silent reverse connection after interval + timeout and dials a new one."""
        factory = Factory.forProtocol(_Silent)
        factory.connected = []  # type: ignore[attr-defined]
        factory.waiting = []  # type: ignore[attr-defined]
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)

        def next_connection() -> Deferred[_Silent]:
            d: Deferred[_Silent] = Deferred()
            factory.waiting.append(d)  # type: ignore[attr-defined]
            return d
        first = next_connection()
        path = Path(temp_dir(self)) / "rpcd.toml"
        path.write_text(FAST.replace('listen = ["tcp:0:interface=127.0.0.1"]',
                                       f'listen = []\nconnect = ["tcp:127.0.0.1:{port.getHost().port}"]'),
                        "utf-8")
        daemon = await Daemon.start(self, "--config", str(path), listeners=0)
        silent = await first
        self.addCleanup(lambda: [p.transport.abortConnection() for p in factory.connected])  # type: ignore[attr-defined]
        second = next_connection()
        await daemon.wait_for_log(r"no answer to a PING within 0.25 s", timeout=30)
        again = await second
        self.assertIsNot(again, silent)
