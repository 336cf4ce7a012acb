"""
L{rpcd.wire.connection.NativeConnection} driven with bytes only: a client
connection and a server connection talking by exchanging C{data_to_send},
the frame rules of each role, and a fuzz of C{receive_data}.  No Twisted
beyond trial's test case.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from rpcd.wire.connection import (
    BAD_FRAME,
    CALL,
    CANCEL,
    CONNECTION_ERROR,
    CREDIT,
    END,
    ERROR,
    GOAWAY,
    MESSAGE,
    PING,
    PONG,
    PREFACE_RECEIVED,
    RESULT,
    NativeConnection,
    NoCredit,
    PrefaceError,
)
from rpcd.wire.fields import CallOptions
from rpcd.wire.frames import PREFACE, ProtocolError
from tests.test_nativefuzz import (
    CLIENT_FRAMES,
    OPENING,
    SERVER_FRAMES,
    byte_mutations,
    field_mutations,
)
from tests.test_wirefuzz import chunks


def encode(body: Any) -> bytes:
    data = msgpack.packb(body, use_bin_type=True)
    return struct.pack(">I", len(data)) + data


def pair() -> tuple[NativeConnection, NativeConnection]:
    """A client and a server connection past both prefaces."""
    client, server = NativeConnection(client_side=True), NativeConnection(client_side=False)
    client.initiate_connection()
    server.initiate_connection()
    assert server.receive_data(client.data_to_send()) == [(PREFACE_RECEIVED, 1)]
    assert client.receive_data(server.data_to_send()) == [(PREFACE_RECEIVED, 1)]
    return client, server


def exchange(sender: NativeConnection, receiver: NativeConnection) -> list[Any]:
    """Move the sender's bytes to the receiver; return the events, as lists."""
    return [list(e) for e in receiver.receive_data(sender.data_to_send())]


class PairTests(SynchronousTestCase):
    """A client connection and a server connection exchanging bytes."""

    def test_unary_calls(self) -> None:
        """Calls reach the server as events and the replies reach the client, in one batch."""
        client, server = pair()
        client.send_call(1, "Arith.Multiply", {"A": 7, "B": 8})
        client.send_call(2, "KV.Get", "nope", timeout=1.5, metadata={"k": "v"})
        events = exchange(client, server)
        self.assertEqual(events[0], [CALL, 1, "Arith.Multiply", {"A": 7, "B": 8}])
        self.assertEqual(events[1], [CALL, 2, "KV.Get", "nope",
                                     CallOptions(1.5, {"k": "v"}, False, None)])
        server.send_result(1, 56)
        server.send_error(2, 5, "not found")
        self.assertEqual(exchange(server, client),
                         [[RESULT, 1, 56], [ERROR, 2, 5, "not found", None]])

    def test_plain_events_counted(self) -> None:
        """plain counts the leading unary RESULTs (client) or option-less CALLs (server) only."""
        client, server = pair()
        client.send_call(1, "A.B", 1)
        client.send_call(2, "A.B", 2)
        client.send_call(3, "A.B", 3, timeout=1.0)
        client.send_call(4, "A.B", 4)
        exchange(client, server)
        self.assertEqual(server.plain, 2)
        server.send_result(1, "one")
        server.send_result(2, "two")
        server.send_error(3, 5, "no")
        server.send_result(4, "four")
        events = exchange(server, client)
        self.assertEqual((client.plain, events[0], events[1]),
                         (2, [RESULT, 1, "one"], [RESULT, 2, "two"]))
        client.open_stream(5, "S.T", None)
        server.receive_data(client.data_to_send())
        server.send_result(5, "stream over")
        client.receive_data(server.data_to_send())
        self.assertEqual(client.plain, 0)  # a stream's RESULT is not plain
        self.assertEqual(client.receive_data(b""), [])
        self.assertEqual(client.plain, 0)

    def test_worked_example_bytes(self) -> None:
        """The server's RESULT is the docs' worked example, byte for byte."""
        _, server = pair()
        server.send_result(1, 56)
        self.assertEqual(server.data_to_send(), bytes.fromhex("00000004" "93" "01" "01" "38"))

    def test_server_stream_with_credit(self) -> None:
        """A server stream sends as far as the window, then waits for the client's CREDIT."""
        client, server = pair()
        client.open_stream(7, "T.Count", 3, window=2)
        [[kind, call_id, _, _, options]] = exchange(client, server)
        self.assertEqual((kind, call_id, options.stream, options.window), (CALL, 7, True, 2))
        server.send_message(7, 0)
        server.send_message(7, 1)
        self.assertEqual(server.credit(7), 0)
        self.assertRaises(NoCredit, server.send_message, 7, 2)
        self.assertEqual(exchange(server, client), [[MESSAGE, 7, 0], [MESSAGE, 7, 1]])
        self.assertEqual(client.message_consumed(7), 1)
        self.assertEqual(exchange(client, server), [[CREDIT, 7, 1]])
        server.send_message(7, 2)
        server.send_result(7, None)
        self.assertFalse(server.stream_open(7))
        self.assertEqual(exchange(server, client), [[MESSAGE, 7, 2], [RESULT, 7, None]])
        self.assertFalse(client.stream_open(7))

    def test_client_stream(self) -> None:
        """A client stream may send only after the server's grant, and END half-closes it."""
        client, server = pair()
        client.open_stream(3, "T.Sum", None)
        exchange(client, server)
        self.assertEqual(client.credit(3), 0)
        server.grant_window(3, 2)
        self.assertEqual(exchange(server, client), [[CREDIT, 3, 2]])
        client.send_message(3, 10)
        client.send_message(3, 20)
        client.send_end(3)
        self.assertEqual(exchange(client, server), [[MESSAGE, 3, 10], [MESSAGE, 3, 20], [END, 3]])
        server.message_consumed(3)
        self.assertEqual(server.data_to_send(), b"", "no credit after the client's END")

    def test_message_beyond_credit(self) -> None:
        """A MESSAGE beyond the granted credit is a protocol error, the last event."""
        client, server = pair()
        client.open_stream(3, "T.Sum", None)
        exchange(client, server)
        server.grant_window(3, 1)
        client.receive_data(server.data_to_send())
        events = server.receive_data(encode([4, 3, "a"]) + encode([4, 3, "b"]) + encode([7, 1]))
        self.assertEqual(events[0], [MESSAGE, 3, "a"])
        [(kind, error, code, message)] = events[1:]
        self.assertEqual((kind, code), (CONNECTION_ERROR, 3))
        self.assertIsInstance(error, ProtocolError)
        self.assertIn("MESSAGE beyond the granted credit", message)
        self.assertEqual(server.receive_data(encode([7, 1])), [], "nothing more is read")

    def test_message_to_a_stream_taking_none(self) -> None:
        """A MESSAGE on a server stream that granted nothing names the reason."""
        _, server = pair()
        server.receive_data(encode([0, 8, "T.Count", 3, {"stream": True}]))
        [(kind, _, _, message)] = server.receive_data(encode([4, 8, 1]))
        self.assertEqual(kind, CONNECTION_ERROR)
        self.assertIn("this method takes no messages", message)

    def test_cancel_forgets_the_stream(self) -> None:
        """After CANCEL the client ignores the frames that crossed it."""
        client, server = pair()
        client.open_stream(5, "T.Count", 3)
        exchange(client, server)
        client.send_cancel(5)
        self.assertEqual(exchange(client, server), [[CANCEL, 5]])
        server.send_message(5, 1)
        self.assertEqual(exchange(server, client), [])

    def test_ping_pong(self) -> None:
        """A PING is an event the receiver answers with PONG carrying its opaque value."""
        client, server = pair()
        client.send_ping(b"hi")
        [[kind, opaque]] = exchange(client, server)
        server.send_pong(opaque)
        self.assertEqual((kind, exchange(server, client)), (PING, [[PONG, b"hi"]]))
        self.assertEqual(server.receive_data(encode([7])), [(PING, None)])

    def test_graceful_goaway(self) -> None:
        """After drain, the server refuses new calls itself with UNAVAILABLE."""
        client, server = pair()
        server.drain(4, "bye")
        self.assertEqual(exchange(server, client), [[GOAWAY, 4, 0, "bye", True]])
        client.send_call(5, "A.B", None)
        self.assertEqual(exchange(client, server), [])
        [[kind, call_id, code, message, _]] = exchange(server, client)
        self.assertEqual((kind, call_id, code), (ERROR, 5, 14))
        self.assertIn("last_id 4", message)

    def test_fatal_goaway(self) -> None:
        """A fatal GOAWAY is the last frame sent and read."""
        client, server = pair()
        server.close(3, "protocol error: x")
        server.send_result(1, 2)
        self.assertTrue(server.closed)
        data = server.data_to_send() + encode([1, 1, 2])
        self.assertEqual([list(e) for e in client.receive_data(data)],
                         [[GOAWAY, 0, 3, "protocol error: x", False]])

    def test_goaway_odd_fields(self) -> None:
        """A GOAWAY without a string message gets a generic one."""
        client, _ = pair()
        [(_, _, _, message, graceful)] = client.receive_data(encode([9, "x"]))
        self.assertEqual((message, graceful),
                         ("server closed the connection (GOAWAY ['x'])", False))


class RuleTests(SynchronousTestCase):
    """The frame rules each role applies to what it reads."""

    def test_bad_call_fields_answered(self) -> None:
        """A CALL with a bad field gets ERROR 3 naming it; the calls around it are events."""
        _, server = pair()
        events = server.receive_data(encode([0, 1, "A.B", 1]) + encode([0, 2, 5, 1])
                                     + encode([0, 3, "A.B", 1, {"timeout": -1}])
                                     + encode([0, 4, "A.B", 1]))
        self.assertEqual([e[1] for e in events], [1, 4])
        unpacker = msgpack.Unpacker()
        unpacker.feed(_bodies(server.data_to_send()))
        replies = list(unpacker)
        self.assertEqual(replies, [
            [2, 2, 3, "CALL 2: method must be a string, got 5", None],
            [2, 3, 3, "CALL 3: options.timeout must be a non-negative number of seconds, "
                      "got -1", None]])

    def test_duplicate_stream_id(self) -> None:
        """A CALL reusing the id of an open stream is refused and the stream stays open."""
        _, server = pair()
        server.receive_data(encode([0, 8, "T.Count", 3, {"stream": True, "window": 2}]))
        self.assertEqual(server.receive_data(encode([0, 8, "A.B", 1])), [])
        self.assertIn(b"already in use", server.data_to_send())
        self.assertEqual(server.credit(8), 2)

    def test_unreadable_ids(self) -> None:
        """A frame whose id cannot be read is a protocol error naming the frame."""
        for body in ([3, [1]], [0, -1, "A.B", 1], [4, 2 ** 63, 1], [6]):
            _, server = pair()
            [(kind, error, _, _)] = server.receive_data(encode(body))
            self.assertEqual(kind, CONNECTION_ERROR)
            self.assertIsInstance(error, ProtocolError)

    def test_unexpected_types_per_role(self) -> None:
        """Each role refuses the frame types only the other role sends."""
        for client_side, body, name in ((False, [1, 1, 1], "RESULT from a client"),
                                        (True, [0, 1, "A.B", 1], "CALL from a server"),
                                        (True, [5, 1], "END from a server"),
                                        (False, [42, 1], "frame type 42 from a client")):
            conn = NativeConnection(client_side)
            [_, (_, _, _, message)] = conn.receive_data(PREFACE + encode(body))
            self.assertEqual(message, f"protocol error: unexpected {name}")

    def test_bad_reply_fields(self) -> None:
        """A client reports a reply with a bad field as BAD_FRAME for that call only."""
        client, _ = pair()
        events = client.receive_data(encode([1, 1]) + encode([2, 2, "x", "m"])
                                     + encode([2, 3, 5, None]) + encode([1, 4, 0]))
        self.assertEqual([list(e) for e in events], [
            [BAD_FRAME, 1, RESULT, "needs [1, id, value], got 2 fields"],
            [BAD_FRAME, 2, ERROR, "code must be an integer, got 'x'"],
            [BAD_FRAME, 3, ERROR, "message must be a string, got None"],
            [RESULT, 4, 0]])

    def test_bad_credit_and_message(self) -> None:
        """A bad field of a frame for an open stream fails that stream only."""
        client, _ = pair()
        client.open_stream(3, "T.Bidi", None)
        events = client.receive_data(encode([6, 3, 0]) + encode([4, 3]) + encode([6, 9, 0]))
        self.assertEqual([e[:3] for e in events], [(BAD_FRAME, 3, CREDIT),
                                                    (BAD_FRAME, 3, MESSAGE)])

    def test_credit_over_maximum(self) -> None:
        """Credit adding up past 2^20 is a protocol error."""
        client, _ = pair()
        client.open_stream(3, "T.Bidi", None)
        events = client.receive_data(encode([6, 3, 1 << 20]) + encode([6, 3, 1]))
        self.assertEqual(events[1][0], CONNECTION_ERROR)
        self.assertIn("credit over", events[1][3])

    def test_bad_preface(self) -> None:
        """Eight bytes that are not a preface are a PrefaceError."""
        conn = NativeConnection(client_side=False)
        self.assertEqual(conn.receive_data(b"GET / HT"[:5]), [])
        [(kind, error, code, _)] = conn.receive_data(b"GET / HTTP/1.1\r\n")
        self.assertEqual((kind, code), (CONNECTION_ERROR, 3))
        self.assertIsInstance(error, PrefaceError)

    def test_unsupported_version(self) -> None:
        """A server answers another version with UNIMPLEMENTED; a client does not check it."""
        preface = b"\x00RPCD\x02\x00\x00"
        [_, (kind, _, code, message)] = NativeConnection(False).receive_data(preface)
        self.assertEqual((kind, code), (CONNECTION_ERROR, 12))
        self.assertIn("version 2 is not supported", message)
        self.assertEqual(NativeConnection(True).receive_data(preface), [(PREFACE_RECEIVED, 2)])

    def test_length_checked_before_buffering(self) -> None:
        """A length prefix over the limit is refused before any of its body is held."""
        conn = NativeConnection(client_side=False, max_frame=1024)
        conn.receive_data(PREFACE)
        [(kind, _, _, message)] = conn.receive_data(struct.pack(">I", 2 ** 32 - 1) + b"x" * 100)
        self.assertEqual(kind, CONNECTION_ERROR)
        self.assertIn("over the 1024-byte limit", message)
        self.assertEqual(conn.buffered(), 0)

    def test_split_anywhere(self) -> None:
        """Frames split at every byte give the same events as in one read."""
        data = PREFACE + b"".join(encode(b) for b in CLIENT_FRAMES[:3])
        conn = NativeConnection(client_side=False)
        events = []
        for i in range(len(data)):
            events.extend(conn.receive_data(data[i:i + 1]))
        self.assertEqual([e[0] for e in events], [PREFACE_RECEIVED, CALL, CALL, CALL])


def _bodies(data: bytes) -> bytes:
    """Strip the length prefixes of a run of frames."""
    out, offset = [], 0
    while offset < len(data):
        (size,) = struct.unpack_from(">I", data, offset)
        out.append(data[offset + 4:offset + 4 + size])
        offset += 4 + size
    return b"".join(out)


KINDS = {CALL, RESULT, ERROR, CANCEL, MESSAGE, END, CREDIT, PING, PONG, GOAWAY,
         PREFACE_RECEIVED, BAD_FRAME, CONNECTION_ERROR}
FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_FRAME = 4096


class FuzzTests(SynchronousTestCase):
    """Hostile bytes at receive_data, in both roles."""

    def feed(self, client_side: bool, data: bytes, cuts: list[int]) -> None:
        """
        Feed data split at the cuts to a connection with streams open; every
        result must be a list of known events with at most one, final,
        CONNECTION_ERROR carrying a ProtocolError, and the bytes held never
        exceed one frame of the limit.
        """
        conn = NativeConnection(client_side, max_frame=MAX_FRAME)
        if client_side:
            conn.open_stream(3, "S.Bidi", None, window=4)
            conn.receive_data(PREFACE + encode([6, 3, 2]))
        else:
            conn.receive_data(PREFACE + b"".join(encode(b) for b in OPENING))
            conn.grant_window(7, 4)
        ended = False
        for chunk in chunks(data, cuts):
            events = conn.receive_data(chunk)
            self.assertLessEqual(conn.buffered(), MAX_FRAME + 4)
            if ended:
                self.assertEqual(events, [])
            for i, event in enumerate(events):
                self.assertIn(type(event), (list, tuple))
                self.assertIn(event[0], KINDS)
                if event[0] == CONNECTION_ERROR:
                    self.assertEqual(i, len(events) - 1)
                    self.assertIsInstance(event[1], ProtocolError)
                    ended = True
                elif event[0] in (CALL, RESULT, CANCEL, MESSAGE, END, CREDIT, BAD_FRAME):
                    self.assertEqual(type(event[1]), int)
                    self.assertTrue(0 <= event[1] < 2 ** 63)
                elif event[0] == GOAWAY:
                    self.assertEqual(type(event[3]), str)
                    ended = ended or not event[4]
        # Replies queued on the way are well-formed frames.
        conn.send_result(GOOD := 99, 1)
        out = conn.data_to_send()
        self.assertTrue(out == b"" or out.endswith(encode([1, GOOD, 1])) or conn.closed)

    @FUZZ
    @given(st.one_of(field_mutations(CLIENT_FRAMES), byte_mutations(CLIENT_FRAMES),
                     st.binary(max_size=300)),
           st.lists(st.integers(0, 10_000), max_size=8))
    def test_server_role(self, data: bytes, cuts: list[int]) -> None:
        """A server connection turns any bytes into events or one protocol error."""
        self.feed(False, data, cuts)

    @FUZZ
    @given(st.one_of(field_mutations(SERVER_FRAMES), byte_mutations(SERVER_FRAMES),
                     st.binary(max_size=300)),
           st.lists(st.integers(0, 10_000), max_size=8))
    def test_client_role(self, data: bytes, cuts: list[int]) -> None:
        """A client connection turns any bytes into events or one protocol error."""
        self.feed(True, data, cuts)

    @FUZZ
    @given(st.binary(min_size=4, max_size=40), st.lists(st.integers(0, 100), max_size=6))
    def test_preface_and_lengths(self, data: bytes, cuts: list[int]) -> None:
        """Random bytes from the first one (a preface, huge lengths) never raise."""
        for client_side in (False, True):
            conn = NativeConnection(client_side, max_frame=MAX_FRAME)
            for chunk in chunks(data, cuts):
                events = conn.receive_data(chunk)
                self.assertLessEqual(conn.buffered(), MAX_FRAME + 4)
                for event in events:
                    if event[0] == CONNECTION_ERROR:
                        self.assertIsInstance(event[1], ProtocolError)


class ImportTests(SynchronousTestCase):
    """The connection is sans-IO."""

    def test_imports_no_twisted(self) -> None:
        """Importing the connection imports nothing of Twisted and of rpcd only wire/ (and ProtocolError's module)."""
        import os
        import subprocess
        import sys
        code = ("import sys, rpcd.wire.connection; "
                "print(sorted(m for m in sys.modules if m.startswith(('twisted', 'rpcd'))))")
        checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, cwd=checkout).stdout
        modules = eval(out)
        self.assertIn("rpcd.wire.connection", modules)
        self.assertEqual([m for m in modules if not m.startswith("rpcd.wire")
                          and m not in ("rpcd", "rpcd._compat", "rpcd.errors")], [])
