"""
What a gRPC request's headers say, read once per distinct header block.

A gRPC client sends the same header list for most of its calls, so
L{RequestCache} keeps what the headers meant (method, content
type, path, encodings, C{grpc-timeout}, metadata) keyed by the headers
themselves, within a byte budget per connection.  Nothing here depends on anything but the headers.
"""

from __future__ import annotations

from typing import Any, Sequence

from rpcd.wire.grpcmsg import (
    ENCODINGS,
    decode_metadata,
    is_grpc_content_type,
    parse_timeout,
)

CACHE_BYTES = 65536
"""What the header lists remembered per connection may hold (names and
values); the cache is emptied when it would pass this."""

ENTRY_BYTES = 4096
"""Larger header lists are read each time, never remembered."""


class Request:
    """
    A request's headers, read.

    @ivar http_error: C{(status, why)} when it is not a gRPC request
        (answered with a plain HTTP response), else None.
    @ivar path: C{:path}.
    @ivar encoding: C{grpc-encoding} (C{identity} when absent).
    @ivar encoding_ok: whether rpcd can read that encoding.
    @ivar compress: whether replies may be gzipped (the caller sends gzip
        and accepts it).
    @ivar timeout: C{grpc-timeout} in seconds, or None.
    @ivar metadata: the caller's metadata; copy it before handing it out.
    @ivar error: why C{grpc-timeout} or the metadata are malformed, or None.
    """

    __slots__ = ("http_error", "path", "encoding", "encoding_ok", "compress", "timeout",
                 "metadata", "error", "size")

    def __init__(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        fields: dict[bytes, bytes] = {}
        size = 0
        for key, value in headers:
            fields.setdefault(key, value)
            size += len(key) + len(value)
        self.size = size
        self.http_error: tuple[int, str] | None = None
        self.path = fields.get(b":path", b"").decode("latin-1")
        self.encoding = fields.get(b"grpc-encoding", b"identity").decode("latin-1")
        self.encoding_ok = self.encoding in ENCODINGS
        accepted = fields.get(b"grpc-accept-encoding", b"").decode("latin-1")
        self.compress = self.encoding == "gzip" and "gzip" in accepted
        self.timeout: float | None = None
        self.metadata: dict[str, Any] = {}
        self.error: str | None = None
        if fields.get(b":method") != b"POST":
            self.http_error = (405, "gRPC calls are POST requests")
            return
        content_type = fields.get(b"content-type", b"").decode("latin-1")
        if not is_grpc_content_type(content_type):
            self.http_error = (415, f"content-type {content_type!r} is not application/grpc")
            return
        try:
            timeout = fields.get(b"grpc-timeout")
            self.timeout = parse_timeout(timeout.decode("latin-1")) if timeout else None
            self.metadata = decode_metadata(list(headers))
        except ValueError as e:
            self.error = str(e)


class RequestCache:
    """
    L{Request}s by header list, bounded.
    """

    def __init__(self) -> None:
        self._requests: dict[Sequence[tuple[bytes, bytes]], Request] = {}
        self._bytes = 0

    def read(self, headers: Sequence[tuple[bytes, bytes]]) -> Request:
        """
        @param headers: a request's headers, C{(name, value)} pairs of bytes.
        @return: what they say.
        """
        key = headers if type(headers) is tuple else tuple(headers)
        requests = self._requests
        request = requests.get(key)
        if request is None:
            request = Request(key)
            if request.size <= ENTRY_BYTES:
                if self._bytes + request.size > CACHE_BYTES:
                    requests.clear()
                    self._bytes = 0
                requests[key] = request
                self._bytes += request.size
        return request
