"""
The C allocator's mmap threshold is pinned in rpcd's daemon processes
(L{rpcd.core.mallocopts}).
"""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from rpcd.core.mallocopts import pin_mmap_threshold
from tests.daemon import ROOT, environment


def _glibc() -> bool:
    return sys.platform.startswith("linux") and "libc.so" in (ctypes.util.find_library("c") or "")


class PinTests(SynchronousTestCase):
    """pin_mmap_threshold sets glibc's threshold, once."""

    def test_pinned_on_glibc(self) -> None:
        """On glibc the threshold is pinned, and asking again says so without calling mallopt twice."""
        if not _glibc():
            raise SkipTest("not glibc: mallopt is not there to pin")
        self.assertTrue(pin_mmap_threshold())
        self.assertTrue(pin_mmap_threshold())

    def test_large_blocks_returned(self) -> None:
        """With the threshold pinned, a large block freed after another large one is freed goes back to the system (RSS falls), as it would not from the heap."""
        if not _glibc():
            raise SkipTest("not glibc: mallopt is not there to pin")
        script = (
            "import sys\n"
            "from rpcd.core.mallocopts import pin_mmap_threshold\n"
            "pinned = sys.argv[1] == 'pin'\n"
            "if pinned: pin_mmap_threshold()\n"
            "def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
            "big = bytearray(8 << 20); del big\n"          # raises glibc's dynamic threshold
            "blocks = [bytearray(1 << 20) for _ in range(64)]\n"
            "held = rss()\n"
            "del blocks[:63]\n"                            # the last one keeps the heap top in use
            "print(held - rss())\n"
        )
        freed = {}
        for mode in ("pin", "default"):
            done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                                  cwd=str(ROOT), env=environment(), timeout=120)
            self.assertEqual(done.returncode, 0, done.stderr)
            freed[mode] = int(done.stdout.strip())
        self.assertGreater(freed["pin"], 48 << 20, freed)
        self.assertLess(freed["default"], freed["pin"], freed)
