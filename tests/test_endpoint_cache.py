"""
Tests for L{rpcd.backend.ParsedEndpoints}: a balancer's endpoint strings are
parsed once, C{tls:} ones (which read files) in a thread; and end to end,
a balancer reconnecting to a restarted TLS daemon reuses what it read.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from rpcd import certs
from rpcd.backend import ParsedEndpoints
from rpcd.balancer import Balancer, connect_balanced
from rpcd.pickers import make_picker
from tests.daemon import Daemon, temp_dir
from tests.test_balancer_e2e import free_port
from tests.test_discovery_e2e import poll


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


class ParsedEndpointsTests(SynchronousTestCase):
    """Parsing each endpoint string once."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        certs.create_dev_pki(self.dir)
        self.threaded: list[Any] = []

    def in_thread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.threaded.append(args[0])
        return maybeDeferred(f, *args)

    def test_tls_parsed_once_in_a_thread(self) -> None:
        """A tls: string is parsed in the thread runner once; later gets return the same endpoint, TLS options included."""
        parsed = ParsedEndpoints(MemoryReactorClock(), self.in_thread)
        endpoint = f"tls:host=localhost:port=1:trustRoots={_escape(str(self.dir / 'ca.pem'))}"
        first = self.successResultOf(parsed.get(endpoint))
        (self.dir / "ca.pem").unlink()
        self.assertIs(self.successResultOf(parsed.get(endpoint)), first)
        self.assertEqual(self.threaded, [endpoint])

    def test_failed_parse_tried_again(self) -> None:
        """A tls: string whose trust file is missing fails, and is parsed again on the next get."""
        parsed = ParsedEndpoints(MemoryReactorClock(), self.in_thread)
        endpoint = f"tls:host=localhost:port=1:trustRoots={_escape(str(self.dir / 'nope.pem'))}"
        message = str(self.failureResultOf(parsed.get(endpoint), ValueError).value)
        self.assertIn("No such file or directory", message)
        self.failureResultOf(parsed.get(endpoint), ValueError)
        self.assertEqual(len(self.threaded), 2)

    def test_other_strings_and_objects(self) -> None:
        """Strings other than tls: are parsed without a thread; endpoint objects pass through."""
        parsed = ParsedEndpoints(MemoryReactorClock(), self.in_thread)
        tcp = self.successResultOf(parsed.get("tcp:127.0.0.1:1"))
        self.assertIs(self.successResultOf(parsed.get("tcp:127.0.0.1:1")), tcp)
        marker = object()
        self.assertIs(self.successResultOf(parsed.get(marker)), marker)
        self.failureResultOf(parsed.get("nonsense:1"), ValueError)
        self.assertEqual(self.threaded, [])

    def test_balancer_forgets_removed_endpoints(self) -> None:
        """Endpoints the balancer no longer uses are dropped from its parsed endpoints."""
        clock = MemoryReactorClock()
        parsed = ParsedEndpoints(clock, self.in_thread)
        balancer = Balancer(clock, lambda key: parsed.get(key).addCallback(lambda _: Deferred()),
                            picker=make_picker("round_robin"))
        balancer.parsed = parsed
        balancer.set_endpoints(["tcp:127.0.0.1:1", "tcp:127.0.0.1:2"])
        balancer.start()
        self.assertEqual(sorted(parsed.parsed), ["tcp:127.0.0.1:1", "tcp:127.0.0.1:2"])
        balancer.set_endpoints(["tcp:127.0.0.1:2"])
        self.assertEqual(sorted(parsed.parsed), ["tcp:127.0.0.1:2"])
        balancer.close()


class ReconnectTLSE2ETests(TestCase):
    """A balancer over a real TLS daemon."""

    timeout = 60

    async def test_reconnect_reuses_what_it_read(self) -> None:
        """After a TLS daemon restarts on its port, the balancer reconnects without reading its trust files again (they are gone by then)."""
        directory = Path(temp_dir(self))
        pki = directory / "pki"
        certs.create_dev_pki(pki)
        roots = directory / "roots"
        roots.mkdir()
        shutil.copy(pki / "ca.pem", roots / "ca.pem")
        port = free_port()
        listen = (f"rpcd-tls:{port}:interface=127.0.0.1:certKey={_escape(str(pki / 'server.pem'))}"
                  f":privateKey={_escape(str(pki / 'server.key'))}")
        daemon = await Daemon.start(self, "--listen", listen)
        endpoint = f"tls:host=localhost:port={port}:trustRoots={_escape(str(roots))}"
        balancer = await connect_balanced([endpoint], reactor=reactor,
                                          reconnect=lambda attempt: 0.2, default_timeout=10)
        self.addCleanup(balancer.close)
        self.assertEqual(await balancer.Arith.Multiply(A=6, B=7), 42)
        client = balancer.backends[0].client
        await daemon.stop()
        await client.closed
        shutil.rmtree(roots)
        await Daemon.start(self, "--listen", listen)
        # Each failed attempt makes when_ready fail at once: wait for the state.
        await poll("a new connection", lambda: balancer.backends[0].usable, 30)
        self.assertEqual(await balancer.Arith.Multiply(A=6, B=8), 48)
        self.assertIsNot(balancer.backends[0].client, client)
