"""
Tests for L{rpcd.client.blocking}, the blocking client's own socket IO:
its logic against a server-side L{NativeConnection} at the other end of a
socketpair (the test thread plays the server; calls run in threads), and
L{rpcd.client.BlockingClient} end to end against the real daemon.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from rpcd.certs import create_dev_pki
from rpcd.client import BlockingClient
from rpcd.client.blocking import Connection, DirectClient, NotSent
from rpcd.client.plainsocket import direct_address
from rpcd.errors import (
    ConnectionLost,
    DeadlineExceeded,
    EncodeError,
    Internal,
    NotFound,
    NotRun,
    Unavailable,
)
from rpcd.wire.connection import (
    CALL,
    CANCEL,
    ERROR,
    GOAWAY,
    PONG,
    PREFACE_RECEIVED,
    RESULT,
    NativeConnection,
)
from tests.daemon import Daemon, socket_path, temp_dir

#: Seconds a test waits for a thread or a socket before it fails (a guard
#: against a hang, never a synchronisation).
HANG = 20.0


class Outcome:
    """
    A function run in a thread of its own; L{result} joins it.
    """

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        self._box: list[tuple[Any, BaseException | None]] = []
        self._thread = threading.Thread(target=self._run, args=(function, args), daemon=True)
        self._thread.start()

    def _run(self, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._box.append((function(*args), None))
        except BaseException as e:
            self._box.append((None, e))

    def result(self) -> Any:
        """
        @return: the function's value.
        @raise BaseException: its exception.
        """
        self._thread.join(HANG)
        if not self._box:
            raise AssertionError("the thread did not finish")
        value, error = self._box[0]
        if error is not None:
            raise error
        return value


class Peer:
    """
    The server's end of a socketpair, driven by the test thread.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(HANG)
        self.sock = sock
        self.conn = NativeConnection(client_side=False)
        self.conn.initiate_connection()
        self.events: list[Any] = []

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def read(self, n: int) -> list[Any]:
        """
        @return: the next C{n} events from the client (its preface aside).
        """
        while len(self.events) < n:
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"the client closed; events so far: {self.events}")
            self.events.extend(e for e in self.conn.receive_data(data)
                               if e[0] != PREFACE_RECEIVED)
        taken, self.events = self.events[:n], self.events[n:]
        return taken

    def calls(self, n: int) -> list[Any]:
        """
        @return: the next C{n} events, each checked to be a CALL.
        """
        events = self.read(n)
        for event in events:
            if event[0] != CALL:
                raise AssertionError(f"expected CALLs, got {events}")
        return events


def connected() -> tuple[Connection, Peer]:
    """
    @return: a client L{Connection} past its handshake, and the server's end.
    """
    ours, theirs = socket.socketpair()
    conn = NativeConnection(client_side=True)
    conn.initiate_connection()
    ours.sendall(conn.data_to_send())
    peer = Peer(theirs)
    peer.flush()
    connection = Connection(ours, conn, "the server")
    connection.handshake(time.monotonic() + HANG, "the test's socketpair", HANG)
    return connection, peer


class ConnectionTests(SynchronousTestCase):
    """One connection's calls, replies, errors and end, against a peer."""

    def setUp(self) -> None:
        self.connection, self.peer = connected()
        self.addCleanup(self.peer.sock.close)
        self.addCleanup(self.connection.close)

    def call(self, method: str, args: Any = None, timeout: float | None = None,
             metadata: dict[str, Any] | None = None) -> Outcome:
        deadline = None if timeout is None else time.monotonic() + timeout
        return Outcome(self.connection.call, method, args, timeout, metadata, deadline)

    def test_result(self) -> None:
        """A call sends its CALL, with its timeout and metadata, and returns the RESULT's value."""
        outcome = self.call("Arith.Multiply", {"A": 7, "B": 8}, timeout=30.0,
                            metadata={"k": "v"})
        [event] = self.peer.calls(1)
        self.assertEqual(event[1:4], [1, "Arith.Multiply", {"A": 7, "B": 8}])
        self.assertEqual((event[4].timeout, event[4].metadata), (30.0, {"k": "v"}))
        self.peer.conn.send_result(event[1], 56)
        self.peer.flush()
        self.assertEqual(outcome.result(), 56)
        self.assertEqual(self.connection.pending, {})
        self.assertFalse(self.connection.reading)

    def test_remote_error(self) -> None:
        """An ERROR raises the RPCError subclass of its code, with its message."""
        outcome = self.call("KV.Get", "x")
        [event] = self.peer.calls(1)
        self.peer.conn.send_error(event[1], 5, "no such key")
        self.peer.flush()
        error = self.assertRaises(NotFound, outcome.result)
        self.assertEqual(error.message, "no such key")

    def test_threads_share_one_connection(self) -> None:
        """Calls from several threads are all in flight at once, and each gets its own reply, in any order."""
        outcomes = [self.call("Arith.Multiply", {"A": k, "B": 3}) for k in range(6)]
        events = self.peer.calls(6)
        self.assertEqual(sorted(e[1] for e in events), [1, 2, 3, 4, 5, 6])
        for event in reversed(events):
            self.peer.conn.send_result(event[1], event[3]["A"] * 3)
        self.peer.flush()
        self.assertEqual([o.result() for o in outcomes], [k * 3 for k in range(6)])
        self.assertEqual(self.connection.pending, {})

    def test_replies_one_by_one(self) -> None:
        """Replies sent one write at a time reach their threads, whichever thread reads them."""
        outcomes = [self.call("Arith.Multiply", {"A": k, "B": 3}) for k in range(4)]
        events = self.peer.calls(4)
        for event in events:
            self.peer.conn.send_result(event[1], event[3]["A"] * 3)
            self.peer.flush()
        self.assertEqual([o.result() for o in outcomes], [k * 3 for k in range(4)])

    def test_timeout(self) -> None:
        """A call not answered in time raises DeadlineExceeded and sends a CANCEL; the connection goes on."""
        outcome = self.call("KV.Watch", 30, timeout=0.05)
        [event] = self.peer.calls(1)
        error = self.assertRaises(DeadlineExceeded, outcome.result)
        self.assertEqual(str(error), "KV.Watch did not answer within 0.05 s "
                                     "(cancelled on the server)")
        self.assertEqual(self.peer.read(1), [[CANCEL, event[1]]])
        self.peer.conn.send_result(event[1], "late")  # crossed the CANCEL: dropped
        self.peer.flush()
        outcome = self.call("Arith.Multiply", {"A": 1, "B": 2})
        [event] = self.peer.calls(1)
        self.peer.conn.send_result(event[1], 2)
        self.peer.flush()
        self.assertEqual(outcome.result(), 2)

    def test_follower_timeout(self) -> None:
        """A thread that times out while another reads gives up alone; the other still gets its reply."""
        slow = self.call("KV.Watch", 30)
        self.peer.calls(1)
        quick = self.call("KV.Watch", 30, timeout=0.05)
        [event] = self.peer.calls(1)
        self.assertRaises(DeadlineExceeded, quick.result)
        self.assertEqual(self.peer.read(1), [[CANCEL, event[1]]])
        self.peer.conn.send_result(1, "changed")
        self.peer.flush()
        self.assertEqual(slow.result(), "changed")

    def test_lost_mid_call(self) -> None:
        """Every thread waiting when the server closes gets the same ConnectionLost; later calls are refused."""
        outcomes = [self.call("KV.Watch", 30) for _ in range(3)]
        self.peer.calls(3)
        self.peer.sock.close()
        errors = [self.assertRaises(ConnectionLost, o.result) for o in outcomes]
        self.assertEqual({str(e) for e in errors},
                         {"connection to the server lost before the call was answered: "
                          "Connection was closed cleanly."})
        error = self.assertRaises(ConnectionLost, self.call("Arith.Multiply", 1).result)
        self.assertEqual(str(error), "connection to the server is closed; cannot call "
                                     "Arith.Multiply")
        self.assertTrue(self.connection.sock._closed)  # type: ignore[attr-defined]

    def test_interrupted(self) -> None:
        """A call interrupted while it reads (Ctrl-C) is given up with a CANCEL, and the next call reads again."""

        class Interrupting:
            def __init__(self, poller: Any) -> None:
                self.poller = poller
                self.interrupts = 1

            def poll(self, *args: Any) -> Any:
                if args != (0,) and self.interrupts:
                    self.interrupts -= 1
                    raise KeyboardInterrupt()
                return self.poller.poll(*args)
        self.connection._readable = Interrupting(self.connection._readable)  # type: ignore[assignment]
        self.assertRaises(KeyboardInterrupt, self.call("KV.Watch", 30).result)
        self.assertEqual((self.connection.pending, self.connection.reading), ({}, False))
        outcome = self.call("Arith.Multiply", 1)
        call, cancel, second = self.peer.read(3)
        self.assertEqual((call[1], cancel, second[1]), (1, [CANCEL, 1], 2))
        self.peer.conn.send_result(2, 1)
        self.peer.flush()
        self.assertEqual(outcome.result(), 1)

    def test_close_mid_call(self) -> None:
        """close() fails the calls in flight with ConnectionLost and closes the socket."""
        outcomes = [self.call("KV.Watch", 30) for _ in range(2)]
        self.peer.calls(2)
        self.connection.close()
        for outcome in outcomes:
            self.assertRaises(ConnectionLost, outcome.result)
        self.assertEqual(self.peer.sock.recv(10), b"")
        self.assertTrue(self.connection.sock._closed)  # type: ignore[attr-defined]

    def lead(self) -> Outcome:
        """
        @return: a call (C{KV.Watch}, its CALL read by the peer) whose
            thread has written it and now reads as the leader: a call made
            after it is written by its own thread.
        """
        leading = threading.Event()
        readable = self.connection._readable

        class Signalling:
            def poll(self, *args: Any) -> Any:
                if args != (0,):  # not a look while idle
                    leading.set()
                return readable.poll(*args)
        self.connection._readable = Signalling()  # type: ignore[assignment]
        outcome = self.call("KV.Watch", 30)
        self.assertTrue(leading.wait(HANG))
        self.connection._readable = readable
        return outcome

    def test_writer_reads_a_late_reply(self) -> None:
        """A thread blocked writing a large call reads meanwhile, so a large late reply that nobody waits for cannot deadlock both ends."""
        self.assertRaises(DeadlineExceeded, self.call("Big.Slow", None, timeout=0.01).result)
        [slow] = self.peer.calls(1)
        big = "x" * (2 * 1024 * 1024)  # more than both sockets' buffers hold
        outcome = self.call("Big.Echo", big)
        # The server writes a reply as large before it reads on (its write
        # buffer over the cap): it ends only if the client reads it.
        self.peer.conn.send_result(slow[1], big)
        self.peer.flush()
        [cancel, event] = self.peer.read(2)
        self.assertEqual((cancel, event[2], len(event[3])), ([CANCEL, slow[1]], "Big.Echo", len(big)))
        self.peer.conn.send_result(event[1], len(event[3]))
        self.peer.flush()
        self.assertEqual(outcome.result(), len(big))

    def test_leader_reads_while_writing(self) -> None:
        """A thread handed the lead while it is blocked writing a large call reads while the socket takes no more."""
        first = self.lead()
        [event] = self.peer.calls(1)
        big = "x" * (2 * 1024 * 1024)
        writer = self.call("Big.Echo", big)
        # Some of its bytes: the writer's call is in flight, and it writes.
        self.peer.events.extend(self.peer.conn.receive_data(self.peer.sock.recv(65536)))
        self.peer.conn.send_result(event[1], "k")
        self.peer.flush()
        self.assertEqual(first.result(), "k")  # the lead is now the writer's
        self.peer.conn.send_result(99, big)  # a large frame for no call: read and dropped
        self.peer.flush()
        [call] = self.peer.calls(1)
        self.assertEqual(len(call[3]), len(big))
        self.peer.conn.send_result(call[1], "echoed")
        self.peer.flush()
        self.assertEqual(writer.result(), "echoed")

    def test_interrupted_leading_writer(self) -> None:
        """A thread interrupted while it writes and holds the lead leaves nobody reading, and the lost connection's socket is closed."""

        connection = self.connection

        class Interrupting:
            """Ctrl-C once the writer is the only call left, and leads."""

            def __init__(self, poller: Any) -> None:
                self.poller = poller

            def poll(self, *args: Any) -> Any:
                waiters = list(connection.pending.values())
                if len(waiters) == 1 and waiters[0].lead:
                    raise KeyboardInterrupt()
                return self.poller.poll(*args)
        connection._either = Interrupting(connection._either)  # type: ignore[assignment]
        first = self.lead()
        [event] = self.peer.calls(1)
        writer = self.call("Big.Echo", "x" * (2 * 1024 * 1024))
        self.peer.events.extend(self.peer.conn.receive_data(self.peer.sock.recv(65536)))
        self.peer.conn.send_result(event[1], "k")
        self.peer.flush()
        self.assertEqual(first.result(), "k")  # the lead is now the writer's
        self.assertRaises(KeyboardInterrupt, writer.result)
        self.assertEqual((self.connection.pending, self.connection.reading,
                          self.connection.writing), ({}, False, False))
        self.assertTrue(self.connection.sock._closed)  # type: ignore[attr-defined]

    def test_ping_answered_during_a_call(self) -> None:
        """A PING that comes while a call waits is answered at once."""
        outcome = self.call("KV.Watch", 30)
        [event] = self.peer.calls(1)
        self.peer.conn.send_ping(7)
        self.peer.flush()
        self.assertEqual(self.peer.read(1), [(PONG, 7)])
        self.peer.conn.send_result(event[1], "k")
        self.peer.flush()
        self.assertEqual(outcome.result(), "k")

    def test_ping_answered_when_idle(self) -> None:
        """A PING that came while no call was in flight is answered before the next call is sent."""
        self.peer.conn.send_ping(9)
        self.peer.flush()
        outcome = self.call("Arith.Multiply", 1)
        pong, call = self.peer.read(2)
        self.assertEqual((pong, call[0]), ((PONG, 9), CALL))
        self.peer.conn.send_result(call[1], 1)
        self.peer.flush()
        self.assertEqual(outcome.result(), 1)
        self.assertFalse(self.connection.dropped_idle)

    def test_dropped_after_idle_ping(self) -> None:
        """A server that dropped the idle connection after an unanswered PING marks it for a new dial."""
        self.peer.conn.send_ping(1)
        self.peer.flush()
        self.peer.sock.shutdown(socket.SHUT_WR)
        self.assertRaises(ConnectionLost, self.call("Arith.Multiply", 1).result)
        self.assertTrue(self.connection.dropped_idle)

    def test_graceful_goaway(self) -> None:
        """A graceful GOAWAY fails the calls after its last_id with NotRun; those before are answered; new calls are not sent."""
        first = self.call("KV.Watch", 30)
        self.peer.calls(1)
        second = self.call("KV.Watch", 30)
        self.peer.calls(1)
        self.peer.conn.drain(1, "draining")
        self.peer.flush()
        error = self.assertRaises(NotRun, second.result)
        self.assertEqual(str(error), "the server went away before running call 2 (draining)")
        self.assertEqual(self.connection.going_away, "draining")
        error = self.assertRaises(NotSent, self.call("Arith.Multiply", 1).result)
        self.assertEqual(str(error), "the server is going away (draining); Arith.Multiply "
                                     "was not sent")
        self.peer.conn.send_result(1, "done")
        self.peer.flush()
        self.assertEqual(first.result(), "done")

    def test_send_fails_after_goaway(self) -> None:
        """A send the gone server refuses leaves the end to the reading, which finds its GOAWAY first: the call was not run."""
        self.peer.conn.drain(0, "bye")
        self.peer.flush()
        self.peer.sock.close()
        # As when the GOAWAY comes just after the call's look at the socket:
        self.connection._read_idle = lambda: None  # type: ignore[method-assign]
        error = self.assertRaises(NotRun, self.call("Arith.Multiply", 1).result)
        self.assertEqual(str(error), "the server went away before running call 1 (bye)")
        self.assertTrue(self.connection.write_failed)

    def test_gone_after_goaway(self) -> None:
        """A connection that went away gracefully and then closed refuses calls as going away (sent on a new one), not as lost."""
        self.peer.conn.drain(0, "bye")
        self.peer.flush()
        self.peer.sock.close()
        self.assertRaises(NotSent, self.call("Arith.Multiply", 1).result)
        self.assertEqual(self.connection.going_away, "bye")
        self.assertIsNotNone(self.connection.lost)

    def test_fatal_goaway(self) -> None:
        """A fatal GOAWAY fails every call with Unavailable naming its message, and closes."""
        outcomes = [self.call("KV.Watch", 30) for _ in range(2)]
        self.peer.calls(2)
        self.peer.conn.close(8, "too many pings")
        self.peer.flush()
        for outcome in outcomes:
            error = self.assertRaises(Unavailable, outcome.result)
            self.assertNotIsInstance(error, ConnectionLost)
            self.assertEqual(str(error), "the server: too many pings")
        self.assertRaises(ConnectionLost, self.call("Arith.Multiply", 1).result)

    def test_protocol_error(self) -> None:
        """Bytes that break the protocol fail every call with Unavailable, and the server gets a GOAWAY saying why."""
        outcome = self.call("KV.Watch", 30)
        self.peer.calls(1)
        self.peer.sock.sendall(b"\x00\x00\x00\x01\xc1")  # a frame whose body is not a list
        error = self.assertRaises(Unavailable, outcome.result)
        self.assertIn("bad frame from the server", str(error))
        [goaway] = self.peer.read(1)
        self.assertEqual((goaway[0], goaway[2]), (GOAWAY, 3))
        self.assertIn("protocol error", goaway[3])

    def test_bad_result_frame(self) -> None:
        """A RESULT without its value fails that call alone with Internal."""
        outcome = self.call("Arith.Multiply", 1)
        [event] = self.peer.calls(1)
        self.peer.conn._queue([RESULT, event[1]])
        self.peer.flush()
        error = self.assertRaises(Internal, outcome.result)
        self.assertIn("bad RESULT frame from the server for call 1", str(error))

    def test_encode_error(self) -> None:
        """An argument msgpack cannot encode raises EncodeError; nothing is sent and the connection goes on."""
        error = self.assertRaises(EncodeError, self.call("Arith.Multiply", object()).result)
        self.assertIn("cannot send Arith.Multiply: the native codec cannot encode", str(error))
        outcome = self.call("Arith.Multiply", 1)
        [event] = self.peer.calls(1)
        self.peer.conn.send_result(event[1], 1)
        self.peer.flush()
        self.assertEqual(outcome.result(), 1)

    def test_error_frame_for_unknown_call(self) -> None:
        """An ERROR for a call nobody waits for is dropped."""
        self.peer.conn.send_error(99, 5, "gone")
        self.peer.flush()
        outcome = self.call("Arith.Multiply", 1)
        [event] = self.peer.calls(1)
        self.peer.conn.send_result(event[1], 1)
        self.peer.flush()
        self.assertEqual(outcome.result(), 1)
        self.assertNotIn(ERROR, [e[0] for e in self.peer.events])


class HandshakeTests(SynchronousTestCase):
    """Connecting: the server's preface, or why there is none."""

    def handshake(self, serve: Callable[[socket.socket], None]) -> BaseException:
        ours, theirs = socket.socketpair()
        self.addCleanup(theirs.close)
        conn = NativeConnection(client_side=True)
        conn.initiate_connection()
        serve(theirs)
        connection = Connection(ours, conn, "the server")
        try:
            connection.handshake(time.monotonic() + HANG, "the test's socketpair", HANG)
        except BaseException as e:
            self.assertTrue(ours._closed)  # type: ignore[attr-defined]
            return e
        raise AssertionError("the handshake succeeded")

    def test_closed_without_a_word(self) -> None:
        """A server that closes without sending anything may want TLS: the error says so."""
        error = self.handshake(lambda sock: sock.shutdown(socket.SHUT_WR))
        self.assertIsInstance(error, ConnectionLost)
        self.assertEqual(str(error), "connection to the server closed during the handshake: "
                                     "the server closed the connection without a word "
                                     "(Connection was closed cleanly.): it may expect TLS on "
                                     "this port (use a tls: endpoint), or not be an rpcd server")

    def test_not_rpcd(self) -> None:
        """A server that answers with something else than a preface is left, with a GOAWAY."""
        error = self.handshake(lambda sock: sock.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n"))
        self.assertIsInstance(error, ConnectionLost)
        self.assertEqual(str(error), "connection to the server closed during the handshake: "
                                     "Connection was closed cleanly.")

    def test_no_preface_in_time(self) -> None:
        """No preface by the deadline raises Unavailable naming the endpoint."""
        ours, theirs = socket.socketpair()
        self.addCleanup(theirs.close)
        conn = NativeConnection(client_side=True)
        connection = Connection(ours, conn, "the server")
        error = self.assertRaises(Unavailable, connection.handshake, time.monotonic() + 0.05,
                                  "tcp:here:1", 0.05)
        self.assertEqual(str(error), "no native connection to tcp:here:1 within 0.05 s "
                                     "(is the server up, and does it speak this protocol?)")


class AddressTests(SynchronousTestCase):
    """Which endpoint strings the direct path dials itself."""

    def test_tcp(self) -> None:
        """tcp:HOST:PORT, named or not, with timeout=; IPv6 hosts with escaped colons."""
        address = direct_address("tcp:127.0.0.1:1234")
        assert address is not None
        self.assertEqual((address.family, address.host, address.port, address.timeout),
                         (socket.AF_INET, "127.0.0.1", 1234, None))
        address = direct_address("tcp:host=localhost:port=99:timeout=5")
        assert address is not None
        self.assertEqual((address.host, address.port, address.timeout), ("localhost", 99, 5.0))
        address = direct_address("tcp:\\:\\:1:80")
        assert address is not None
        self.assertEqual((address.family, address.host), (socket.AF_INET6, "::1"))

    def test_unix(self) -> None:
        """unix:PATH and unix:path=PATH, colons escaped."""
        for text in ("unix:/run/a\\:b.sock", "unix:path=/run/a\\:b.sock"):
            address = direct_address(text)
            assert address is not None
            self.assertEqual((address.family, address.path), (socket.AF_UNIX, "/run/a:b.sock"))

    def test_others_left_to_twisted(self) -> None:
        """Other kinds, unknown options and strings Twisted would refuse go the reactor's way."""
        for text in ("tls:localhost:1234", "tcp:127.0.0.1:x", "tcp:127.0.0.1:0", "tcp:h:1:bindAddress=x",
                     "tcp:h:1:timeout=2.5", "tcp:h", "unix:", "unix:/a:checkPID=1", "ssl:h:1",
                     "tcp:h:1:extra", "tcp:host=a:host=b:port=1", 5):
            self.assertIsNone(direct_address(text), text)


class FakeServer:
    """
    A listening socket whose connections the test thread serves one by one.
    """

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(5)
        self.listener.settimeout(HANG)
        self.port = self.listener.getsockname()[1]
        self.peers: list[Peer] = []

    def accept(self) -> Peer:
        sock, _ = self.listener.accept()
        peer = Peer(sock)
        peer.flush()
        self.peers.append(peer)
        return peer

    def close(self) -> None:
        self.listener.close()
        for peer in self.peers:
            peer.sock.close()


def wait_for_end(sock: socket.socket) -> None:
    """
    Wait until the peer's end of the connection (its FIN) has reached
    C{sock}, without reading it.
    """
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    if not poller.poll(HANG * 1000):
        raise AssertionError("the peer's end never came")


class DirectClientTests(SynchronousTestCase):
    """Dialling, errors from the constructor, and a new connection after a GOAWAY."""

    def setUp(self) -> None:
        self.server = FakeServer()
        self.addCleanup(self.server.close)

    def client(self, timeout: float | None = 30.0) -> Outcome:
        address = direct_address(f"tcp:127.0.0.1:{self.server.port}")
        assert address is not None
        return Outcome(DirectClient, address, timeout)

    def test_resent_after_goaway(self) -> None:
        """A call the draining server did not run is sent again on a new connection, within its timeout."""
        made = self.client()
        self.server.accept()
        client = made.result()
        self.addCleanup(client.close)
        outcome = Outcome(client.call, "Arith.Multiply", {"A": 2, "B": 3})
        [event] = self.server.peers[0].calls(1)
        self.assertEqual(event[4].timeout, 30.0)
        self.server.peers[0].conn.drain(0, "restarting")
        self.server.peers[0].flush()
        second = self.server.accept()
        [again] = second.calls(1)
        self.assertEqual(again[1:4], [1, "Arith.Multiply", {"A": 2, "B": 3}])
        self.assertLessEqual(again[4].timeout, 30.0)
        second.conn.send_result(1, 6)
        second.flush()
        self.assertEqual(outcome.result(), 6)
        self.assertEqual(self.server.peers[0].sock.recv(10), b"")  # the old one closed
        outcome = Outcome(client.call, "Arith.Multiply", {"A": 1, "B": 1})
        [event] = second.calls(1)
        second.conn.send_result(event[1], 1)
        second.flush()
        self.assertEqual(outcome.result(), 1)

    def test_closed_while_redialling(self) -> None:
        """close() while a call dials a new connection (the server went away) closes that one too, and the call is not sent."""
        made = self.client()
        first = self.server.accept()
        client = made.result()
        first.conn.drain(0, "restarting")
        first.flush()
        outcome = Outcome(client.call, "Arith.Multiply", 1)
        sock, _ = self.server.listener.accept()  # the new dial, waiting for our preface
        second = Peer(sock)
        self.server.peers.append(second)
        client.close()
        second.flush()
        self.assertRaises(ConnectionLost, outcome.result)
        received = b""
        while data := second.sock.recv(65536):
            received += data
        self.assertEqual([e[0] for e in second.conn.receive_data(received)], [PREFACE_RECEIVED])

    def test_redial_after_idle_drop(self) -> None:
        """A connection the server dropped while idle after a PING nobody answered is dialled again, and the call goes there."""
        made = self.client()
        first = self.server.accept()
        client = made.result()
        self.addCleanup(client.close)
        first.conn.send_ping(1)
        first.flush()
        first.sock.close()
        wait_for_end(client.connection.sock)
        outcome = Outcome(client.call, "Arith.Multiply", {"A": 2, "B": 3})
        second = self.server.accept()
        [event] = second.calls(1)
        second.conn.send_result(event[1], 6)
        second.flush()
        self.assertEqual(outcome.result(), 6)

    def test_closed_while_idle(self) -> None:
        """A connection the server closed while idle (no PING) makes the next call fail, as before."""
        made = self.client()
        first = self.server.accept()
        client = made.result()
        self.addCleanup(client.close)
        first.sock.close()
        wait_for_end(client.connection.sock)
        error = self.assertRaises(ConnectionLost, Outcome(client.call, "Arith.Multiply", 1).result)
        self.assertEqual(str(error), "connection to 127.0.0.1:%d is closed; cannot call "
                                     "Arith.Multiply" % self.server.port)

    def test_fork(self) -> None:
        """A child process after fork() dials a connection of its own and leaves the parent's untouched."""
        made = self.client()
        first = self.server.accept()
        client = made.result()
        self.addCleanup(client.close)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: nothing of trial's, and out with os._exit
            code = 1
            try:
                answer = client.call("Arith.Multiply", {"A": 6, "B": 7})
                client.close()
                os.write(write_end, repr(answer).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        self.addCleanup(os.close, read_end)
        try:
            second = self.server.accept()
            [event] = second.calls(1)
            self.assertEqual(event[1:4], [1, "Arith.Multiply", {"A": 6, "B": 7}])
            second.conn.send_result(event[1], 42)
            second.flush()
            self.assertEqual(os.read(read_end, 100), b"42")
        finally:
            _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        outcome = Outcome(client.call, "Arith.Multiply", {"A": 1, "B": 2})
        [event] = first.calls(1)  # the child sent nothing here, and did not close it
        self.assertEqual(event[1:4], [1, "Arith.Multiply", {"A": 1, "B": 2}])
        first.conn.send_result(event[1], 2)
        first.flush()
        self.assertEqual(outcome.result(), 2)

    def test_redial_fails(self) -> None:
        """When the new connection cannot be made, the call fails with Unavailable saying why."""
        made = self.client()
        self.server.accept()
        client = made.result()
        self.addCleanup(client.close)
        self.server.peers[0].conn.drain(0, "restarting")
        self.server.peers[0].flush()
        self.server.listener.close()
        outcome = Outcome(client.call, "Arith.Multiply", 1)
        error = self.assertRaises(Unavailable, outcome.result)
        self.assertTrue(str(error).startswith("127.0.0.1:%d went away (restarting) and "
                                              "reconnecting failed: " % self.server.port), error)

    def test_checks(self) -> None:
        """A method, timeout or metadata of the wrong type raises before anything is sent."""
        made = self.client()
        self.server.accept()
        client = made.result()
        self.addCleanup(client.close)
        self.assertRaises(TypeError, client.call, 5)
        self.assertRaises(TypeError, client.call, "A.B", timeout="1")
        self.assertRaises(ValueError, client.call, "A.B", timeout=-1)
        self.assertRaises(TypeError, client.call, "A.B", metadata=[1])

    def test_refused(self) -> None:
        """A refused connection raises Twisted's ConnectionRefusedError, as the reactor's endpoint does."""
        from twisted.internet.error import ConnectionRefusedError
        port = self.server.port
        self.server.close()
        error = self.assertRaises(ConnectionRefusedError, BlockingClient, f"tcp:127.0.0.1:{port}")
        self.assertEqual(str(error), "Connection was refused by other side: 111: "
                                     "Connection refused.")

    def test_no_unix_socket(self) -> None:
        """A Unix socket path with nothing there raises Twisted's ConnectError."""
        from twisted.internet.error import ConnectError
        error = self.assertRaises(ConnectError, BlockingClient, "unix:/nonexistent/rpcd.sock")
        self.assertEqual(str(error), "An error occurred while connecting: 2: "
                                     "No such file or directory.")

    def test_bad_default_timeout(self) -> None:
        """A bad default timeout raises before any connection is made."""
        self.assertRaises(ValueError, BlockingClient, f"tcp:127.0.0.1:{self.server.port}",
                          timeout=-1)


LOOPBACK = ("--listen", "tcp:0:interface=127.0.0.1")


class _Counting(dict):  # type: ignore[type-arg]
    """
    A connection's table of pending calls that reports each call added
    (its CALL is queued then, in the order of the ids).
    """

    def __init__(self, added: Callable[[], Any]) -> None:
        super().__init__()
        self.added = added

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.added()


def lost_errors(endpoint: str, daemon: Daemon, threads: int) -> list[str]:
    """
    C{threads} threads wait in C{KVStoreService.Watch} on one client; the
    daemon is killed.

    @return: what each thread raised (type and message).
    """
    with BlockingClient(endpoint) as client:
        direct = client._direct
        sent = threading.Semaphore(0)
        # Each call's CALL is queued (or written) as it is added there.
        if direct is not None:
            direct.connection.pending = _Counting(sent.release)
        else:
            client._client.channel.pending = _Counting(sent.release)
        outcomes = [Outcome(client.call, "KVStoreService.Watch", 30) for _ in range(threads)]
        for _ in range(threads):
            sent.acquire(timeout=HANG)
        # This call's CALL follows theirs on the wire: once answered, the
        # daemon runs every Watch.
        assert client.call("Arith.Multiply", {"A": 2, "B": 2}) == 4
        os.kill(daemon.pid, signal.SIGKILL)
        errors = []
        for outcome in outcomes:
            try:
                outcome.result()
            except Unavailable as e:
                errors.append(f"{type(e).__name__}: {e}")
        return errors


class EndToEndTests(TestCase):
    """BlockingClient against the real daemon, from threads (the test's reactor is not used)."""

    timeout = 120

    async def test_threads(self) -> None:
        """Eight threads share one client over TCP, with no reactor thread, and every answer is right."""
        daemon = await Daemon.shared(self, *LOOPBACK)

        def work() -> tuple[bool, list[bool]]:
            with BlockingClient(f"tcp:127.0.0.1:{daemon.port}") as client:
                answers: list[bool] = []

                def caller(k: int) -> None:
                    for i in range(50):
                        answers.append(client.Arith.Multiply(A=k, B=i) == k * i)
                threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(HANG)
                return client._direct is not None, answers
        direct, answers = await deferToThread(work)
        self.assertTrue(direct)
        self.assertEqual((len(answers), all(answers)), (400, True))

    async def test_unix(self) -> None:
        """A unix: endpoint is dialled directly too."""
        path = socket_path(self)
        await Daemon.start(self, "--listen", f"unix:{path}")

        def work() -> tuple[bool, Any]:
            with BlockingClient(f"unix:{path}") as client:
                return client._direct is not None, client.call("Cal.Square", 3)
        self.assertEqual(await deferToThread(work), (True, {"Num": 3, "Ans": 9}))

    async def test_timeout_as_before(self) -> None:
        """A call that times out raises DeadlineExceeded with the reactor's path's words, and the client goes on."""
        daemon = await Daemon.shared(self, *LOOPBACK)

        def work(endpoint: str) -> tuple[str, Any]:
            with BlockingClient(endpoint) as client:
                try:
                    client.call("KVStoreService.Watch", 30, timeout=0.2)
                except DeadlineExceeded as e:
                    message = str(e)
                return message, client.Arith.Multiply(A=3, B=4)
        direct = await deferToThread(work, f"tcp:127.0.0.1:{daemon.port}")
        # bindAddress= is an option the direct path leaves to the reactor.
        reactor = await deferToThread(work, f"tcp:127.0.0.1:{daemon.port}:bindAddress=127.0.0.1")
        # The client's timer and the daemon's deadline (the timeout goes on
        # the wire) end together: either may say it first, on either path.
        either = {f"KVStoreService.Watch did not answer within 0.2 s (cancelled on "
                  f"127.0.0.1:{daemon.port})",
                  "KVStoreService.Watch did not finish within its deadline of 0.2 s"}
        for message, product in (direct, reactor):
            self.assertIn(message, either)
            self.assertEqual(product, 12)

    async def test_daemon_killed_mid_call(self) -> None:
        """Every thread waiting when the daemon dies gets the same ConnectionLost, as on the reactor's path."""
        daemon = await Daemon.start(self, *LOOPBACK)
        errors = await deferToThread(lost_errors, f"tcp:127.0.0.1:{daemon.port}", daemon, 4)
        self.assertEqual(len(errors), 4)
        self.assertEqual(len(set(errors)), 1, errors)
        self.assertTrue(errors[0].startswith(f"ConnectionLost: connection to 127.0.0.1:"
                                             f"{daemon.port} lost before the call was answered: "),
                        errors[0])
        await daemon.stop()
        daemon = await Daemon.start(self, *LOOPBACK)
        before = await deferToThread(lost_errors, f"tcp:127.0.0.1:{daemon.port}:bindAddress="
                                                  "127.0.0.1", daemon, 4)
        self.assertEqual(len(before), 4)
        self.assertEqual(before[0].split(": ")[0], errors[0].split(": ")[0])
        self.assertEqual(before[0].split(" lost ")[1], errors[0].split(" lost ")[1])

    async def drained(self, endpoint: str, daemon: Daemon) -> tuple[str, list[str]]:
        """
        Two threads wait in C{KVStoreService.Watch}; the daemon drains (a
        GOAWAY, and it stops listening); a new call is made, then the daemon
        stops at once.

        @return: what the new call raised, and what each waiting thread raised.
        """
        client = await deferToThread(BlockingClient, endpoint)
        sent = threading.Semaphore(0)
        if client._direct is not None:
            client._direct.connection.pending = _Counting(sent.release)
        else:
            client._client.channel.pending = _Counting(sent.release)
        outcomes = [Outcome(client.call, "KVStoreService.Watch", 30) for _ in range(2)]
        for _ in range(2):
            await deferToThread(sent.acquire, timeout=HANG)
        mark = len(daemon.output)
        daemon.process.signalProcess(signal.SIGTERM)
        await daemon.wait_for_log(r"connection\(s\) told to go away", after=mark, timeout=HANG)

        def call() -> str:
            try:
                return repr(client.call("Arith.Multiply", {"A": 2, "B": 2}))
            except Unavailable as e:
                return f"{type(e).__name__}: {e}"
        after = await deferToThread(call)
        await daemon.stop(drain_wait=0)
        waiting = []
        for outcome in outcomes:
            try:
                waiting.append(repr(await deferToThread(outcome.result)))
            except Unavailable as e:
                waiting.append(type(e).__name__)
        await deferToThread(client.close)
        return after.replace(str(daemon.port), "PORT"), waiting

    async def test_drained_mid_call(self) -> None:
        """A daemon that drains: a new call finds it gone as on the reactor's path, and the calls it ran fail when it stops."""
        daemon = await Daemon.start(self, *LOOPBACK)
        direct = await self.drained(f"tcp:127.0.0.1:{daemon.port}", daemon)
        daemon = await Daemon.start(self, *LOOPBACK)
        reactor = await self.drained(f"tcp:127.0.0.1:{daemon.port}:bindAddress=127.0.0.1", daemon)
        self.assertTrue(direct[0].startswith("Unavailable: 127.0.0.1:PORT went away ("), direct)
        self.assertIn(") and reconnecting failed: Connection was refused", direct[0])
        self.assertEqual(direct[0], reactor[0])
        self.assertEqual(len(direct[1]), 2)
        self.assertTrue(all(e in ("Unavailable", "ConnectionLost") for e in direct[1] + reactor[1]),
                        (direct, reactor))

    async def test_tls(self) -> None:
        """A tls: endpoint still works, over the reactor's thread."""
        pki = Path(temp_dir(self)) / "pki"
        files = create_dev_pki(pki)
        daemon = await Daemon.start(
            self, "--listen", f"rpcd-tls:0:interface=127.0.0.1:certKey={files['server.pem']}"
                              f":privateKey={files['server.key']}")

        def work() -> tuple[bool, Any]:
            with BlockingClient(f"tls:host=localhost:port={daemon.port}:trustRoots={pki}") as c:
                return c._direct is None, c.Arith.Multiply(A=7, B=8)
        self.assertEqual(await deferToThread(work), (True, 56))
