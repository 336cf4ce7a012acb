"""
gRPC's message layer without HTTP/2 or sockets (L{rpcd.wire.grpcmsg}).
"""

from __future__ import annotations

import base64
import gzip

from twisted.trial.unittest import SynchronousTestCase

from rpcd.errors import Code
from rpcd.wire import sniff
from rpcd.wire.grpcmsg import (
    MessageError,
    MessageReader,
    b64decode,
    decode_metadata,
    encode_message,
    encode_metadata,
    encode_status,
    encode_timeout,
    is_grpc_content_type,
    parse_timeout,
    percent_decode,
    percent_encode,
    status_headers,
)


class MessageReaderTests(SynchronousTestCase):
    """Splitting a call's body into length-prefixed messages."""

    def test_split_anywhere(self) -> None:
        """Messages come out whole however the bytes are split across DATA frames."""
        wire = encode_message(b"hello") + encode_message(b"") + encode_message(b"x" * 300)
        for cut in range(len(wire) + 1):
            reader = MessageReader(1024)
            got = list(reader.feed(wire[:cut])) + list(reader.feed(wire[cut:]))
            self.assertEqual(got, [b"hello", b"", b"x" * 300], cut)
            self.assertEqual(reader.pending, 0)

    def test_too_large_before_buffering(self) -> None:
        """A length over the maximum is refused from the prefix alone, RESOURCE_EXHAUSTED."""
        reader = MessageReader(100)
        with self.assertRaises(MessageError) as caught:
            list(reader.feed(b"\x00\x00\x00\x00\x65"))
        self.assertEqual(caught.exception.code, Code.RESOURCE_EXHAUSTED)
        self.assertIn("larger than max (101 vs. 100)", str(caught.exception))

    def test_gzip(self) -> None:
        """A message flagged compressed is gunzipped when the call's encoding is gzip."""
        reader = MessageReader(1024, "gzip")
        self.assertEqual(list(reader.feed(encode_message(b"abc" * 50, compress=True))), [b"abc" * 50])

    def test_gzip_bomb(self) -> None:
        """A gzip message that inflates past the maximum is refused with RESOURCE_EXHAUSTED."""
        bomb = gzip.compress(b"\0" * 100_000)
        reader = MessageReader(1000, "gzip")
        with self.assertRaises(MessageError) as caught:
            list(reader.feed(b"\x01" + len(bomb).to_bytes(4, "big") + bomb))
        self.assertEqual(caught.exception.code, Code.RESOURCE_EXHAUSTED)

    def test_compressed_without_encoding(self) -> None:
        """A compressed flag on a call without grpc-encoding is an INTERNAL error."""
        with self.assertRaises(MessageError) as caught:
            list(MessageReader(100).feed(b"\x01\x00\x00\x00\x01x"))
        self.assertEqual(caught.exception.code, Code.INTERNAL)

    def test_bad_flag(self) -> None:
        """A compressed flag other than 0 or 1 is refused."""
        with self.assertRaises(MessageError):
            list(MessageReader(100).feed(b"\x02\x00\x00\x00\x00"))


class HeaderTests(SynchronousTestCase):
    """grpc-timeout, metadata and status headers."""

    def test_timeouts(self) -> None:
        """Every unit of grpc-timeout reads as seconds."""
        self.assertEqual(parse_timeout("2H"), 7200.0)
        self.assertEqual(parse_timeout("3M"), 180.0)
        self.assertEqual(parse_timeout("1S"), 1.0)
        self.assertAlmostEqual(parse_timeout("250m"), 0.25)
        self.assertAlmostEqual(parse_timeout("99999999u"), 99.999999)
        self.assertAlmostEqual(parse_timeout("5n"), 5e-9)

    def test_bad_timeouts(self) -> None:
        """Too many digits, no unit or a bad unit are refused, quoting the value."""
        for bad in ("123456789S", "10", "10s", "-1S", "1.5S", ""):
            with self.assertRaises(ValueError) as caught:
                parse_timeout(bad)
            self.assertIn(repr(bad), str(caught.exception))

    def test_timeout_round_trip(self) -> None:
        """An encoded timeout reads back as the same number of seconds, to its unit."""
        for seconds in (0.0, 0.001, 1.5, 59.0, 3600.0, 1e6):
            self.assertAlmostEqual(parse_timeout(encode_timeout(seconds)), seconds, places=5)

    def test_metadata_in(self) -> None:
        """Metadata leaves out pseudo and gRPC headers and decodes -bin values with or without padding."""
        metadata = decode_metadata([
            (b":path", b"/a.B/C"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
            (b"grpc-timeout", b"1S"), (b"x-user", b"ann"), (b"x-user", b"bob"),
            (b"x-raw-bin", b"AAEC"), (b"x-pad-bin", b"AA=="), (b"x-nopad-bin", b"AA"),
        ])
        self.assertEqual(metadata, {"x-user": "ann, bob", "x-raw-bin": b"\0\1\2",
                                    "x-pad-bin": b"\0", "x-nopad-bin": b"\0"})

    def test_bad_bin(self) -> None:
        """A -bin value that is not base64 is refused, naming the key."""
        with self.assertRaises(ValueError) as caught:
            decode_metadata([(b"x-bad-bin", b"!!!")])
        self.assertIn("x-bad-bin", str(caught.exception))
        self.assertEqual(b64decode(b"AQ"), b"\1")

    def test_metadata_out(self) -> None:
        """Reply metadata: lower-cased keys, bytes as unpadded base64 under a -bin key."""
        self.assertEqual(encode_metadata({"X-Echo": "hi", "x-data": b"\0\1"}),
                         [("x-echo", "hi"), ("x-data-bin", "AAE")])

    def test_metadata_out_refused(self) -> None:
        """Reserved keys, grpc- keys and non-ASCII text values are refused."""
        for bad in ({"grpc-status": "0"}, {"content-type": "x"}, {"a b": "x"}, {"x": "caf\u00e9"}):
            with self.assertRaises(ValueError):
                encode_metadata(bad)

    def test_percent(self) -> None:
        """grpc-message escapes '%' and non-ASCII as UTF-8 bytes and reads back."""
        self.assertEqual(percent_encode("100% caf\u00e9\n"), "100%25 caf%C3%A9%0A")
        self.assertEqual(percent_decode("100%25 caf%C3%A9%0A"), "100% caf\u00e9\n")
        self.assertEqual(percent_decode("bad %zz %4"), "bad %zz %4")

    def test_status(self) -> None:
        """The status trailers carry the code, the encoded message and unpadded details."""
        self.assertEqual(status_headers(0), [("grpc-status", "0")])
        self.assertEqual(status_headers(5, "no such key: 50%", b"\x08\x05"),
                         [("grpc-status", "5"), ("grpc-message", "no such key: 50%25"),
                          ("grpc-status-details-bin", base64.b64encode(b"\x08\x05").decode().rstrip("="))])

    def test_encode_status(self) -> None:
        """encode_status writes google.rpc.Status as protobuf parses it."""
        from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
        pool = descriptor_pool.DescriptorPool()
        pool.AddSerializedFile(any_pb2.DESCRIPTOR.serialized_pb)
        file = descriptor_pb2.FileDescriptorProto(
            name="status_test.proto", package="t", dependency=["google/protobuf/any.proto"],
            syntax="proto3")
        message = file.message_type.add(name="Status")
        message.field.add(name="code", number=1, type=5, label=1)
        message.field.add(name="message", number=2, type=9, label=1)
        message.field.add(name="details", number=3, type=11, label=3,
                          type_name=".google.protobuf.Any")
        pool.Add(file)
        status_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Status"))
        status = status_class.FromString(encode_status(7, "nope \u00e9", [("type.googleapis.com/x.Y", b"\1\2")]))
        self.assertEqual((status.code, status.message), (7, "nope \u00e9"))
        self.assertEqual([(d.type_url, d.value) for d in status.details],
                         [("type.googleapis.com/x.Y", b"\1\2")])

    def test_content_type(self) -> None:
        """application/grpc and its +codec and parameter forms are gRPC; others are not."""
        for good in ("application/grpc", "application/grpc+proto", "Application/GRPC; x=y"):
            self.assertTrue(is_grpc_content_type(good), good)
        for bad in ("application/json", "application/grpc-web", ""):
            self.assertFalse(is_grpc_content_type(bad), bad)


class SniffTests(SynchronousTestCase):
    """The HTTP/2 client preface among the other first bytes."""

    def test_preface(self) -> None:
        """The HTTP/2 preface is gRPC; its prefixes wait for more; POST and PUT stay HTTP."""
        preface = sniff.H2_PREFACE
        self.assertEqual(sniff.sniff(preface + b"\0\0"), sniff.GRPC)
        for n in range(1, len(preface)):
            self.assertIsNone(sniff.sniff(preface[:n]), n)
        self.assertEqual(sniff.sniff(b"POST /rpc HTTP/1.1\r\n"), sniff.HTTP)
        self.assertEqual(sniff.sniff(b"PUT / HTTP/1.1\r\n"), sniff.HTTP)
        self.assertEqual(sniff.sniff(b"PRX"), sniff.GOB)
        self.assertIn(sniff.GRPC, sniff.ALL)
