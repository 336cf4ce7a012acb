"""
End-to-end tests of reloading the real daemon's config on SIGHUP: a service
added and a TLS certificate rotated while a stream stays open, a bad config
refused while the old one keeps serving, a listener removed.
"""

from __future__ import annotations

import os
import signal
import ssl
from pathlib import Path

from cryptography import x509
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from rpcd import certs
from rpcd.client import connect
from rpcd.errors import Unimplemented
from tests.daemon import Daemon, temp_dir


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
        await self.hup(daemon, r"rpcd reload: TLS certificate changed")

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
        self.assertIn(str(self.config), daemon.output.splitlines()[-1])
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 2, "B": 3}), 6)
        self.assertTrue(daemon.running)

    async def test_remove_listener(self) -> None:
        """A removed listener stops accepting while a connection it accepted goes on."""
        unix = str(self.dir / "rpcd.sock")
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
