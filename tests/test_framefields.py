"""
Every field of every native frame is checked at the boundary, on both sides:
a bad field of a call-level frame fails that call (naming the field), a frame
whose id cannot be read closes the connection with a GOAWAY saying why, and
the client library checks its own arguments before touching the connection.
"""

from __future__ import annotations

import contextlib
import io
import struct
from collections.abc import AsyncIterator
from typing import Any

import msgpack
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from rpcd.client import Client, connect
from rpcd.errors import Code, DeadlineExceeded, Internal, InvalidArgument, RPCError, Unavailable
from rpcd.examples.arith import Arith
from rpcd.retry import RetryPolicy, retrying_call
from rpcd.server import Limits, RPCServer
from rpcd.service import ServiceRegistry, exposed
from rpcd.testing import MemoryConnection
from rpcd.wire.fields import MAX_METADATA_KEY, MAX_METADATA_KEYS, MAX_TIMEOUT, check_timeout
from rpcd.wire.frames import PREFACE, FrameReader
from rpcd.wire.native import NativeServerProtocol
from rpcd.wire.native_client import NativeClientProtocol


def frame(*fields: Any) -> bytes:
    body = msgpack.packb(list(fields), use_bin_type=True)
    return struct.pack(">I", len(body)) + body


GOOD = frame(0, 1000, "Arith.Multiply", {"A": 3, "B": 4})
"""A good call, sent after a bad frame: it must still be answered."""


class Slow:
    """Methods that stay running until the test lets them go."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.waiting: list[Deferred[int]] = []

    @exposed
    def Wait(self, n: int) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        self.waiting.append(d)
        return d

    @exposed
    async def Collect(self, numbers: AsyncIterator[int]) -> int:
        return len([n async for n in numbers])

    @exposed
    async def Ticks(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
            await deferLater(self.clock, 1)


class ServerTestCase(SynchronousTestCase):
    """A native server protocol on a StringTransport, past the preface."""

    def setUp(self) -> None:
        registry = ServiceRegistry()
        registry.add(Arith)
        self.clock = Clock()
        self.slow = Slow(self.clock)
        registry.add(self.slow)
        self.server = RPCServer(registry, self.clock, Limits())
        self.protocol = NativeServerProtocol(self.server)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(PREFACE)
        self.transport.clear()

    def send(self, *data: bytes) -> list[list[Any]]:
        """Feed bytes in one read; return the frames written, after a turn."""
        with capturedLogs() as self.events:
            self.protocol.dataReceived(b"".join(data))
            self.clock.advance(0)
        out = list(FrameReader().feed(self.transport.value()))
        self.transport.clear()
        failures = [e for e in self.events if "log_failure" in e]
        self.assertEqual(failures, [])
        return out

    def assertRefused(self, bad: bytes, message: str) -> None:
        """The bad frame fails its call 7 with INVALID_ARGUMENT; a good call beside it is answered."""
        replies = self.send(bad, GOOD)
        # A stream's ERROR goes out with the turn's stream frames, after the read's replies.
        self.assertCountEqual(replies, [[2, 7, Code.INVALID_ARGUMENT, message, None], [1, 1000, 12]])
        self.assertFalse(self.transport.disconnecting)

    def assertGoaway(self, bad: bytes, message: str) -> None:
        """The bad frame closes the connection with a GOAWAY naming what was wrong."""
        replies = self.send(GOOD, bad, GOOD)
        self.assertEqual(replies[0], [1, 1000, 12])
        self.assertEqual(replies[1][:3], [9, 0, Code.INVALID_ARGUMENT])
        self.assertIn(message, replies[1][3])
        self.assertEqual(len(replies), 2)
        self.assertTrue(self.transport.disconnecting)


class CallOptionTests(ServerTestCase):
    """The options of a CALL frame."""

    def test_negative_timeout(self) -> None:
        """A negative timeout fails that call, naming the field and the value."""
        self.assertRefused(frame(0, 7, "Slow.Wait", 1, {"timeout": -1}),
                           "CALL 7: options.timeout must be a non-negative number of seconds, got -1")

    def test_bad_timeouts(self) -> None:
        """NaN, infinity, strings, booleans and timeouts over the maximum fail that call."""
        for value, why in [(float("nan"), "got nan"), (float("inf"), "at most 604800 seconds"),
                           ("5", "got '5'"), (True, "got True"), ([1], "got [1]"),
                           (MAX_TIMEOUT + 1, "at most 604800 seconds"), (-0.001, "got -0.001")]:
            replies = self.send(frame(0, 7, "Slow.Wait", 1, {"timeout": value}), GOOD)
            self.assertEqual(replies[0][:3], [2, 7, Code.INVALID_ARGUMENT])
            self.assertIn("CALL 7: options.timeout must be", replies[0][3])
            self.assertIn(why, replies[0][3])
            self.assertEqual(replies[1], [1, 1000, 12])
        self.assertEqual(self.slow.waiting, [])

    def test_zero_and_maximum_timeouts(self) -> None:
        """A timeout of 0 expires at once; the maximum timeout is accepted."""
        replies = self.send(frame(0, 7, "Slow.Wait", 1, {"timeout": 0}),
                            frame(0, 8, "Slow.Wait", 1, {"timeout": MAX_TIMEOUT}))
        self.assertEqual(len(self.slow.waiting), 2)
        self.assertEqual([r[:3] for r in replies], [[2, 7, Code.DEADLINE_EXCEEDED]])
        self.slow.waiting[1].callback(5)
        self.assertEqual(self.send(), [[1, 8, 5]])

    def test_metadata(self) -> None:
        """Metadata must be a map of string keys, with bounded keys."""
        cases = [
            ([1], "options.metadata must be a map of string keys, got [1]"),
            ({b"k": 1}, "options.metadata keys must be strings, got b'k'"),
            ({f"k{i}": i for i in range(MAX_METADATA_KEYS + 1)},
             f"options.metadata has {MAX_METADATA_KEYS + 1} keys; at most {MAX_METADATA_KEYS}"),
            ({"k" * (MAX_METADATA_KEY + 1): 1}, f"is longer than {MAX_METADATA_KEY} characters"),
        ]
        for metadata, why in cases:
            replies = self.send(frame(0, 7, "Slow.Wait", 1, {"metadata": metadata}), GOOD)
            self.assertEqual(replies[0][:3], [2, 7, Code.INVALID_ARGUMENT])
            self.assertIn(why, replies[0][3])
            self.assertEqual(replies[1], [1, 1000, 12])

    def test_options_shape(self) -> None:
        """Options that are not a map, or a stream flag that is not a boolean, fail that call."""
        self.assertRefused(frame(0, 7, "Slow.Wait", 1, [1]), "CALL 7: options must be a map, got [1]")
        self.assertRefused(frame(0, 7, "Slow.Ticks", 1, {"stream": 1}),
                           "CALL 7: options.stream must be true or false, got 1")
        self.assertRefused(frame(0, 7, "Slow.Ticks", 1, {"stream": True, "window": 0}),
                           "CALL 7: options.window must be an integer from 1 to 2^20, got 0")

    def test_unknown_options_and_extra_fields_ignored(self) -> None:
        """Unknown option keys and extra trailing fields are ignored (room for later versions)."""
        replies = self.send(frame(0, 7, "Arith.Multiply", {"A": 2, "B": 3}, {"future": 1}, "extra"),
                            frame(0, 8, "Arith.Multiply", {"A": 2, "B": 5}, None),
                            frame(0, 9, "Arith.Multiply", {"A": 2, "B": 7}, {}))
        self.assertEqual(replies, [[1, 7, 6], [1, 8, 10], [1, 9, 14]])


class CallIdTests(ServerTestCase):
    """Ids and the frames that carry them."""

    def test_unreadable_call_id(self) -> None:
        """A CALL whose id is not an integer from 0 to 2^63-1 closes the connection."""
        for bad in ("7", -1, 2 ** 63, 1.5, None):
            self.setUp()
            self.assertGoaway(frame(0, bad, "Arith.Multiply", {}, {"timeout": 1}),
                              f"protocol error: CALL id must be an integer from 0 to 2^63-1, "
                              f"got {bad!r}")

    def test_largest_id(self) -> None:
        """The largest id, 2^63-1, is answered."""
        self.assertEqual(self.send(frame(0, 2 ** 63 - 1, "Arith.Multiply", {"A": 1, "B": 1})),
                         [[1, 2 ** 63 - 1, 1]])

    def test_cancel_with_a_list_id(self) -> None:
        """A CANCEL whose id is a list closes the connection with a GOAWAY, not a traceback."""
        self.assertGoaway(frame(3, [1]), "protocol error: CANCEL id must be an integer "
                                         "from 0 to 2^63-1, got [1]")

    def test_cancel_without_id(self) -> None:
        """A CANCEL with no id closes the connection."""
        self.assertGoaway(frame(3), "CANCEL frame has no id")

    def test_cancel_unknown_id_ignored(self) -> None:
        """A CANCEL for an id that is not running is ignored."""
        self.assertEqual(self.send(frame(3, 55), GOOD), [[1, 1000, 12]])

    def test_stream_frames_with_bad_ids(self) -> None:
        """MESSAGE, END and CREDIT with an id that cannot be read close the connection."""
        for bad, name in [(frame(4, [1], 2), "MESSAGE"), (frame(5, "x"), "END"),
                          (frame(6, {"a": 1}, 1), "CREDIT"), (frame(4), "MESSAGE")]:
            self.setUp()
            self.assertGoaway(bad, f"protocol error: {name} ")

    def test_stream_frames_for_unknown_ids_ignored(self) -> None:
        """MESSAGE, END and CREDIT for ids that are not streams are ignored, streams open or not."""
        unknown = frame(4, 5, 1) + frame(5, 5) + frame(6, 5, "junk") + frame(4, 5)
        self.assertEqual(self.send(unknown, GOOD), [[1, 1000, 12]])
        self.send(frame(0, 8, "Slow.Collect", None, {"stream": True}))
        self.assertEqual(self.send(unknown, GOOD), [[1, 1000, 12]])
        self.assertFalse(self.transport.disconnecting)

    def test_unexpected_frame_types(self) -> None:
        """RESULT, ERROR or an unknown type from a client closes the connection."""
        for bad, name in [(frame(1, 1, 2), "RESULT"), (frame(2, 1, 2, "x", None), "ERROR"),
                          (frame(42, 1), "frame type 42"), (frame(-1), "frame type -1")]:
            self.setUp()
            self.assertGoaway(bad, f"unexpected {name} from a client")


class StreamFrameTests(ServerTestCase):
    """A bad field of a frame for a running stream fails that stream only."""

    def open(self) -> None:
        [credit] = self.send(frame(0, 7, "Slow.Collect", None, {"stream": True}))
        self.assertEqual(credit, [6, 7, 256])

    def test_message_without_value(self) -> None:
        """A MESSAGE with no value fails its stream with INVALID_ARGUMENT."""
        self.open()
        self.assertRefused(frame(4, 7), "MESSAGE 7: needs [4, id, value], got 2 fields")

    def test_bad_credit(self) -> None:
        """A CREDIT granting 0, a string or nothing fails its stream, naming n."""
        for n in (0, "3", None):
            self.setUp()
            self.open()
            bad = frame(6, 7) if n is None else frame(6, 7, n)
            self.assertRefused(bad, f"CREDIT 7: n must be an integer from 1 to 1048576, got {n!r}")

    def test_good_stream_after_bad_frames(self) -> None:
        """After bad frames for other ids, a stream still runs to its end."""
        self.open()
        replies = self.send(frame(6, 99, 0), frame(4, 7, 1), frame(4, 7, 2), frame(5, 7))
        self.assertEqual(replies, [[1, 7, 2]])


class ClientTestCase(SynchronousTestCase):
    """A native client protocol on a StringTransport, past the server's preface."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.channel = NativeClientProtocol(self.clock)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)
        self.channel.dataReceived(PREFACE)
        self.client = Client(self.channel)
        self.transport.clear()

    def written(self) -> list[list[Any]]:
        out = list(FrameReader().feed(self.transport.value()))
        self.transport.clear()
        return out

    def receive(self, *data: bytes) -> list[dict[str, Any]]:
        with capturedLogs() as events:
            self.channel.dataReceived(b"".join(data))
        self.assertEqual([e for e in events if "log_failure" in e], [])
        return events


class ClientArgumentTests(ClientTestCase):
    """The client library checks its arguments before it sends anything."""

    def test_negative_timeout_raises_at_once(self) -> None:
        """timeout=-0.001 raises ValueError at once; nothing is sent and the connection works."""
        e = self.assertRaises(ValueError, self.client.call, "Arith.Multiply", {"A": 1}, timeout=-0.001)
        self.assertEqual(str(e), "timeout must be a non-negative number of seconds, got -0.001")
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.channel.pending, {})
        d = self.client.call("Arith.Multiply", {"A": 1, "B": 2}, timeout=1)
        [call] = self.written()
        self.assertEqual(call[:3], [0, call[1], "Arith.Multiply"])
        self.assertEqual(call[4], {"timeout": 1.0})
        self.receive(frame(1, call[1], 2))
        self.assertEqual(self.successResultOf(d), 2)

    def test_bad_arguments(self) -> None:
        """Bad timeouts, metadata and methods raise TypeError or ValueError naming them."""
        cases: list[tuple[type[Exception], dict[str, Any], str]] = [
            (ValueError, {"timeout": float("nan")}, "timeout must be a non-negative number"),
            (ValueError, {"timeout": float("inf")}, "timeout must be at most 604800 seconds"),
            (ValueError, {"timeout": 10 ** 400}, "timeout must be at most 604800 seconds"),
            (TypeError, {"timeout": "5"}, "timeout must be a non-negative number of seconds, got '5'"),
            (TypeError, {"timeout": True}, "got True"),
            (TypeError, {"metadata": [("a", 1)]}, "metadata must be a map of string keys"),
            (TypeError, {"metadata": {1: 2}}, "metadata keys must be strings, got 1"),
            (ValueError, {"metadata": {str(i): i for i in range(65)}}, "metadata has 65 keys"),
        ]
        for error, kwargs, why in cases:
            e = self.assertRaises(error, self.client.call, "Arith.Multiply", None, **kwargs)
            self.assertIn(why, str(e))
            e = self.assertRaises(error, self.client.stream, "Slow.Ticks", 1, **kwargs)
            self.assertIn(why, str(e))
        self.assertRaises(TypeError, self.client.call, b"Arith.Multiply")
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.channel.pending, {})

    def test_default_timeouts(self) -> None:
        """A bad default timeout is refused when the client is made, or connect fails with it."""
        self.assertRaises(ValueError, Client, self.channel, default_timeout=-1)
        self.failureResultOf(connect("tcp:127.0.0.1:1", reactor=self.clock, default_timeout=-1),
                             ValueError)
        self.failureResultOf(connect("tcp:127.0.0.1:1", reactor=self.clock, connect_timeout="x"),
                             TypeError)
        self.assertEqual(check_timeout(0), 0.0)

    def test_cli_timeout_option(self) -> None:
        """The rpcd command refuses a bad --timeout as a usage error, naming it."""
        from rpcd.cli import run, seconds
        self.assertEqual(seconds("2.5"), 2.5)
        for value, why in (("-1", "non-negative number of seconds, got -1.0"),
                           ("nan", "got nan"), ("x", "not a number of seconds: 'x'")):
            for command in ("call", "stream"):
                err = io.StringIO()
                with contextlib.redirect_stderr(err):
                    e = self.assertRaises(SystemExit, run, [command, "--timeout", value,
                                                            "tcp:127.0.0.1:1", "A.B"])
                self.assertEqual(e.code, 2)
                self.assertIn("argument --timeout: ", err.getvalue())
                self.assertIn(why, err.getvalue())

    def test_retrying_and_balanced_calls(self) -> None:
        """A retrying client and a balancer check the timeout before any attempt."""
        from rpcd.balancer import Balancer
        from rpcd.retry import RetryingClient
        retrying = RetryingClient(self.client, RetryPolicy(), self.clock)
        self.assertRaises(ValueError, retrying.call, "Arith.Multiply", None, timeout=-1)
        from rpcd.pickers import make_picker
        balancer = Balancer(self.clock, lambda endpoint: Deferred(), picker=make_picker("round_robin"))
        self.assertRaises(TypeError, balancer.call, "Arith.Multiply", None, timeout="1")
        self.assertEqual(self.transport.value(), b"")

    def test_late_retry_gets_zero_not_negative(self) -> None:
        """A retry whose backoff timer fired late passes a timeout of 0, never a negative one."""
        seen: list[float | None] = []
        clock = Clock()

        def attempt(remaining: float | None) -> Deferred[Any]:
            seen.append(remaining)
            d: Deferred[Any] = Deferred()
            d.errback(Unavailable("down"))
            return d
        policy = RetryPolicy(max_attempts=2, initial_backoff=1, max_backoff=1, jitter=0)
        d = retrying_call(attempt, policy, clock, timeout=10)
        clock.advance(20)  # the backoff timer fires long after the deadline
        self.failureResultOf(d, Unavailable)
        self.assertEqual(seen, [10.0, 0.0])


class ClientFrameTests(ClientTestCase):
    """The client survives a malicious server's bad frames."""

    def call(self) -> tuple[Deferred[Any], int]:
        d = self.client.call("Slow.Wait", 1)
        [call] = self.written()
        return d, call[1]

    def test_result_without_value(self) -> None:
        """A RESULT with no value fails that call with INTERNAL; another call is still answered."""
        d1, id1 = self.call()
        d2, id2 = self.call()
        self.receive(frame(1, id1), frame(1, id2, 5))
        error = self.failureResultOf(d1, Internal).value
        self.assertIn(f"bad RESULT frame from 192.168.1.1:54321 for call {id1}: needs [1, id, value]",
                      error.message)
        self.assertEqual(self.successResultOf(d2), 5)
        self.assertFalse(self.transport.disconnecting)

    def test_bad_error_fields(self) -> None:
        """An ERROR whose code or message has the wrong type fails that call with INTERNAL."""
        for bad, why in [(lambda i: frame(2, i, "5", "x", None), "code must be an integer, got '5'"),
                         (lambda i: frame(2, i, 5, 7, None), "message must be a string, got 7"),
                         (lambda i: frame(2, i, 5), "needs [2, id, code, message]")]:
            d, call_id = self.call()
            self.receive(bad(call_id))
            self.assertIn(why, self.failureResultOf(d, Internal).value.message)
        d, call_id = self.call()
        self.receive(frame(2, call_id, 5, "not found"))
        self.assertEqual(self.failureResultOf(d, RPCError).value.code, Code.NOT_FOUND)

    def test_result_with_a_list_id(self) -> None:
        """A RESULT whose id cannot be read: the client sends GOAWAY, closes, fails its calls."""
        d, _ = self.call()
        events = self.receive(frame(1, [1], 2))
        [goaway] = self.written()
        self.assertEqual(goaway[:3], [9, 0, Code.INVALID_ARGUMENT])
        self.assertIn("RESULT id must be an integer from 0 to 2^63-1, got [1]", goaway[3])
        self.assertTrue(self.transport.disconnecting)
        self.assertIn("RESULT id must be", self.failureResultOf(d, Unavailable).value.message)
        self.assertTrue(any("RESULT id" in str(e.get("why")) for e in events))
        self.receive(frame(1, [1], 2))  # nothing more is read
        self.assertEqual(self.written(), [])

    def test_unknown_ids_and_pong_ignored(self) -> None:
        """Replies and stream frames for unknown ids, and PONG, are ignored."""
        d, call_id = self.call()
        self.receive(frame(1, 999, 1), frame(2, 998, 1, "x", None), frame(4, 997, 1),
                     frame(6, 996, 0), frame(8, b"x"), frame(1, call_id, 3))
        self.assertEqual(self.successResultOf(d), 3)
        self.assertEqual(self.written(), [])

    def test_unexpected_frames(self) -> None:
        """CALL, CANCEL, END or an unknown type from a server is a protocol error."""
        for bad, name in [(frame(0, 1, "A.B", None), "CALL"), (frame(3, 1), "CANCEL"),
                          (frame(5, 1), "END"), (frame(77), "frame type 77")]:
            self.setUp()
            d, _ = self.call()
            self.receive(bad)
            [goaway] = self.written()
            self.assertIn(f"unexpected {name} from a server", goaway[3])
            self.failureResultOf(d, Unavailable)

    def test_goaway_with_odd_fields(self) -> None:
        """A GOAWAY whose message is not a string still fails the calls clearly."""
        d, _ = self.call()
        self.receive(frame(9, "x", None, [1]))
        self.assertIn("server closed the connection (GOAWAY", self.failureResultOf(d, Unavailable).value.message)
        self.assertTrue(self.transport.disconnecting)

    def test_ping_without_opaque(self) -> None:
        """A PING with no opaque value is answered with PONG nil."""
        self.receive(frame(7))
        self.assertEqual(self.written(), [[8, None]])

    def test_bad_stream_frames(self) -> None:
        """A bad MESSAGE or CREDIT for an open stream fails it with INTERNAL and cancels it."""
        for bad, why in [(lambda i: frame(4, i), "MESSAGE needs [4, id, value]"),
                         (lambda i: frame(6, i, -3), "CREDIT n must be an integer from 1 to 1048576")]:
            stream = self.client.stream("Slow.Ticks", 3)
            self.written()
            self.receive(bad(stream.call_id))
            self.assertIn(why, self.failureResultOf(stream.result(), Internal).value.message)
            self.assertEqual(self.written(), [[3, stream.call_id]])
        self.assertFalse(self.transport.disconnecting)


class MemoryTests(SynchronousTestCase):
    """Client and server together, in memory."""

    def test_server_refusal_reaches_the_caller(self) -> None:
        """A server's INVALID_ARGUMENT for a bad option reaches the caller and the connection lives."""
        conn = MemoryConnection([Arith])
        call_id = 77
        done: Deferred[Any] = Deferred()
        conn.channel.pending[call_id] = done
        conn.channel.transport.write(frame(0, call_id, "Arith.Multiply", {"A": 1}, {"timeout": "soon"}))
        conn.flush()
        error = self.failureResultOf(done, InvalidArgument).value
        self.assertEqual(error.message, "CALL 77: options.timeout must be a non-negative number "
                                        "of seconds, got 'soon'")
        d = conn.client.Arith.Multiply(A=6, B=7)
        conn.flush()
        self.assertEqual(self.successResultOf(d), 42)

    def test_zero_timeout_end_to_end(self) -> None:
        """A client timeout of 0 is sent and fails the call with DEADLINE_EXCEEDED."""
        conn = MemoryConnection([Slow()])
        d = conn.client.call("Slow.Wait", 1, timeout=0)
        conn.flush()
        conn.clock.advance(0)
        conn.flush()
        self.failureResultOf(d, DeadlineExceeded)
