"""
The real daemon notices a native peer that closed its socket with a long
poll running, and keeps serving one that only shut down its sending side
(C{[limits] half_close_check_interval}, L{rpcd.server.goneprobe}).
"""

from __future__ import annotations

import re
import socket

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from rpcd.client import connect
from rpcd.wire.frames import PREFACE, RESULT, FrameReader, encode_frame
from tests.daemon import Daemon

LOOPBACK = ("--listen", "tcp:0:interface=127.0.0.1")


def _watch(port: int, call_id: int) -> socket.socket:
    """
    @return: a raw socket that has sent the preface and a native call of
        C{KVStoreService.Watch} (a 10-minute long poll).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(PREFACE + encode_frame([0, call_id, "KVStoreService.Watch", 600]))
    return sock


def _read_to_end(sock: socket.socket) -> bytes:
    """
    In a thread: read until the daemon closes the connection.
    """
    received = b""
    while data := sock.recv(65536):
        received += data
    return received


class GonePeerTests(TestCase):
    """A long poll whose caller closed its socket ends at once; one whose caller half-closed is answered."""

    timeout = 60

    async def test_closed_caller_noticed_half_closed_answered(self) -> None:
        """The daemon closes the connection of a caller that closed its socket mid-Watch, and still answers one that only half-closed."""
        daemon = await Daemon.start(self, *LOOPBACK)
        half = _watch(daemon.port, 1)
        self.addCleanup(half.close)
        half.shutdown(socket.SHUT_WR)
        answer = deferToThread(_read_to_end, half)

        mark = len(daemon.output)
        gone = _watch(daemon.port, 2)
        gone_port = gone.getsockname()[1]
        gone.close()
        line = await daemon.wait_for_log(
            rf"closing 127\.0\.0\.1:{gone_port}: the peer closed its socket", after=mark)
        self.assertTrue(line.group(0))

        # The half-closed caller, probed as long, is still there for its answer.
        self.assertFalse(answer.called)
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        await client.call("KVStoreService.Set", ["abc", "changed"])
        received = await answer
        frames, error = FrameReader().split(received[len(PREFACE):])
        self.assertIsNone(error)
        self.assertIn([RESULT, 1, "abc"], [list(f[:3]) for f in frames if f[0] == RESULT])
        self.assertIsNone(re.search(rf"closing 127\.0\.0\.1:{half.getsockname()[1]}: ", daemon.output))
