"""
A service that describes the process serving it, for comparing a daemon
forked by the tests' fork server with one started as a new interpreter
(L{tests.test_forked_daemon}): C{[services.ProcInfo] class =
"tests.procinfo:ProcInfo"}.
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Any

from rpcd.service import exposed


class ProcInfo:
    """Says what the process was started with."""

    @exposed
    def Info(self) -> dict[str, Any]:
        """The process's arguments, import path head, directory, environment marker, limits, descriptors, reactor and main module."""
        return {
            "argv": sys.argv,
            "path_head": sys.path[:2],
            "cwd": os.getcwd(),
            "marker": os.environ.get("RPCD_TEST_MARKER"),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
            "reactor": type(sys.modules["twisted.internet.reactor"]).__name__,
            "main": getattr(sys.modules["__main__"], "__file__", None),
        }
