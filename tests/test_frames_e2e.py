"""
End to end with the real daemon: the bad native frames of issue 8 (timeouts
of -1, NaN or a string; CANCEL, MESSAGE, END and CREDIT with a list as the
id) sent over a raw socket, and the client library given a negative timeout.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from rpcd.client import connect
from rpcd.errors import Code
from rpcd.wire.frames import PREFACE, FrameReader, encode_frame
from tests.daemon import Daemon

LOOPBACK = ("--listen", "tcp:0:interface=127.0.0.1")


class RawNative(Protocol):
    """A hand-driven native client: sends raw frames, collects the server's."""

    def __init__(self) -> None:
        self.reader = FrameReader()
        self.preface = b""
        self.frames: list[list[Any]] = []
        self.closed: Deferred[None] = Deferred()
        self._waiters: list[tuple[Callable[[list[list[Any]]], bool], Deferred[None]]] = []

    def connectionMade(self) -> None:
        self.transport.write(PREFACE)

    def send(self, *bodies: list[Any]) -> None:
        """Write frames, all in one write."""
        self.transport.write(b"".join(encode_frame(body) for body in bodies))

    def dataReceived(self, data: bytes) -> None:
        if len(self.preface) < len(PREFACE):
            need = len(PREFACE) - len(self.preface)
            self.preface += data[:need]
            data = data[need:]
        self.frames.extend(self.reader.feed(data))
        for waiter in list(self._waiters):
            if waiter[0](self.frames):
                self._waiters.remove(waiter)
                waiter[1].callback(None)

    def wait(self, done: Callable[[list[list[Any]]], bool]) -> Deferred[None]:
        """A Deferred firing once the frames received so far satisfy C{done}."""
        d: Deferred[None] = Deferred()
        if done(self.frames):
            d.callback(None)
        else:
            self._waiters.append((done, d))
        return d.addTimeout(10, reactor)

    def reply(self, call_id: int) -> list[Any]:
        """The RESULT or ERROR for a call id."""
        [found] = [f for f in self.frames if f[0] in (1, 2) and f[1] == call_id]
        return found

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(None)


def answered(*ids: int) -> Callable[[list[list[Any]]], bool]:
    return lambda frames: set(ids) <= {f[1] for f in frames if f[0] in (1, 2)}


class BadFramesTests(TestCase):
    """The daemon answers bad frames without a traceback and keeps the other calls."""

    timeout = 60

    async def connect_raw(self, daemon: Daemon) -> RawNative:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port, timeout=10)
        peer = await connectProtocol(endpoint, RawNative())
        self.addCleanup(lambda: peer.transport.abortConnection() if peer.transport.connected else None)
        return peer

    async def test_bad_fields_fail_only_their_calls(self) -> None:
        """Bad timeouts, metadata and stream frames fail their own calls; the others are answered."""
        daemon = await Daemon.shared(self, *LOOPBACK)
        mark = len(daemon.output)
        peer = await self.connect_raw(daemon)
        watch = [0, 1, "KVStoreService.Watch", 60]
        peer.send(watch,
                  [0, 2, "KVStoreService.Watch", 60, {"timeout": -1}],
                  [0, 3, "KVStoreService.Watch", 60, {"timeout": float("nan")}],
                  [0, 4, "KVStoreService.Watch", 60, {"timeout": "soon"}],
                  [0, 5, "KVStoreService.Watch", 60, {"timeout": 1e12}],
                  [0, 6, "KVStoreService.Watch", 60, {"metadata": ["not", "a", "map"]}],
                  [0, 7, 42, None],
                  [4, 99, "x"], [5, 99], [6, 99, 0],
                  [0, 8, "Arith.Multiply", {"A": 6, "B": 7}])
        await peer.wait(answered(2, 3, 4, 5, 6, 7, 8))
        self.assertEqual(peer.reply(2), [2, 2, Code.INVALID_ARGUMENT,
                                         "CALL 2: options.timeout must be a non-negative number "
                                         "of seconds, got -1", None])
        for call_id, why in [(3, "got nan"), (4, "got 'soon'"), (5, "at most 604800 seconds"),
                             (6, "options.metadata must be a map"), (7, "method must be a string")]:
            reply = peer.reply(call_id)
            self.assertEqual(reply[:3], [2, call_id, Code.INVALID_ARGUMENT])
            self.assertIn(why, reply[3])
        self.assertEqual(peer.reply(8), [1, 8, 42])
        peer.send([3, 1])  # the first call is still running: cancel it
        await peer.wait(answered(1))
        self.assertEqual(peer.reply(1)[:3], [2, 1, Code.CANCELLED])
        peer.send([0, 9, "Arith.Multiply", {"A": 2, "B": 2}])
        await peer.wait(answered(9))
        self.assertEqual(peer.reply(9), [1, 9, 4])
        self.assertNotIn("Traceback", daemon.output[mark:])
        self.assertNotIn("Unhandled", daemon.output[mark:])

    async def test_unreadable_ids_goaway(self) -> None:
        """CANCEL, MESSAGE, END or CREDIT with a list id gets a GOAWAY saying why, no traceback."""
        daemon = await Daemon.shared(self, *LOOPBACK)
        start = len(daemon.output)
        for bad, name in [([3, [1]], "CANCEL"), ([4, [1], 2], "MESSAGE"), ([5, [1]], "END"),
                          ([6, [1], 1], "CREDIT")]:
            peer = await self.connect_raw(daemon)
            mark = len(daemon.output)
            peer.send([0, 1, "Arith.Multiply", {"A": 3, "B": 3}], bad)
            await peer.closed
            self.assertEqual(peer.frames[0], [1, 1, 9])
            self.assertEqual(peer.frames[1][:3], [9, 0, Code.INVALID_ARGUMENT])
            self.assertEqual(peer.frames[1][3], f"protocol error: {name} id must be an integer "
                                                "from 0 to 2^63-1, got [1]")
            await daemon.wait_for_log(rf"closing connection from .*{name} id must be", after=mark,
                                      timeout=10)
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        self.assertEqual(await client.Arith.Multiply(A=5, B=5), 25)
        self.assertNotIn("Traceback", daemon.output[start:])

    async def test_client_negative_timeout(self) -> None:
        """The client library raises at once for timeout=-0.001, and its connection still works."""
        daemon = await Daemon.shared(self, *LOOPBACK)
        mark = len(daemon.output)
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        pending = client.call("KVStoreService.Watch", 60)
        with self.assertRaises(ValueError) as caught:
            client.call("Arith.Multiply", {"A": 1, "B": 2}, timeout=-0.001)
        self.assertIn("timeout must be a non-negative number of seconds, got -0.001",
                      str(caught.exception))
        self.assertRaises(TypeError, client.call, "Arith.Multiply", {"A": 1, "B": 2}, timeout="1")
        self.assertEqual(await client.call("Arith.Multiply", {"A": 7, "B": 8}, timeout=5), 56)
        self.assertFalse(pending.called)
        pending.cancel()
        self.failureResultOf(pending, CancelledError)
        self.assertNotIn("Traceback", daemon.output[mark:])
