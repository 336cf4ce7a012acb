"""
The parts of the gRPC wire contract a client needs that are not HTTP/2
itself (which comes from C{h2}): length-prefixed messages (with C{gzip}),
C{grpc-timeout}, metadata (C{-bin} keys in base64), and the call's status
(C{grpc-status}, C{grpc-message}, C{grpc-status-details-bin}, or the HTTP
status when the server is not speaking gRPC).  Pure functions and one small
class; no I/O.

See U{https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md}.
"""

from __future__ import annotations

import base64
import math
import re
import struct
import zlib
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from rpcd.errors import Code

#: The largest message accepted by default, as grpc-go and grpcio do.
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024

_PREFIX = struct.Struct(">BI")

#: Header names gRPC and HTTP/2 own; metadata may not use them.
RESERVED_HEADERS = frozenset({
    "te", "content-type", "user-agent", "grpc-timeout", "grpc-encoding",
    "grpc-accept-encoding", "grpc-status", "grpc-message", "grpc-status-details-bin",
    "content-length", "connection", "host", "keep-alive", "transfer-encoding",
})

_KEY = re.compile(r"^[0-9a-z_.\-]+$")
_TIMEOUT_UNITS = (("n", 1e9), ("u", 1e6), ("m", 1e3), ("S", 1.0), ("M", 1 / 60), ("H", 1 / 3600))


class GRPCWireError(Exception):
    """
    A message or a header the client cannot accept; the call fails with
    C{code} and this message.

    @ivar code: the L{Code} to fail the call with.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def encode_message(payload: bytes) -> bytes:
    """
    @param payload: a serialized protobuf message.
    @return: the gRPC length-prefixed message (uncompressed).
    """
    return _PREFIX.pack(0, len(payload)) + payload


class MessageReader:
    """
    Splits one stream's DATA bytes into messages, checking each message's
    length against the limit before waiting for its bytes.

    @ivar max_size: the largest message accepted (after decompression).
    @ivar encoding: the stream's C{grpc-encoding}, for compressed messages.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_size = max_size
        self.encoding = "identity"
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """
        @param data: the next DATA bytes of the stream.
        @return: the messages completed by them (maybe none).
        @raise GRPCWireError: a message over the limit (RESOURCE_EXHAUSTED),
            a bad compression flag or compressed data (INTERNAL).
        """
        buffer = self._buffer
        buffer += data
        messages = []
        while len(buffer) >= _PREFIX.size:
            flag, length = _PREFIX.unpack_from(buffer)
            if flag > 1:
                raise GRPCWireError(Code.INTERNAL, f"bad message compression flag {flag}")
            if length > self.max_size:
                raise GRPCWireError(Code.RESOURCE_EXHAUSTED,
                                    f"the server sent a message of {length} bytes; "
                                    f"the limit is {self.max_size}")
            end = _PREFIX.size + length
            if len(buffer) < end:
                break
            payload = bytes(buffer[_PREFIX.size:end])
            del buffer[:end]
            messages.append(self._decompress(payload) if flag else payload)
        return messages

    def _decompress(self, payload: bytes) -> bytes:
        if self.encoding != "gzip":
            raise GRPCWireError(Code.INTERNAL, f"a compressed message with grpc-encoding "
                                               f"{self.encoding!r} (only gzip is accepted)")
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = inflater.decompress(payload, self.max_size + 1)
        except zlib.error as e:
            raise GRPCWireError(Code.INTERNAL, f"bad gzip message: {e}") from None
        if len(out) > self.max_size:
            raise GRPCWireError(Code.RESOURCE_EXHAUSTED,
                                f"the server sent a message over {self.max_size} bytes "
                                "once decompressed")
        if not inflater.eof:
            raise GRPCWireError(Code.INTERNAL, "truncated gzip message")
        return out

    @property
    def partial(self) -> bool:
        """
        Whether part of a message is still waiting for its bytes.
        """
        return bool(self._buffer)


def encode_timeout(seconds: float) -> str:
    """
    @param seconds: the time left, more than 0.
    @return: the C{grpc-timeout} value: at most 8 digits and a unit, in the
        finest unit that fits, rounded up.
    """
    for unit, per_second in _TIMEOUT_UNITS:
        value = max(1, math.ceil(seconds * per_second))
        if value < 100_000_000:
            return f"{value}{unit}"
    return "99999999H"


def encode_metadata(metadata: Mapping[str, Any] | None) -> list[tuple[bytes, bytes]]:
    """
    @param metadata: key to value: a C{str} (printable ASCII), C{bytes} for
        keys ending in C{-bin}, or a list of them for a repeated key.
    @return: HTTP/2 header fields.
    @raise ValueError: a bad key (not lower-case C{[0-9a-z_.-]}, reserved) or
        value.
    """
    fields: list[tuple[bytes, bytes]] = []
    for key, value in (metadata or {}).items():
        name = key.lower()
        if not _KEY.match(name) or name in RESERVED_HEADERS or name.startswith("grpc-"):
            raise ValueError(f"metadata key {key!r} is not allowed (lower-case letters, digits, "
                             f"'-', '_', '.'; not a reserved or grpc- name)")
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if name.endswith("-bin"):
                if not isinstance(item, (bytes, bytearray)):
                    raise ValueError(f"metadata {key!r} ends in -bin: its value must be bytes")
                fields.append((name.encode(), base64.b64encode(item).rstrip(b"=")))
            else:
                if not isinstance(item, str) or not all(" " <= c <= "~" for c in item):
                    raise ValueError(f"metadata {key!r} must be printable ASCII text "
                                     f"(use a -bin key for bytes)")
                fields.append((name.encode(), item.encode("ascii")))
    return fields


def decode_metadata(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, Any]:
    """
    @param headers: received header fields.
    @return: the metadata in them (reserved and pseudo headers left out;
        C{-bin} values decoded to bytes; a repeated key as a list).
    """
    out: dict[str, Any] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("ascii", "replace")
        if name.startswith(":") or name in RESERVED_HEADERS:
            continue
        value: Any
        if name.endswith("-bin"):
            try:
                value = base64.b64decode(raw_value + b"=" * (-len(raw_value) % 4))
            except ValueError:
                value = raw_value
        else:
            value = raw_value.decode("latin-1")
        if name in out:
            previous = out[name]
            out[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            out[name] = value
    return out


def http_status_code(status: int) -> int:
    """
    @param status: an HTTP status other than 200 from a server not
        answering in gRPC.
    @return: the gRPC code the spec maps it to.
    """
    return {400: Code.INTERNAL, 401: Code.UNAUTHENTICATED, 403: Code.PERMISSION_DENIED,
            404: Code.UNIMPLEMENTED, 429: Code.UNAVAILABLE, 502: Code.UNAVAILABLE,
            503: Code.UNAVAILABLE, 504: Code.UNAVAILABLE}.get(status, Code.UNKNOWN)


def call_status(headers: Mapping[bytes, bytes]) -> tuple[int, str, bytes | None]:
    """
    Read the status out of trailers (or a trailers-only response).

    @param headers: the header fields, by name.
    @return: C{(code, message, grpc-status-details-bin bytes or None)}.
    """
    raw = headers.get(b"grpc-status")
    if raw is None:
        return Code.UNKNOWN, "the server ended the call without a grpc-status", None
    try:
        code = int(raw)
    except ValueError:
        return Code.UNKNOWN, f"the server sent a bad grpc-status {raw!r}", None
    message = unquote(headers.get(b"grpc-message", b"").decode("ascii", "replace"), errors="replace")
    details = headers.get(b"grpc-status-details-bin")
    if details is not None:
        try:
            details = base64.b64decode(details + b"=" * (-len(details) % 4))
        except ValueError:
            details = None
    return code, message, details
