"""
Tests for the gRPC server's HPACK caches (L{rpcd.wire.hpackfast}), the
request header cache (L{rpcd.wire.grpcrequest}), and the HTTP/2 bounds
that C{h2} enforces for the server (streams, header lists, CONTINUATION,
frame sizes, checked early by L{rpcd.wire.h2compat}).
"""

from __future__ import annotations

from typing import Any

from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated
from h2.frame_buffer import FrameBuffer
from hpack import Decoder, Encoder, InvalidTableIndex
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame
from twisted.trial.unittest import SynchronousTestCase

from rpcd.server.limits import Limits
from rpcd.wire import grpcrequest, h2compat, hpackfast
from rpcd.wire.grpcrequest import RequestCache
from rpcd.server.grpcserver import MAX_HEADER_LIST, GrpcServerProtocol
from rpcd.wire.hpackfast import CachedDecoder, CachedEncoder
from tests.grpcservices import pb
from tests.test_grpcwire import H2Pair

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/rpcdtest.Probe/Echo"),
           (b":authority", b"x"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]


def _neutral(headers: list[tuple[bytes, bytes]]) -> bytes:
    """
    @return: a block for C{headers} that leaves a decoder's table alone
        (every literal never indexed).
    """
    return Encoder().encode([(k, v, True) for k, v in headers])


class DecoderCacheTests(SynchronousTestCase):
    """L{CachedDecoder}: hpack's decoder with a cache of table-neutral blocks."""

    def test_cache_hit(self) -> None:
        """A block that does not touch the dynamic table is decoded once and then answered from the cache."""
        decoder = CachedDecoder(16384)
        block = _neutral(REQUEST)
        first = decoder.decode(block, raw=True)
        self.assertIs(decoder.decode(block, raw=True), first)
        self.assertEqual(decoder.hits, 1)
        self.assertEqual(list(first), REQUEST)

    def test_cache_bounded(self) -> None:
        """Distinct blocks never make the cache hold more than CACHE_BYTES; a block over CACHE_ENTRY_BYTES is never kept."""
        decoder = CachedDecoder(65536)
        for i in range(1000):
            decoder.decode(_neutral([(b"x-n", str(i).encode() * 20)]), raw=True)
            self.assertLessEqual(decoder._cached_bytes, hpackfast.CACHE_BYTES)
        self.assertLess(len(decoder._cache), 1000)
        big = _neutral([(b"x-big", b"v" * hpackfast.CACHE_ENTRY_BYTES)])
        decoder.decode(big, raw=True)
        decoder.decode(big, raw=True)
        self.assertEqual(decoder.hits, 0)

    def test_insertion_not_cached(self) -> None:
        """A block that inserts into the dynamic table is never cached, and empties the cache."""
        decoder = CachedDecoder(16384)
        plain = _neutral(REQUEST)
        decoder.decode(plain, raw=True)
        indexing = Encoder().encode(REQUEST)  # hpack's encoder indexes the literals
        decoder.decode(indexing, raw=True)
        decoder.decode(indexing, raw=True)
        self.assertEqual(decoder.hits, 0)
        decoder.decode(plain, raw=True)
        self.assertEqual(decoder.hits, 0)  # the insertion emptied the cache

    def test_table_change_invalidates(self) -> None:
        """A cached block that refers to the dynamic table means the new entry after the table changed."""
        decoder = CachedDecoder(16384)
        decoder.decode(bytes([0x40, 5]) + b"x-key" + bytes([3]) + b"one", raw=True)  # insert x-key: one
        reference = bytes([0x80 | 62])  # dynamic entry 1
        self.assertEqual(decoder.decode(reference, raw=True), ((b"x-key", b"one"),))
        self.assertEqual(decoder.decode(reference, raw=True), ((b"x-key", b"one"),))
        self.assertEqual(decoder.hits, 1)
        decoder.decode(bytes([0x40, 5]) + b"x-key" + bytes([3]) + b"two", raw=True)  # now entry 62
        self.assertEqual(decoder.decode(reference, raw=True), ((b"x-key", b"two"),))
        decoder.decode(bytes([0x20]), raw=True)  # table size update to 0: the table is empty
        self.assertRaises(InvalidTableIndex, decoder.decode, reference, raw=True)

    def test_size_update_not_cached(self) -> None:
        """A block starting with a table size update changes the table, so it is never answered from the cache."""
        decoder = CachedDecoder(16384)
        block = b"\x20" + _neutral(REQUEST)
        decoder.decode(block, raw=True)
        decoder.decode(block, raw=True)
        self.assertEqual(decoder.hits, 0)

    def test_raw_and_text_apart(self) -> None:
        """The same block decoded raw and as text gives bytes and str respectively."""
        decoder = CachedDecoder(16384)
        block = _neutral(REQUEST)
        self.assertEqual(decoder.decode(block, raw=True)[0], (b":method", b"POST"))
        self.assertEqual(decoder.decode(block)[0], (":method", "POST"))

    def test_header_list_size(self) -> None:
        """A block decoding to more than max_header_list_size fails, cached or not, once the limit is lowered."""
        decoder = CachedDecoder(16384)
        block = _neutral([(b"x-a", b"v" * 3000)])
        decoder.decode(block, raw=True)
        decoder.max_header_list_size = 1000  # as h2 does when settings change
        self.assertRaises(Exception, decoder.decode, block, raw=True)


class EncoderCacheTests(SynchronousTestCase):
    """L{CachedEncoder}: hpack's encoder answering table-neutral header lists from a cache."""

    def test_same_bytes_as_hpack(self) -> None:
        """Through insertions, evictions and size changes, every block is the one plain hpack would write."""
        cached, plain = CachedEncoder(), Encoder()
        lists = [[(b":status", b"200"), (b"content-type", b"application/grpc")],
                 [(b"grpc-status", b"0")], [(b"x-n", b"1" * 1000)], [(b"x-m", b"2" * 1000)]]
        for round_ in range(4):
            if round_ == 2:
                cached.header_table_size = plain.header_table_size = 100
            for headers in lists * 2:
                self.assertEqual(cached.encode(headers), plain.encode(headers))
        self.assertGreater(cached.hits, 0)

    def test_hit_after_indexing(self) -> None:
        """Once a reply's headers are indexed, encoding them again is a cache hit that decodes right."""
        encoder, decoder = CachedEncoder(), Decoder()
        headers = [(b":status", b"200"), (b"content-type", b"application/grpc")]
        for _ in range(3):
            self.assertEqual(decoder.decode(encoder.encode(headers), raw=True), headers)
        self.assertEqual(encoder.hits, 1)

    def test_size_update_not_cached(self) -> None:
        """A pending table size update is sent once, never replayed from the cache."""
        encoder = CachedEncoder()
        headers = [(b":status", b"200")]
        encoder.encode(headers)
        encoder.header_table_size = 0
        self.assertEqual(encoder.encode(headers)[:1], b"\x20")
        self.assertNotEqual(encoder.encode(headers)[:1], b"\x20")

    def test_never_indexed_not_cached(self) -> None:
        """A sensitive field (a 3-tuple or NeverIndexedHeaderTuple) is never answered from the cache."""
        encoder = CachedEncoder()
        for _ in range(3):
            encoder.encode([(b"x-secret", b"s", True)])
        self.assertEqual(encoder.hits, 0)


class InstallTests(SynchronousTestCase):
    """Plugging the caches into h2's connection, and the canary for the hpack internals they rely on."""

    def test_canary(self) -> None:
        """hpack still changes its tables through add() and the maxsize setter, so the caches are used."""
        self.assertTrue(hpackfast.works())

    def test_installed_and_used(self) -> None:
        """The server's h2 connection decodes and encodes through the caches, and repeated calls hit them."""
        pair = H2Pair()
        for _ in range(3):
            self.assertEqual(pair.call("/rpcdtest.Probe/Echo", pb.Req(text="hi")).status, 0)
        conn = pair.protocol.conn
        self.assertIsInstance(conn.decoder, CachedDecoder)
        self.assertIsInstance(conn.encoder, CachedEncoder)
        self.assertGreater(conn.decoder.hits, 0)
        self.assertGreater(conn.encoder.hits, 0)
        self.assertEqual(conn.decoder.max_header_list_size, MAX_HEADER_LIST)

    def test_fallback(self) -> None:
        """When the canary fails, h2's own coders stay, bounded, and calls still work."""
        self.patch(hpackfast, "_WORKS", False)
        pair = H2Pair()
        self.assertEqual(pair.call("/rpcdtest.Probe/Echo", pb.Req(text="hi")).status, 0)
        conn = pair.protocol.conn
        self.assertNotIsInstance(conn.decoder, CachedDecoder)
        self.assertNotIsInstance(conn.encoder, CachedEncoder)
        self.assertEqual(conn.decoder.max_header_list_size, MAX_HEADER_LIST)


class RequestCacheTests(SynchronousTestCase):
    """L{RequestCache}: a request's headers read once per distinct list."""

    def test_request_cache(self) -> None:
        """The same request headers (list or tuple) are read once; distinct ones never make the cache hold more than its budget."""
        cache = RequestCache()
        first = cache.read(list(REQUEST))
        self.assertIs(cache.read(tuple(REQUEST)), first)
        self.assertIs(cache.read(list(REQUEST)), first)
        self.assertEqual((first.path, first.http_error), ("/rpcdtest.Probe/Echo", None))
        for i in range(1000):
            cache.read(REQUEST + [(b"x-n", str(i).encode() * 20)])
            self.assertLessEqual(cache._bytes, grpcrequest.CACHE_BYTES)
        big = REQUEST + [(b"x-big", b"v" * grpcrequest.ENTRY_BYTES)]
        self.assertIsNot(cache.read(big), cache.read(big))


def _goaway(pair: H2Pair, data: bytes) -> ConnectionTerminated:
    """
    Feed raw frames to the server; return the GOAWAY it answered with.
    """
    pair.protocol.dataReceived(data)
    events = pair.client.receive_data(pair.transport.value())
    ends = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert ends, events
    return ends[0]


def _headers(sid: int, block: bytes, flags: Any = ("END_HEADERS",)) -> bytes:
    return HeadersFrame(sid, data=block, flags=list(flags)).serialize()


class H2BoundsTests(SynchronousTestCase):
    """The bounds h2 enforces for the server, seen through GrpcServerProtocol."""

    def test_max_concurrent_streams(self) -> None:
        """Opening more streams than SETTINGS_MAX_CONCURRENT_STREAMS ends the connection with GOAWAY."""
        pair = H2Pair(Limits(max_calls_per_connection=2))
        pair.transport.clear()
        encoder = Encoder()
        data = b"".join(_headers(sid, encoder.encode(REQUEST)) for sid in (1, 3, 5))
        self.assertEqual(_goaway(pair, data).error_code, ErrorCodes.PROTOCOL_ERROR)
        self.assertTrue(pair.transport.disconnecting)

    def test_header_list_size(self) -> None:
        """Request headers decoding to more than MAX_HEADER_LIST end the connection with ENHANCE_YOUR_CALM."""
        pair = H2Pair()
        pair.transport.clear()
        block = _neutral(REQUEST + [(b"x-big", b"v" * MAX_HEADER_LIST)])
        frames = _headers(1, block[:16000], ()) + ContinuationFrame(
            1, data=block[16000:], flags=["END_HEADERS"]).serialize()
        self.assertEqual(_goaway(pair, frames).error_code, ErrorCodes.ENHANCE_YOUR_CALM)

    def test_continuation_flood(self) -> None:
        """A header block in too many CONTINUATION frames ends the connection with GOAWAY."""
        pair = H2Pair()
        pair.transport.clear()
        data = _headers(1, b"", ()) + b"".join(
            ContinuationFrame(1, data=b"").serialize() for _ in range(100))
        self.assertNotEqual(_goaway(pair, data).error_code, ErrorCodes.NO_ERROR)
        self.assertTrue(pair.transport.disconnecting)

    def test_frame_too_large(self) -> None:
        """A frame longer than SETTINGS_MAX_FRAME_SIZE ends the connection with FRAME_SIZE_ERROR before its payload is read."""
        pair = H2Pair()
        pair.transport.clear()
        frame = DataFrame(1, data=b"x" * 20000).serialize()
        self.assertEqual(_goaway(pair, frame[:100]).error_code, ErrorCodes.FRAME_SIZE_ERROR)

    def test_frame_check_canary(self) -> None:
        """h2's frame buffer still keeps the next frame at the start of its bytes, so the early length check is in place."""
        self.assertTrue(h2compat.works())
        pair = H2Pair()
        self.assertIsInstance(pair.protocol.conn.incoming_buffer, h2compat.EarlyFrameBuffer)

    def test_frame_check_fallback(self) -> None:
        """When the canary fails, h2's own buffer stays and still refuses an overlong frame once it is whole."""
        self.patch(h2compat, "_WORKS", False)
        pair = H2Pair()
        self.assertIs(type(pair.protocol.conn.incoming_buffer), FrameBuffer)
        pair.transport.clear()
        frame = DataFrame(1, data=b"x" * 20000).serialize()
        self.assertEqual(_goaway(pair, frame).error_code, ErrorCodes.FRAME_SIZE_ERROR)

    def test_h2_connection(self) -> None:
        """The server's connection is h2's own H2Connection (not a hand-written one)."""
        from h2.connection import H2Connection
        pair = H2Pair()
        self.assertIs(type(pair.protocol.conn), H2Connection)
        self.assertIsInstance(pair.protocol, GrpcServerProtocol)
