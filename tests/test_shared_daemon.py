"""
L{tests.daemon.Daemon.shared}: one daemon for the tests that ask for the same
arguments.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from rpcd.client import connect
import tests.daemon as daemon_module
from tests.daemon import Daemon, shared_config

CONFIG = '[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\n[services.Arith]\n'


class SharedDaemonTests(TestCase):
    """The shared daemon is started once, answers, and cannot be stopped by a test."""

    timeout = 60

    async def test_same_daemon_for_same_arguments(self) -> None:
        """Two requests at once get one listening daemon, which answers calls and refuses stop()."""
        one, two = await gatherResults([
            Deferred.fromCoroutine(Daemon.shared(self, "--config", shared_config(CONFIG))),
            Deferred.fromCoroutine(Daemon.shared(self, "--config", shared_config(CONFIG)))])
        self.assertIs(one, two)
        self.assertEqual(len(one.ports), 1)
        again = await Daemon.shared(self, "--config", shared_config(CONFIG))
        self.assertIs(again, one)
        client = await connect(f"tcp:127.0.0.1:{one.port}")
        self.addCleanup(client.close)
        self.assertEqual(await client.Arith.Multiply(A=6, B=7), 42)
        with self.assertRaises(AssertionError):
            await one.stop()
        self.assertTrue(one.running)

    async def test_failed_start_reported(self) -> None:
        """A shared daemon that cannot start fails the test with its output, and is not kept."""
        with self.assertRaises(AssertionError) as caught:
            await Daemon.shared(self, "--listen", "nope:0")
        self.assertIn("process ended", str(caught.exception))
        self.assertNotIn((("--listen", "nope:0"), 1), daemon_module._SHARED)
