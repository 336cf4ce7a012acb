"""
A quicker interpreter exit for rpcd's own processes: the daemon, its
workers and the C{rpcd} command.

While Python exits it runs its cyclic garbage collector over every object
still alive, several times over as it tears the modules down: with Twisted,
cryptography and protobuf loaded that is a few hundred milliseconds (on a
small machine) spent freeing memory the operating system takes back anyway.
L{freeze_at_exit} moves every live object into the collector's permanent
generation when the exit begins (C{gc.freeze} as an C{atexit} handler), so
those passes skip them.

What still happens at exit: the C{atexit} handlers, the flush of the standard
streams, and the freeing of every object whose reference count drops to zero
as the modules are cleared (files closed, C{__del__} run).  What no longer
happens: objects kept alive only by a reference cycle are not collected, so
their C{__del__} does not run; rpcd closes what it opens without relying on
that.  Nothing changes before the exit begins, so a process that imports rpcd
(a test run, an application embedding it) collects garbage as before.
"""

from __future__ import annotations

import atexit
import gc

_registered = False


def freeze_at_exit() -> None:
    """
    Have the garbage collector skip every object alive when this process
    exits (once per process, however often it is called).
    """
    global _registered
    if not _registered:
        atexit.register(gc.freeze)
        _registered = True


__all__ = ["freeze_at_exit"]
