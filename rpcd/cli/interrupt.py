"""
Ctrl-C in the C{rpcd} command: stop at once with status 130 (128 + SIGINT,
what a shell reports for a program Ctrl-C stopped), printing nothing.

Without this the reactor's own SIGINT handler stops the reactor, the
connection drops under the running call or stream, and the command prints
an UNAVAILABLE error and exits 1, as though the server had failed.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

#: The exit status after Ctrl-C.
EXIT_INTERRUPTED = 130


def exit_on_interrupt() -> None:
    """
    From now on SIGINT flushes what was printed and exits 130.  Call it
    once the reactor runs (it replaces the reactor's handler).
    """
    signal.signal(signal.SIGINT, _interrupted)


def _interrupted(signum: int, frame: Any) -> None:
    for out in (sys.stdout, sys.stderr):
        try:
            out.flush()
        except Exception:
            pass  # a flush the signal interrupted: its bytes are lost either way
    # At once: the open connections close with the process, and nothing
    # unwinds through the call to print an error about it.
    os._exit(EXIT_INTERRUPTED)


__all__ = ["exit_on_interrupt", "EXIT_INTERRUPTED"]
