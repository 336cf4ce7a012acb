"""
systemd's readiness protocol (C{sd_notify}): one datagram on the Unix
socket named by C{NOTIFY_SOCKET}, when it is set (a C{Type=notify} unit).

A few lines instead of a dependency; see C{etc/rpcd.core.service}.
"""

from __future__ import annotations

import os
import socket
from typing import Mapping

from twisted.logger import Logger

log = Logger()


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """
    Tell the service manager about a state change (C{READY=1},
    C{STOPPING=1}, C{STATUS=...}), if it listens.

    @param state: newline-separated C{KEY=VALUE} assignments.
    @param environ: the environment (C{os.environ} by default).
    @return: whether the message was sent (False without C{NOTIFY_SOCKET},
        or when sending failed, which is logged).
    """
    path = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as e:
        log.warn("cannot notify systemd on NOTIFY_SOCKET={path}: {error}", path=path, error=e)
        return False
    return True


__all__ = ["notify"]
