"""
The daemons the tests fork (L{tests.forking}) against daemons started as new
interpreters, as from a shell: the same process as far as the daemon can
tell, the same output, and the same exit statuses.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from rpcd.client import connect
from tests.daemon import Daemon, temp_dir

CONFIG = """\
[server]
listen = ["tcp:0:interface=127.0.0.1"]
[services.ProcInfo]
class = "tests.procinfo:ProcInfo"
"""


class ForkedDaemonTests(TestCase):
    """A forked daemon is started, seen and stopped as an exec'ed one is."""

    timeout = 60

    async def info(self, fork: bool, directory: str) -> dict[str, Any]:
        config = Path(directory, "rpcd.toml")
        config.write_text(CONFIG)
        daemon = await Daemon.start(self, "--config", "rpcd.toml", cwd=directory, nofile=200,
                                    env={"RPCD_TEST_MARKER": "m"}, fork=fork)
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        info: dict[str, Any] = await client.ProcInfo.Info()
        self.assertEqual(await daemon.stop(), 0)
        return info

    async def test_same_process_as_exec(self) -> None:
        """Arguments, import path, directory, environment, open-files limit, open descriptors and reactor are the same."""
        directory = temp_dir(self)
        forked = await self.info(True, directory)
        execed = await self.info(False, directory)
        self.assertEqual(forked, execed)
        self.assertEqual(forked["argv"][0], "-c")
        self.assertEqual(forked["path_head"][0], "")
        self.assertEqual(forked["marker"], "m")
        self.assertEqual(forked["nofile"], 200)

    async def test_same_exit_status(self) -> None:
        """A refused config exits with the same status and message; SIGKILL ends both with no exit code."""
        directory = temp_dir(self)
        Path(directory, "bad.toml").write_text("[server]\nlisten = 3\n")
        endings = []
        for fork in (True, False):
            daemon = await Daemon.start(self, "--config", "bad.toml", cwd=directory, listeners=0,
                                        fork=fork)
            endings.append((await daemon.output_protocol.ended, daemon.output.splitlines()[-1]))
        self.assertEqual(endings[0], endings[1])
        self.assertNotEqual(endings[0][0], 0)
        for fork in (True, False):
            daemon = await Daemon.start(self, "--listen", "tcp:0:interface=127.0.0.1", fork=fork)
            daemon.process.signalProcess(signal.SIGKILL)
            self.assertIsNone(await daemon.output_protocol.ended)
