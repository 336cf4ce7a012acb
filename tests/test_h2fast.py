"""
rpcd's HTTP/2 server fast path (L{rpcd.wire.h2fast}) and its HPACK helpers
(L{rpcd.wire.hpackfast}), byte by byte: no sockets, no reactor.
"""

from __future__ import annotations

import struct
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    PingReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import FlowControlError, StreamClosedError
from hpack import Decoder, Encoder, InvalidTableIndex
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from rpcd.wire import grpcrequest, h2fast, hpackfast
from rpcd.wire.grpcrequest import RequestCache
from rpcd.wire.h2fast import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    HTTP2Error,
    FastH2Connection,
    frame,
)
from rpcd.wire.hpackfast import CachedDecoder, encode_block

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a.B/C"),
           (b":authority", b"x"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]

START = PREFACE + frame(SETTINGS, 0, 0)


def _events(conn: FastH2Connection, data: bytes) -> list[Any]:
    return conn.receive_data(data)


def _started(**kwargs: Any) -> FastH2Connection:
    conn = FastH2Connection(**kwargs)
    conn.initiate_connection()
    conn.receive_data(START)
    conn.data_to_send()
    return conn


def _frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """
    @return: C{(type, flags, stream, payload)} of each frame in C{data}.
    """
    out = []
    while data:
        high, low, kind, flags, sid = struct.unpack_from(">HBBBL", data)
        length = high << 8 | low
        out.append((kind, flags, sid, data[9:9 + length]))
        data = data[9 + length:]
    return out


def _error(test: SynchronousTestCase, conn: FastH2Connection, data: bytes, code: int) -> None:
    error = test.assertRaises(HTTP2Error, conn.receive_data, data)
    test.assertEqual(error.error_code, code, str(error))


class FrameReaderTests(SynchronousTestCase):
    """The frame reader: preface, lengths, splits, padding, priority."""

    def test_preface_required(self) -> None:
        """Bytes that are not the client preface are a protocol error, even before all 24 arrived."""
        _error(self, FastH2Connection(), b"GET / HTTP/1.1\r\n", ErrorCodes.PROTOCOL_ERROR)
        _error(self, FastH2Connection(), b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", ErrorCodes.PROTOCOL_ERROR)

    def test_settings_first(self) -> None:
        """The first frame after the preface must be SETTINGS."""
        _error(self, FastH2Connection(), PREFACE + frame(PING, 0, 0, b"12345678"),
               ErrorCodes.PROTOCOL_ERROR)

    def test_any_split(self) -> None:
        """The same bytes cut anywhere give the same events."""
        body = frame(HEADERS, END_HEADERS, 1, encode_block(REQUEST)) + frame(
            DATA, END_STREAM, 1, b"hello") + frame(PING, 0, 0, b"abcdefgh")
        whole = [type(e) for e in _started().receive_data(body)]
        self.assertEqual(whole, [RequestReceived, DataReceived, StreamEnded, PingReceived])
        for cut in range(1, len(body)):
            conn = _started()
            got = conn.receive_data(body[:cut]) + conn.receive_data(body[cut:])
            self.assertEqual([type(e) for e in got], whole, cut)

    def test_frame_too_large(self) -> None:
        """A frame header announcing more than 16384 bytes is refused before its payload arrives."""
        conn = _started()
        _error(self, conn, b"\x00\x40\x01" + bytes((DATA, 0)) + b"\0\0\0\1",
               ErrorCodes.FRAME_SIZE_ERROR)

    def test_fixed_lengths(self) -> None:
        """PING, WINDOW_UPDATE, RST_STREAM, PRIORITY and SETTINGS of the wrong length are FRAME_SIZE_ERROR."""
        for data in (frame(PING, 0, 0, b"1234567"), frame(WINDOW_UPDATE, 0, 0, b"\0\0\1"),
                     frame(RST_STREAM, 0, 1, b"\0\0\0\0\0"), frame(PRIORITY, 0, 1, b"\0\0\0\0"),
                     frame(SETTINGS, 0, 0, b"\0\1\0\0\0"), frame(SETTINGS, 1, 0, b"\0")):
            conn = _started()
            conn.receive_data(frame(HEADERS, END_HEADERS, 1, encode_block(REQUEST)))
            _error(self, conn, data, ErrorCodes.FRAME_SIZE_ERROR)

    def test_stream_zero(self) -> None:
        """DATA, HEADERS, RST_STREAM and PRIORITY on stream 0, PING and SETTINGS on a stream, are protocol errors."""
        for data in (frame(DATA, 0, 0, b"x"), frame(HEADERS, END_HEADERS, 0, b""),
                     frame(RST_STREAM, 0, 0, b"\0\0\0\0"), frame(PRIORITY, 0, 0, b"\0" * 5),
                     frame(PING, 0, 1, b"12345678"), frame(SETTINGS, 0, 1, b"")):
            _error(self, _started(), data, ErrorCodes.PROTOCOL_ERROR)

    def test_padding(self) -> None:
        """Padded HEADERS and DATA lose their padding; DATA's flow-controlled length counts it."""
        conn = _started()
        block = encode_block(REQUEST)
        padded = frame(HEADERS, END_HEADERS | PADDED, 1, b"\x03" + block + b"\0\0\0")
        data = frame(DATA, PADDED | END_STREAM, 1, b"\x04" + b"hi" + b"\0" * 4)
        request, received, _ = conn.receive_data(padded + data)
        self.assertEqual(list(request.headers), REQUEST)
        self.assertEqual((received.data, received.flow_controlled_length), (b"hi", 7))

    def test_bad_padding(self) -> None:
        """Padding as long as the frame (or no pad length at all) is refused."""
        conn = _started()
        conn.receive_data(frame(HEADERS, END_HEADERS, 1, encode_block(REQUEST)))
        [empty] = conn.receive_data(frame(DATA, PADDED, 1, b"\x05abcde"))  # all padding: fine
        self.assertEqual((empty.data, empty.flow_controlled_length), (b"", 6))
        _error(self, conn, frame(DATA, PADDED, 1, b"\x06abcde"), ErrorCodes.PROTOCOL_ERROR)
        _error(self, _started(), frame(HEADERS, PADDED | END_HEADERS, 1, b"\x01"),
               ErrorCodes.PROTOCOL_ERROR)
        _error(self, _started(), frame(HEADERS, PADDED | END_HEADERS, 1, b""),
               ErrorCodes.FRAME_SIZE_ERROR)

    def test_priority(self) -> None:
        """HEADERS with the PRIORITY flag (and padding) decode; PRIORITY frames are accepted and ignored."""
        conn = _started()
        block = encode_block(REQUEST)
        headers = frame(HEADERS, END_HEADERS | PRIORITY_FLAG | PADDED, 1,
                        b"\x02" + b"\0\0\0\0\x10" + block + b"\0\0")
        [request] = conn.receive_data(headers + frame(PRIORITY, 0, 3, b"\0\0\0\1\x10"))
        self.assertEqual(list(request.headers), REQUEST)
        _error(self, _started(), frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, b"\0\0"),
               ErrorCodes.FRAME_SIZE_ERROR)

    def test_continuation(self) -> None:
        """A header block split over HEADERS and CONTINUATION frames decodes as one."""
        block = encode_block(REQUEST)
        conn = _started()
        data = (frame(HEADERS, END_STREAM, 1, block[:3]) + frame(CONTINUATION, 0, 1, block[3:9])
                + frame(CONTINUATION, END_HEADERS, 1, block[9:]))
        request, ended = conn.receive_data(data)
        self.assertEqual(list(request.headers), REQUEST)
        self.assertIsInstance(ended, StreamEnded)

    def test_continuation_misplaced(self) -> None:
        """CONTINUATION with no open header block, on another stream, or another frame inside a block, is a protocol error."""
        block = encode_block(REQUEST)
        _error(self, _started(), frame(CONTINUATION, END_HEADERS, 1, block),
               ErrorCodes.PROTOCOL_ERROR)
        _error(self, _started(), frame(HEADERS, 0, 1, block[:3])
               + frame(CONTINUATION, END_HEADERS, 3, block[3:]), ErrorCodes.PROTOCOL_ERROR)
        _error(self, _started(), frame(HEADERS, 0, 1, block[:3]) + frame(PING, 0, 0, b"12345678"),
               ErrorCodes.PROTOCOL_ERROR)

    def test_continuation_flood(self) -> None:
        """Endless empty CONTINUATION frames, or a block over MAX_BLOCK, end the connection with ENHANCE_YOUR_CALM."""
        conn = _started()
        conn.receive_data(frame(HEADERS, 0, 1, b""))
        _error(self, conn, frame(CONTINUATION, 0, 1, b"") * (h2fast.MAX_CONTINUATIONS + 1),
               ErrorCodes.ENHANCE_YOUR_CALM)
        conn = _started()
        conn.receive_data(frame(HEADERS, 0, 1, b"\0" * 16384))
        _error(self, conn, frame(CONTINUATION, 0, 1, b"\0" * 16384) * 4,
               ErrorCodes.ENHANCE_YOUR_CALM)

    def test_unknown_frame_ignored(self) -> None:
        """A frame of an unknown type is skipped."""
        conn = _started()
        self.assertEqual(conn.receive_data(frame(0x42, 0xFF, 7, b"whatever")), [])

    def test_bad_hpack(self) -> None:
        """A header block that is not HPACK is a COMPRESSION_ERROR."""
        _error(self, _started(), frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff\xff\xff\x7f"),
               ErrorCodes.COMPRESSION_ERROR)

    def test_header_list_size(self) -> None:
        """A header list over the maximum decoded size ends the connection with ENHANCE_YOUR_CALM."""
        conn = _started(max_header_list_size=1000)
        block = encode_block([*REQUEST, ("x-big", "v" * 2000)])
        _error(self, conn, frame(HEADERS, END_HEADERS, 1, block), ErrorCodes.ENHANCE_YOUR_CALM)


class StreamTests(SynchronousTestCase):
    """Stream ids, states and the concurrent-stream cap."""

    def test_stream_ids(self) -> None:
        """Even stream ids and frames on streams never opened are protocol errors."""
        block = encode_block(REQUEST)
        _error(self, _started(), frame(HEADERS, END_HEADERS, 2, block), ErrorCodes.PROTOCOL_ERROR)
        _error(self, _started(), frame(DATA, 0, 5, b"x"), ErrorCodes.PROTOCOL_ERROR)
        _error(self, _started(), frame(RST_STREAM, 0, 5, b"\0\0\0\0"), ErrorCodes.PROTOCOL_ERROR)

    def test_max_concurrent_streams(self) -> None:
        """Opening more streams than SETTINGS_MAX_CONCURRENT_STREAMS is refused; a closed one frees its place."""
        conn = _started(max_concurrent_streams=2)
        block = encode_block(REQUEST)
        conn.receive_data(frame(HEADERS, END_HEADERS | END_STREAM, 1, block)
                          + frame(HEADERS, END_HEADERS, 3, block))
        conn.send_headers(1, [(":status", "200")], end_stream=True)
        conn.receive_data(frame(HEADERS, END_HEADERS, 5, block))
        _error(self, conn, frame(HEADERS, END_HEADERS, 7, block), ErrorCodes.PROTOCOL_ERROR)

    def test_reset_by_peer(self) -> None:
        """RST_STREAM closes the stream and is reported; later frames on it are dropped, their DATA given back."""
        conn = _started()
        conn.receive_data(frame(HEADERS, END_HEADERS, 1, encode_block(REQUEST)))
        [reset] = conn.receive_data(frame(RST_STREAM, 0, 1, b"\0\0\0\x08"))
        self.assertEqual((reset.stream_id, reset.error_code), (1, ErrorCodes.CANCEL))
        self.assertRaises(StreamClosedError, conn.send_data, 1, b"x")
        window = conn.recv.size
        self.assertEqual(conn.receive_data(frame(DATA, 0, 1, b"x" * 100)), [])
        self.assertEqual(conn.recv.size + conn.recv.processed, window)

    def test_data_after_end(self) -> None:
        """DATA after the peer ended the stream resets it with STREAM_CLOSED and reports it."""
        conn = _started()
        conn.receive_data(frame(HEADERS, END_HEADERS | END_STREAM, 1, encode_block(REQUEST)))
        [reset] = conn.receive_data(frame(DATA, 0, 1, b"late"))
        self.assertEqual((reset.error_code, reset.remote_reset), (ErrorCodes.STREAM_CLOSED, False))
        self.assertIn((RST_STREAM, 0, 1, struct.pack(">L", ErrorCodes.STREAM_CLOSED)),
                      _frames(conn.data_to_send()))

    def test_trailers(self) -> None:
        """A second header block with END_STREAM is the request's trailers."""
        conn = _started()
        conn.receive_data(frame(HEADERS, END_HEADERS, 1, encode_block(REQUEST)))
        trailers, ended = conn.receive_data(frame(HEADERS, END_HEADERS | END_STREAM, 1,
                                                  encode_block([("x-t", "1")])))
        self.assertIsInstance(trailers, TrailersReceived)
        self.assertIsInstance(ended, StreamEnded)

    def test_reset_stream(self) -> None:
        """reset_stream sends RST_STREAM once; a second time raises StreamClosedError."""
        conn = _started()
        conn.receive_data(frame(HEADERS, END_HEADERS, 1, encode_block(REQUEST)))
        conn.reset_stream(1, ErrorCodes.NO_ERROR)
        self.assertEqual(_frames(conn.data_to_send()), [(RST_STREAM, 0, 1, b"\0\0\0\0")])
        self.assertRaises(StreamClosedError, conn.reset_stream, 1)


class FlowControlTests(SynchronousTestCase):
    """Windows both ways."""

    def test_connection_window(self) -> None:
        """DATA beyond the connection's receive window is a FLOW_CONTROL_ERROR."""
        conn = _started()
        block = encode_block(REQUEST)
        data = b"".join(frame(HEADERS, END_HEADERS, sid, block) + frame(DATA, 0, sid, b"x" * 16384)
                        for sid in (1, 3, 5, 7))
        _error(self, conn, data + frame(HEADERS, END_HEADERS, 9, block)
               + frame(DATA, 0, 9, b"x" * 16384), ErrorCodes.FLOW_CONTROL_ERROR)

    def test_stream_window(self) -> None:
        """DATA beyond a stream's window resets that stream with FLOW_CONTROL_ERROR; the connection goes on."""
        conn = _started()
        conn.increment_flow_control_window(1 << 20)
        conn.receive_data(frame(HEADERS, END_HEADERS, 1, encode_block(REQUEST)))
        events = conn.receive_data(frame(DATA, 0, 1, b"x" * 16384) * 3
                                   + frame(DATA, 0, 1, b"x" * 16383) + frame(DATA, 0, 1, b"x"))
        self.assertEqual([type(e) for e in events], [DataReceived] * 4 + [StreamReset])
        self.assertEqual(events[-1].error_code, ErrorCodes.FLOW_CONTROL_ERROR)
        self.assertNotIn(1, conn.streams)

    def test_window_given_back_in_halves(self) -> None:
        """Acknowledged data is given back with one WINDOW_UPDATE per half window, not per frame."""
        conn = _started()
        conn.receive_data(frame(HEADERS, END_HEADERS, 1, encode_block(REQUEST)))
        conn.data_to_send()
        for _ in range(3):
            conn.receive_data(frame(DATA, 0, 1, b"x" * 10000))
            conn.acknowledge_received_data(10000, 1)
        self.assertEqual(conn.data_to_send(), b"")
        conn.receive_data(frame(DATA, 0, 1, b"x" * 10000))
        conn.acknowledge_received_data(10000, 1)
        self.assertEqual(sorted(_frames(conn.data_to_send())),
                         [(WINDOW_UPDATE, 0, 0, struct.pack(">L", 40000)),
                          (WINDOW_UPDATE, 0, 1, struct.pack(">L", 40000))])

    def test_send_window(self) -> None:
        """send_data never exceeds the peer's windows; WINDOW_UPDATE and INITIAL_WINDOW_SIZE open them."""
        conn = _started()
        conn.receive_data(frame(HEADERS, END_HEADERS, 1, encode_block(REQUEST)))
        conn.send_headers(1, [(":status", "200")])
        for _ in range(4):
            conn.send_data(1, b"x" * 16000)
        self.assertEqual(conn.local_flow_control_window(1), 65535 - 64000)
        self.assertRaises(FlowControlError, conn.send_data, 1, b"x" * 2000)
        [update] = conn.receive_data(frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", 100000)))
        self.assertIsInstance(update, WindowUpdated)
        self.assertEqual(conn.local_flow_control_window(1), 65535 - 64000)  # the stream's
        [update] = conn.receive_data(frame(SETTINGS, 0, 0, struct.pack(">HL", 4, 100000)))
        self.assertEqual(conn.local_flow_control_window(1), 100000 - 64000)
        self.assertRaises(FlowControlError, conn.send_data, 1, b"x" * 16385)  # frame size

    def test_window_update_errors(self) -> None:
        """WINDOW_UPDATE of 0 on the connection, or past 2^31-1, is a connection error; on a stream a stream error."""
        _error(self, _started(), frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\0"), ErrorCodes.PROTOCOL_ERROR)
        _error(self, _started(), frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", (1 << 31) - 1)),
               ErrorCodes.FLOW_CONTROL_ERROR)
        conn = _started()
        conn.receive_data(frame(HEADERS, END_HEADERS, 1, encode_block(REQUEST)))
        [reset] = conn.receive_data(frame(WINDOW_UPDATE, 0, 1, b"\0\0\0\0"))
        self.assertEqual(reset.error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_settings_errors(self) -> None:
        """Out-of-range SETTINGS values are connection errors; good SETTINGS are acknowledged."""
        _error(self, _started(), frame(SETTINGS, 0, 0, struct.pack(">HL", 4, 1 << 31)),
               ErrorCodes.FLOW_CONTROL_ERROR)
        _error(self, _started(), frame(SETTINGS, 0, 0, struct.pack(">HL", 5, 100)),
               ErrorCodes.PROTOCOL_ERROR)
        _error(self, _started(), frame(SETTINGS, 0, 0, struct.pack(">HL", 2, 2)),
               ErrorCodes.PROTOCOL_ERROR)
        conn = _started()
        conn.receive_data(frame(SETTINGS, 0, 0, struct.pack(">HL", 5, 32768)))
        self.assertEqual(conn.max_outbound_frame_size, 32768)
        self.assertEqual(_frames(conn.data_to_send()), [(SETTINGS, 1, 0, b"")])


class HpackTests(SynchronousTestCase):
    """The decoded-block cache and the table-free encoder."""

    def test_cache_hit(self) -> None:
        """A block that does not touch the dynamic table is decoded once and then answered from the cache."""
        decoder = CachedDecoder(16384)
        block = encode_block(REQUEST)
        first = decoder.decode(block)
        self.assertIs(decoder.decode(block), first)
        self.assertEqual(decoder.hits, 1)
        self.assertEqual(list(first), REQUEST)

    def test_cache_bounded(self) -> None:
        """Distinct blocks never make the cache hold more than CACHE_BYTES; a block over CACHE_ENTRY_BYTES is never kept."""
        decoder = CachedDecoder(65536)
        for i in range(1000):
            decoder.decode(encode_block([("x-n", str(i) * 20)]))
            self.assertLessEqual(decoder._cached_bytes, hpackfast.CACHE_BYTES)
        self.assertLess(len(decoder._cache), 1000)
        big = encode_block([("x-big", "v" * hpackfast.CACHE_ENTRY_BYTES)])
        decoder.decode(big)
        decoder.decode(big)
        self.assertEqual(decoder.hits, 0)

    def test_request_cache(self) -> None:
        """The same request headers are read once; distinct ones never make the cache hold more than its budget."""
        cache = RequestCache()
        headers = tuple(REQUEST)
        first = cache.read(headers)
        self.assertIs(cache.read(tuple(REQUEST)), first)
        self.assertEqual((first.path, first.http_error), ("/a.B/C", None))
        for i in range(1000):
            cache.read(headers + ((b"x-n", str(i).encode() * 20),))
            self.assertLessEqual(cache._bytes, grpcrequest.CACHE_BYTES)
        self.assertIsNot(cache.read(list(REQUEST)), cache.read(list(REQUEST)))  # lists: not kept

    def test_insertion_not_cached(self) -> None:
        """A block that inserts into the dynamic table is never cached, and empties the cache."""
        decoder = CachedDecoder(16384)
        plain = encode_block(REQUEST)
        decoder.decode(plain)
        indexing = Encoder().encode(REQUEST)  # hpack's encoder indexes the literals
        decoder.decode(indexing)
        decoder.decode(indexing)
        self.assertEqual(decoder.hits, 0)
        decoder.decode(plain)
        self.assertEqual(decoder.hits, 0)  # the insertion emptied the cache

    def test_table_change_invalidates(self) -> None:
        """A cached block that refers to the dynamic table means the new entry after the table changed."""
        decoder = CachedDecoder(16384)
        decoder.decode(bytes([0x40, 5]) + b"x-key" + bytes([3]) + b"one")  # insert x-key: one
        reference = bytes([0x80 | 62])  # dynamic entry 1
        self.assertEqual(decoder.decode(reference), ((b"x-key", b"one"),))
        self.assertEqual(decoder.decode(reference), ((b"x-key", b"one"),))
        self.assertEqual(decoder.hits, 1)
        decoder.decode(bytes([0x40, 5]) + b"x-key" + bytes([3]) + b"two")  # now entry 62
        self.assertEqual(decoder.decode(reference), ((b"x-key", b"two"),))
        decoder.decode(bytes([0x20]))  # table size update to 0: the table is empty
        self.assertRaises(InvalidTableIndex, decoder.decode, reference)

    def test_size_update_not_cached(self) -> None:
        """A block starting with a table size update changes the table, so it is never answered from the cache."""
        decoder = CachedDecoder(16384)
        block = hpackfast.TABLE_SIZE_ZERO + encode_block(REQUEST)
        decoder.decode(block)
        decoder.decode(block)
        self.assertEqual(decoder.hits, 0)

    def test_encoder_leaves_the_table_alone(self) -> None:
        """encode_block's blocks decode with a stock decoder and add nothing to its dynamic table."""
        decoder = Decoder()
        headers = [(":status", "200"), ("content-type", "application/grpc"),
                   ("grpc-status", "0"), ("x-" + "long" * 40, "v" * 300), (":status", "404")]
        for _ in range(2):
            self.assertEqual(decoder.decode(encode_block(headers)), headers)
        self.assertEqual(len(decoder.header_table.dynamic_entries), 0)

    def test_table_size_update_sent(self) -> None:
        """After the peer changes SETTINGS_HEADER_TABLE_SIZE, rpcd's next header block starts with a size update to 0."""
        conn = _started()
        conn.receive_data(frame(HEADERS, END_HEADERS, 1, encode_block(REQUEST))
                          + frame(SETTINGS, 0, 0, struct.pack(">HL", 1, 0)))
        conn.data_to_send()
        conn.send_headers(1, [(":status", "200")])
        conn.send_headers(1, [("grpc-status", "0")], end_stream=True)
        first, second = _frames(conn.data_to_send())
        self.assertEqual(first[3], hpackfast.TABLE_SIZE_ZERO + encode_block([(":status", "200")]))
        self.assertEqual(second[3], encode_block([("grpc-status", "0")]))


class WithH2ClientTests(SynchronousTestCase):
    """h2's own client on the other end."""

    def test_round_trip(self) -> None:
        """An h2 client's request arrives whole; the reply (with a header block larger than a frame) reaches it."""
        client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        client.initiate_connection()
        client.send_headers(1, REQUEST)
        client.send_data(1, b"ping", end_stream=True)
        server = FastH2Connection()
        server.initiate_connection()
        request, data, ended = server.receive_data(client.data_to_send())
        self.assertEqual(list(request.headers), REQUEST)
        server.send_headers(1, [(":status", "200"), ("x-big", "y" * 40000)])
        server.send_data(1, b"pong")
        server.send_headers(1, [("grpc-status", "0")], end_stream=True)
        events = client.receive_data(server.data_to_send())
        kinds = [type(e) for e in events]
        self.assertIn(ResponseReceived, kinds)
        self.assertIn(TrailersReceived, kinds)
        self.assertEqual(b"".join(e.data for e in events if isinstance(e, DataReceived)), b"pong")
        self.assertNotIn(1, server.streams)


def _client_bytes() -> bytes:
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    for sid in (1, 3):
        client.send_headers(sid, REQUEST)
        client.send_data(sid, b"body" * 10, end_stream=sid == 1)
    client.reset_stream(3)
    client.ping(b"01234567")
    client.increment_flow_control_window(1000)
    return client.data_to_send()


class FuzzTests(SynchronousTestCase):
    """Random and mutated input: events or a HTTP2Error, nothing else."""

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.binary(max_size=200),
                     st.tuples(st.integers(len(START), len(_client_bytes()) - 1),
                               st.binary(min_size=1, max_size=8)).map(
                         lambda t: _client_bytes()[:t[0]] + t[1] + _client_bytes()[t[0] + len(t[1]):])),
           st.integers(1, 64))
    def test_mutated(self, data: bytes, step: int) -> None:
        """Whatever bytes arrive, in whatever pieces, the connection gives events or raises its HTTP2Error."""
        conn = FastH2Connection(max_concurrent_streams=4, max_header_list_size=1000)
        conn.initiate_connection()
        try:
            for i in range(0, len(data), step):
                conn.receive_data(data[i:i + step])
                for sid in list(conn.streams):
                    conn.acknowledge_received_data(1, sid)
        except HTTP2Error:
            pass
        self.assertLessEqual(len(conn._buffer), 9 + h2fast.MAX_FRAME_SIZE + step)
        self.assertLessEqual(len(conn.streams), 4)
