"""
gRPC's own layer over HTTP/2, without the HTTP/2 part: length-prefixed
messages, C{grpc-timeout}, metadata and status headers.

HTTP/2 itself (frames, HPACK, flow control) is the C{h2} library's job, in
L{rpcd.server.grpcserver}.  Nothing here does I/O or imports Twisted.

A message on the wire is::

    1 byte   compressed flag (0 or 1: compressed with the call's grpc-encoding)
    4 bytes  length, big-endian
    N bytes  the (protobuf) message

See U{https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md}.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import zlib
from typing import Any, Iterator

from rpcd.errors import Code

HEADER = struct.Struct(">BI")
"""The 5-byte prefix of every message."""

ACCEPT_ENCODING = "identity,gzip"
"""What rpcd accepts and offers in C{grpc-accept-encoding}."""

ENCODINGS = frozenset({"identity", "gzip"})

# Headers with a meaning of their own, never handed to a method as metadata.
RESERVED = frozenset({
    "content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding",
    "grpc-status", "grpc-message", "grpc-status-details-bin", "content-length",
    "accept-encoding", "connection", "host",
})


class MessageError(Exception):
    """
    A message broke the gRPC contract; the call ends with L{code}.

    @ivar code: the gRPC status code to end the call with.
    """

    def __init__(self, message: str, code: int = Code.INTERNAL) -> None:
        super().__init__(message)
        self.code = code


class MessageReader:
    """
    Splits a call's DATA bytes into messages.

    The length prefix is checked against the maximum before any byte of
    the message is buffered, so a peer cannot make it hold more than the
    maximum plus one prefix.

    @ivar max_size: the largest message accepted, in bytes (after
        decompression too).
    @ivar encoding: the call's C{grpc-encoding} (C{identity} or C{gzip}).
    """

    def __init__(self, max_size: int, encoding: str = "identity") -> None:
        self.max_size = max_size
        self.encoding = encoding
        self._buffer = bytearray()
        self._need: int | None = None
        self._compressed = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        """
        Take more bytes of the call's body.

        @param data: the next DATA frame's payload.
        @return: an iterator over the messages completed (decompressed).
        @raise MessageError: a message over the maximum size
            (RESOURCE_EXHAUSTED), compressed without an encoding, or a
            compressed message that does not decompress (INTERNAL).
        """
        whole = self.whole(data)
        if whole is not None:
            yield whole
            return
        buffer = self._buffer
        buffer += data
        while True:
            if self._need is None:
                if len(buffer) < 5:
                    return
                flag, length = HEADER.unpack_from(buffer)
                if flag > 1:
                    raise MessageError(f"bad message prefix: compressed flag {flag} "
                                       "(only 0 and 1 are defined)")
                if length > self.max_size:
                    raise MessageError(too_large(length, self.max_size), Code.RESOURCE_EXHAUSTED)
                del buffer[:5]
                self._need = length
                self._compressed = bool(flag)
            need = self._need
            if len(buffer) < need:
                return
            payload = bytes(buffer[:need])
            del buffer[:need]
            self._need = None
            if self._compressed:
                payload = self._decompress(payload)
            yield payload

    def whole(self, data: bytes) -> bytes | None:
        """
        The common case of L{feed} without a generator: one whole
        uncompressed message in one DATA frame, nothing held before it.

        @param data: the next DATA frame's payload.
        @return: the message, or None when C{data} is anything else (then
            give it to L{feed}).
        """
        if self._buffer or self._need is not None or len(data) < 5:
            return None
        flag, length = HEADER.unpack_from(data)
        if flag or len(data) != 5 + length or length > self.max_size:
            return None
        return bytes(data[5:])

    @property
    def pending(self) -> int:
        """
        @return: bytes held of a message not yet complete.
        """
        return len(self._buffer)

    def _decompress(self, payload: bytes) -> bytes:
        if self.encoding == "identity":
            raise MessageError("a compressed message arrived, but the call has no grpc-encoding")
        return gunzip(payload, self.max_size)


def too_large(length: int, max_size: int) -> str:
    """
    @return: gRPC's own words for a message over the maximum.
    """
    return f"grpc: received message larger than max ({length} vs. {max_size})"


def gunzip(payload: bytes, max_size: int) -> bytes:
    """
    Decompress a gzip message, never producing more than C{max_size} bytes.

    @raise MessageError: over the maximum (RESOURCE_EXHAUSTED) or not gzip
        (INTERNAL).
    """
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(payload, max_size + 1)
    except zlib.error as e:
        raise MessageError(f"a gzip message does not decompress: {e}") from None
    if len(out) > max_size or inflater.unconsumed_tail:
        raise MessageError(f"grpc: received message after decompression larger than max "
                           f"({max_size})", Code.RESOURCE_EXHAUSTED)
    if not inflater.eof:
        raise MessageError("a gzip message is truncated")
    return out


def encode_message(payload: bytes, compress: bool = False) -> bytes:
    """
    Frame one message.

    @param payload: the serialized message.
    @param compress: gzip it (flag 1).
    @return: the prefix and the (compressed) payload.
    """
    if compress:
        gz = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        payload = gz.compress(payload) + gz.flush()
        return HEADER.pack(1, len(payload)) + payload
    return HEADER.pack(0, len(payload)) + payload


_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])\Z")
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_timeout(value: str) -> float:
    """
    Read a C{grpc-timeout} header.

    @param value: e.g. C{"100m"} (at most 8 digits and a unit of
        C{H M S m u n}).
    @return: seconds.
    @raise ValueError: not a gRPC timeout; the message quotes it.
    """
    match = _TIMEOUT.match(value)
    if match is None:
        raise ValueError(f"malformed grpc-timeout {value!r} (want up to 8 digits and one of H M S m u n)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def encode_timeout(seconds: float) -> str:
    """
    Write a C{grpc-timeout} header value (the finest unit that fits 8 digits).

    @param seconds: the time left, >= 0.
    @return: e.g. C{"1500000u"}.
    """
    for unit, scale in (("n", 1e-9), ("u", 1e-6), ("m", 1e-3), ("S", 1.0), ("M", 60.0)):
        n = int(round(seconds / scale))
        if n < 100_000_000:
            return f"{max(n, 0)}{unit}"
    return f"{min(int(seconds // 3600), 99_999_999)}H"


def decode_metadata(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """
    The caller's metadata from a request's headers.

    Pseudo-headers and gRPC's own headers are left out; C{-bin} values are
    base64-decoded to bytes; a key given more than once keeps its values
    joined with C{", "} (text) or the last one (binary).

    @param headers: the request's header list, as h2 gives it.
    @return: key to C{str} (or C{bytes} for C{-bin} keys).
    @raise ValueError: a C{-bin} value that is not base64.
    """
    metadata: dict[str, Any] = {}
    for raw_key, raw_value in headers:
        key = raw_key.decode("ascii", "replace")
        if key.startswith(":") or key in RESERVED:
            continue
        if key.endswith("-bin"):
            metadata[key] = b64decode(raw_value, key)
            continue
        value = raw_value.decode("latin-1")
        if key in metadata:
            metadata[key] = f"{metadata[key]}, {value}"
        else:
            metadata[key] = value
    return metadata


def b64decode(value: bytes, key: str = "value") -> bytes:
    """
    Decode base64 with or without padding, as gRPC peers send either.

    @raise ValueError: not base64; the message names the key.
    """
    value = value.strip()
    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"metadata {key} is not base64") from None


_KEY = re.compile(r"[0-9a-z_.\-]+\Z")


def encode_metadata(metadata: dict[str, Any]) -> list[tuple[str, str]]:
    """
    Headers for metadata a method sends back.

    @param metadata: key to value; keys are lower-cased; C{-bin} keys (and
        bytes values, whose key then gets C{-bin}) are base64-encoded
        without padding; other values are sent as text.
    @return: header pairs.
    @raise ValueError: a key gRPC does not allow, or a reserved one.
    """
    headers = []
    for key, value in metadata.items():
        key = str(key).lower()
        if isinstance(value, (bytes, bytearray)) and not key.endswith("-bin"):
            key += "-bin"
        if not _KEY.match(key) or key in RESERVED or key.startswith("grpc-"):
            raise ValueError(f"metadata key {key!r} is not allowed (lower-case letters, digits, "
                             "'-', '_', '.'; not a grpc- or reserved header)")
        if key.endswith("-bin"):
            raw = value if isinstance(value, (bytes, bytearray)) else str(value).encode()
            headers.append((key, base64.b64encode(raw).rstrip(b"=").decode("ascii")))
        else:
            text = str(value)
            if any(not (0x20 <= ord(c) <= 0x7E) for c in text):
                raise ValueError(f"metadata {key} must be printable ASCII (use a -bin key for "
                                 "other bytes)")
            headers.append((key, text))
    return headers


def percent_encode(message: str) -> str:
    """
    Encode C{grpc-message}: UTF-8, with bytes outside printable ASCII and
    C{%} percent-encoded.
    """
    out = []
    for byte in message.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def percent_decode(value: str) -> str:
    """
    Decode C{grpc-message}; malformed escapes are kept as they are.
    """
    raw = value.encode("latin-1", "replace")
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x25 and i + 2 < len(raw) and _is_hex(raw[i + 1:i + 3]):
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


def status_headers(code: int, message: str = "", details: bytes | None = None) -> list[tuple[str, str]]:
    """
    The trailers that end a call.

    @param code: the status code (0 is OK).
    @param message: text for people (C{grpc-message}), percent-encoded here.
    @param details: a serialized C{google.rpc.Status}
        (C{grpc-status-details-bin}), or None.
    @return: header pairs.
    """
    headers = [("grpc-status", str(int(code)))]
    if message:
        headers.append(("grpc-message", percent_encode(message)))
    if details:
        headers.append(("grpc-status-details-bin",
                        base64.b64encode(details).rstrip(b"=").decode("ascii")))
    return headers


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def encode_status(code: int, message: str, details: list[tuple[str, bytes]]) -> bytes:
    """
    Serialize a C{google.rpc.Status} (code 1, message 2, repeated Any
    details 3; Any is type_url 1, value 2) without needing its .proto.

    @param code: the status code.
    @param message: the message.
    @param details: C{(type_url, serialized message)} pairs.
    @return: the serialized Status.
    """
    out = bytearray()
    if code:
        out += _varint(1 << 3 | 0) + _varint(int(code))
    if message:
        out += _length_delimited(2, message.encode("utf-8"))
    for type_url, value in details:
        out += _length_delimited(3, _length_delimited(1, type_url.encode("utf-8"))
                                 + _length_delimited(2, value))
    return bytes(out)


def is_grpc_content_type(value: str) -> bool:
    """
    @return: whether a request's C{content-type} is gRPC's
        (C{application/grpc}, optionally C{+proto} or another codec suffix,
        or parameters).
    """
    base = value.split(";", 1)[0].strip().lower()
    return base == "application/grpc" or base.startswith("application/grpc+")
