"""
End-to-end test of the C{dynamic_weight} balancing policy (seed 004, 4.3):
three real C{twistd -n rpcd} daemons on loopback, one answering slowly.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from rpcd.balancer import connect_balanced
from tests.daemon import Daemon, temp_dir


async def start_daemon(test: TestCase, name: str, delay: float) -> Daemon:
    """
    Start a daemon on a port from the OS, serving the C{Who} service named
    C{name} whose C{Slow} answers after C{delay} seconds.
    """
    path = Path(temp_dir(test)) / "rpcd.toml"
    path.write_text('[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
                    '[services.Who]\nclass = "tests.whoservice:Who"\n'
                    f'[services.Who.options]\nname = "{name}"\ndelay = {delay}\n')
    return await Daemon.start(test, "--config", str(path))


class DynamicWeightE2ETests(TestCase):
    """Balancing by observed latency over real daemons."""

    timeout = 120

    async def test_slow_daemon_gets_a_small_share(self) -> None:
        """Of 60 calls in turn, a daemon taking 1 s per call gets far fewer than the third round robin gives it."""
        delays = {"fast1": 0.0, "slow": 1.0, "fast2": 0.0}
        daemons = {name: await start_daemon(self, name, delay) for name, delay in delays.items()}
        balancer = await connect_balanced(
            [f"tcp:127.0.0.1:{daemons[name].port}" for name in delays], reactor=reactor,
            policy="dynamic_weight", health=None, default_timeout=30)
        self.addCleanup(balancer.close)
        await balancer.when_ready(30, at_least=3)
        answered = [await balancer.Who.Slow() for _ in range(60)]
        counts = Counter(answered)
        self.assertEqual(sum(counts.values()), 60)
        # Round robin would give it 20; once its first answer is in, its
        # weight is a tenth of a fast daemon's (about 3 calls of 60).
        self.assertLessEqual(counts["slow"], 10, counts)
        self.assertGreaterEqual(min(counts["fast1"], counts["fast2"]), 15, counts)
