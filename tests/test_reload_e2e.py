"""
End-to-end tests of reloading the real daemon's config on SIGHUP: a service
added and a TLS certificate rotated while a stream stays open, a bad config
refused while the old one keeps serving, a listener removed; the
log file reopened on SIGHUP and rotated by twistd's SIGUSR1.
"""

from __future__ import annotations

import os
import signal
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from rpcd import certs
from rpcd.client import connect
from rpcd.errors import Unimplemented
from tests.daemon import LISTENING, Daemon, _Output, environment, socket_path, spawn_twistd, temp_dir
from tests.tools import require_tool


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _config(listen: list[str], services: list[str], extra: str = "") -> str:
    lines = ["[server]", "listen = [" + ", ".join(repr(e) for e in listen) + "]", extra, ""]
    for name in services:
        lines.append(f"[services.{name}]")
    return "\n".join(lines) + "\n"


async def _serial(port: int) -> int:
    pem = await deferToThread(ssl.get_server_certificate, ("127.0.0.1", port), timeout=10)
    return x509.load_pem_x509_certificate(pem.encode("ascii")).serial_number


class ReloadTests(TestCase):
    """SIGHUP applies a good config without dropping connections and refuses a bad one."""

    timeout = 90

    def setUp(self) -> None:
        self.dir = Path(temp_dir(self))
        self.config = self.dir / "rpcd.toml"

    def write(self, text: str) -> None:
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text, "utf-8")
        os.replace(tmp, self.config)

    async def hup(self, daemon: Daemon, pattern: str) -> None:
        mark = len(daemon.output)
        os.kill(daemon.pid, signal.SIGHUP)
        await daemon.wait_for_log(pattern, after=mark, timeout=30)

    async def test_add_service_and_rotate_certificate(self) -> None:
        """A reload adds a service and rotates the certificate while a stream on the old config goes on."""
        certs.create_dev_pki(self.dir / "pki")
        ca = certs.load_issued_certificate(self.dir / "pki" / "ca.pem", self.dir / "pki" / "ca.key")
        cert, key = self.dir / "pki" / "server.pem", self.dir / "pki" / "server.key"
        tls = (f"rpcd-tls:0:interface=127.0.0.1:certKey={_escape(str(cert))}"
               f":privateKey={_escape(str(key))}")
        listen = ["tcp:0:interface=127.0.0.1", tls]
        self.write(_config(listen, ["TestService"]))
        daemon = await Daemon.start(self, "--config", str(self.config), listeners=2)
        client = await connect(f"tcp:127.0.0.1:{daemon.ports[0]}")
        self.addCleanup(client.close)
        with self.assertRaises(Unimplemented):
            await client.call("Arith.Multiply", {"A": 6, "B": 7})
        stream = client.stream("TestService.FullDuplexCall")
        replies = stream.__aiter__()
        await stream.send({"response_parameters": [{"size": 3}]})
        self.assertEqual(len((await replies.__anext__())["payload"]["body"]), 3)
        before = await _serial(daemon.ports[1])

        certs.issue_server_certificate(ca).write(self.dir / "pki", "server")
        self.write(_config(listen, ["TestService", "Arith"]))
        await self.hup(daemon, r"rpcd reload: server.listen rpcd-tls:.*: TLS certificate changed")

        self.assertIn("rpcd reload: services.Arith added", daemon.output)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 6, "B": 7}), 42)
        await stream.send({"response_parameters": [{"size": 5}]})
        self.assertEqual(len((await replies.__anext__())["payload"]["body"]), 5)
        stream.close_send()
        after = await _serial(daemon.ports[1])
        self.assertNotEqual(before, after)
        self.assertIn(f"serial {before:x} -> {after:x}", daemon.output)

    async def test_bad_config_keeps_old(self) -> None:
        """A config with a bad value is refused with its file and key named, and the old config keeps serving."""
        self.write(_config(["tcp:0:interface=127.0.0.1"], ["Arith"]))
        daemon = await Daemon.start(self, "--config", str(self.config))
        self.write(_config(["tcp:0:interface=127.0.0.1"], ["Arith"],
                           "[limits]\nidle_timeout = \"soon\""))
        await self.hup(daemon, r"rpcd reload refused, the old config keeps serving: .*limits\.idle_timeout")
        # The refusal's own line (the "ready" line may come after it).
        refusal = [line for line in daemon.output.splitlines() if "rpcd reload refused" in line]
        self.assertIn(str(self.config), refusal[-1])
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 2, "B": 3}), 6)
        self.assertTrue(daemon.running)

    async def test_remove_listener(self) -> None:
        """A removed listener stops accepting while a connection it accepted goes on."""
        unix = socket_path(self)  # not under the checkout: AF_UNIX paths are short
        self.write(_config(["tcp:0:interface=127.0.0.1", f"unix:{unix}"], ["Arith"]))
        daemon = await Daemon.start(self, "--config", str(self.config), listeners=2)
        client = await connect(f"unix:{unix}")
        self.addCleanup(client.close)
        self.write(_config(["tcp:0:interface=127.0.0.1"], ["Arith"], "log_level = \"debug\""))
        await self.hup(daemon, rf"rpcd reload: server.listen unix:{unix} removed")
        self.assertIn("rpcd reload: server.log_level changed: info -> debug", daemon.output)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 4, "B": 5}), 20)
        with self.assertRaises(Exception):
            await connect(f"unix:{unix}", timeout=5)


class LogFileTests(TestCase):
    """The daemon's --logfile follows logrotate: SIGHUP reopens it; twistd's SIGUSR1 rotates it."""

    timeout = 60

    async def start(self) -> tuple[Daemon, _Output, Path]:
        directory = Path(temp_dir(self))
        logfile = directory / "rpcd.log"
        logfile.touch()
        # tail -F follows the file by name across renames, so the test waits
        # on the daemon's log lines without polling.
        tail_output = _Output()
        tail = reactor.spawnProcess(tail_output, "tail", ["tail", "-F", "-n", "+1", str(logfile)],
                                    env=environment(), path=str(directory))

        def stop_tail() -> Any:
            if tail_output.running:
                tail.signalProcess(signal.SIGKILL)
            return tail_output.ended
        self.addCleanup(stop_tail)
        output = _Output()
        process = await spawn_twistd(output, ["-n", "--pidfile=", f"--logfile={logfile}", "rpcd",
                                              "--listen", "tcp:0:interface=127.0.0.1", "--service", "Arith"],
                                     str(directory))
        daemon = Daemon(process, output)
        self.addCleanup(daemon.stop)
        await tail_output.wait_for(lambda text: LISTENING.search(text), "the daemon listened", 30)
        return daemon, tail_output, logfile

    async def test_hup_reopens(self) -> None:
        """After the log file is moved away, SIGHUP makes the daemon write a new one."""
        require_tool("tail")
        daemon, tail, logfile = await self.start()
        os.rename(logfile, logfile.with_suffix(".log.1"))
        os.kill(daemon.pid, signal.SIGHUP)
        await tail.wait_for(lambda text: "nothing changed" in text or None, "the reload line", 30)
        self.assertIn("nothing changed", logfile.read_text("utf-8"))
        self.assertIn("rpcd listening on", logfile.with_suffix(".log.1").read_text("utf-8"))

    async def test_usr1_rotates(self) -> None:
        """twistd's SIGUSR1 rotates the log file itself: the old lines move to FILE.1."""
        require_tool("tail")
        daemon, tail, logfile = await self.start()
        os.kill(daemon.pid, signal.SIGUSR1)
        await tail.wait_for(lambda text: "following new file" in text or None, "the rotation", 30)
        os.kill(daemon.pid, signal.SIGHUP)  # something to log after the rotation
        await tail.wait_for(lambda text: "nothing changed" in text or None, "the reload line", 30)
        self.assertIn("rpcd listening on", logfile.with_suffix(".log.1").read_text("utf-8"))
        self.assertNotIn("rpcd listening on", logfile.read_text("utf-8"))
        self.assertIn("nothing changed", logfile.read_text("utf-8"))


class ReloadConnectTests(TestCase):
    """A reload starts and stops reverse connections."""

    timeout = 60

    async def test_connect_added_and_removed(self) -> None:
        """A connect entry added by a reload is dialled and served over; removed, it is closed."""
        from rpcd.daemon.reverse import accept
        listener = await accept("tcp:0:interface=127.0.0.1", reactor=reactor)
        self.addCleanup(listener.close)
        port = listener.port.getHost().port
        config = Path(temp_dir(self)) / "rpcd.toml"
        config.write_text(_config(["tcp:0:interface=127.0.0.1"], ["Arith"]), "utf-8")
        daemon = await Daemon.start(self, "--config", str(config))
        config.write_text(_config(["tcp:0:interface=127.0.0.1"], ["Arith"],
                                  f'connect = ["tcp:127.0.0.1:{port}"]'), "utf-8")
        mark = len(daemon.output)
        os.kill(daemon.pid, signal.SIGHUP)
        client = await listener.next_client()
        self.addCleanup(client.close)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 3, "B": 3}), 9)
        await daemon.wait_for_log(rf"rpcd reload: server.connect tcp:127.0.0.1:{port} \(sniffed x1\) added",
                                  after=mark, timeout=30)
        config.write_text(_config(["tcp:0:interface=127.0.0.1"], ["Arith"]), "utf-8")
        mark = len(daemon.output)
        os.kill(daemon.pid, signal.SIGHUP)
        await daemon.wait_for_log(rf"server.connect tcp:127.0.0.1:{port} \(sniffed x1\) removed",
                                  after=mark, timeout=30)
        await client.channel.closed_d
