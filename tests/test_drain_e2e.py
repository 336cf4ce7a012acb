"""
End-to-end graceful drain with real daemon processes on loopback: SIGTERM
with a call in flight, a second signal, GOAWAY and the client's transparent
retry (through max_connection_age and a balancer), the HTTP probes during
a drain, and systemd's NOTIFY_SOCKET.

Every wait is on real state (a log line, an answer, the process's exit).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from rpcd.balancer import connect_balanced
from rpcd.client import connect
from rpcd.errors import Unavailable
from tests.daemon import Daemon, temp_dir

CONFIG = """
[server]
listen = ["tcp:0:interface=127.0.0.1"]
shutdown_grace = {grace}

[limits]
max_connection_age = {age}
max_connection_age_grace = 30

[services.Sleep]
class = "tests.sleepservice:Sleep"
"""


def write_config(test: TestCase, grace: float = 30, age: float = 0) -> str:
    path = Path(temp_dir(test)) / "rpcd.toml"
    path.write_text(CONFIG.format(grace=grace, age=age))
    return str(path)


class _Http(Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: object) -> None:
        self.done.callback(self.data)


async def http_get(port: int, path: str, host: str = "10.0.0.7") -> bytes:
    """One GET with Connection: close; the whole answer."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    protocol = _Http(request)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
    return await protocol.done


class DrainTests(TestCase):
    """SIGTERM drains; a second signal stops at once."""

    async def test_sigterm_lets_call_finish(self) -> None:
        """With a 2-second call in flight, SIGTERM lets it succeed, refuses new connections, exits 0."""
        daemon = await Daemon.start(self, "--config", write_config(self))
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        self.assertEqual((await http_get(daemon.port, "/readyz"))[:12], b"HTTP/1.1 200")
        call = client.Sleep.Sleep(2.0)
        await client.Sleep.Echo(1)  # the Sleep call is running on the server
        mark = len(daemon.output)
        daemon.process.signalProcess("TERM")
        await daemon.wait_for_log(r"draining: \d+ connection\(s\) told to go away, 1 call", after=mark,
                                  timeout=10)
        with self.assertRaises(ConnectError):
            await connect(f"tcp:127.0.0.1:{daemon.port}", connect_timeout=5)
        self.assertEqual(await call, 2.0)
        self.assertEqual(await daemon.output_protocol.ended, 0)
        self.assertRegex(daemon.output, r"drained in [\d.]+ s")

    async def test_second_signal_stops_at_once(self) -> None:
        """A second SIGTERM fails the call left with UNAVAILABLE and exits 0 without the grace."""
        daemon = await Daemon.start(self, "--config", write_config(self, grace=600))
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        call = client.Sleep.Sleep(600.0)
        await client.Sleep.Echo(1)
        self.assertEqual(await daemon.stop(at_once=True), 0)
        with self.assertRaises(Unavailable) as cm:
            await call
        self.assertIn("second signal", cm.exception.message)

    async def test_health_during_drain(self) -> None:
        """Probes answer 200 before; on SIGTERM a Health.Watch stream hears NOT_SERVING and ends, /readyz is gone."""
        daemon = await Daemon.start(self, "--config", write_config(self))
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        self.assertTrue((await http_get(daemon.port, "/healthz")).startswith(b"HTTP/1.1 200"))
        self.assertTrue((await http_get(daemon.port, "/readyz")).startswith(b"HTTP/1.1 200"))
        self.assertEqual(await client.Health.Check(""), "SERVING")
        watch = client.stream("Health.Watch", "")
        heard = []
        async for status in watch:
            heard.append(status)
            if status == "SERVING":
                daemon.process.signalProcess("TERM")
        self.assertEqual(heard, ["SERVING", "NOT_SERVING"])
        self.assertEqual(await daemon.output_protocol.ended, 0)
        with self.assertRaises(ConnectError):
            await http_get(daemon.port, "/readyz")

    async def test_notify_socket(self) -> None:
        """With NOTIFY_SOCKET set, the daemon sends READY=1 once listening and STOPPING=1 on SIGTERM."""
        directory = tempfile.mkdtemp(dir="/tmp")  # a short path: sun_path holds 108 bytes
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(path)
        daemon = await Daemon.start(self, "--config", write_config(self), env={"NOTIFY_SOCKET": path})
        # The datagram is sent before the line is logged.
        await daemon.wait_for_log("rpcd ready", timeout=10)
        self.assertEqual(sock.recv(4096, socket.MSG_DONTWAIT), b"READY=1")
        daemon.process.signalProcess("TERM")
        self.assertEqual(await daemon.output_protocol.ended, 0)
        self.assertEqual(sock.recv(4096, socket.MSG_DONTWAIT), b"STOPPING=1")


class GoawayRetryTests(TestCase):
    """Clients retry what a server going away did not run."""

    async def test_max_connection_age_reconnects_transparently(self) -> None:
        """Past max_connection_age the server sends GOAWAY; a client's calls keep succeeding on a new connection."""
        daemon = await Daemon.start(self, "--config", write_config(self, age=1))
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        first = client.channel
        mark = len(daemon.output)
        results = []
        n = 0
        while client.channel is first:
            # Calls pipelined across the GOAWAY: none may fail.
            batch = [client.Sleep.Echo(n + i) for i in range(20)]
            results += await gatherResults(batch)
            n += 20
            self.assertLess(n, 100_000, "no GOAWAY came")
        results += await gatherResults([client.Sleep.Echo(n + i) for i in range(20)])
        self.assertEqual(results, list(range(n + 20)))
        await daemon.wait_for_log("limits.max_connection_age", after=mark, timeout=10)

    async def test_balancer_moves_calls_off_a_draining_daemon(self) -> None:
        """Calls in flight on a daemon that gets SIGTERM all succeed, there or on the other daemon."""
        one = await Daemon.start(self, "--config", write_config(self))
        two = await Daemon.start(self, "--config", write_config(self))
        balancer = await connect_balanced([f"tcp:127.0.0.1:{one.port}", f"tcp:127.0.0.1:{two.port}"])
        self.addCleanup(balancer.close)
        await balancer.when_ready(30, at_least=2)
        calls = [balancer.call("Sleep.Sleep", 0.5) for i in range(20)]
        calls += [balancer.call("Sleep.Echo", i) for i in range(200)]
        one.process.signalProcess("TERM")
        calls += [balancer.call("Sleep.Echo", i) for i in range(200)]
        results = await gatherResults(calls)
        self.assertEqual(results, [0.5] * 20 + list(range(200)) * 2)
        self.assertEqual(await one.output_protocol.ended, 0)
        after = await gatherResults([balancer.call("Sleep.Echo", i) for i in range(50)])
        self.assertEqual(after, list(range(50)))
