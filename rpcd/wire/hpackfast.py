"""
HPACK for rpcd's HTTP/2 server fast path (L{rpcd.wire.h2fast}): a decoder
that remembers what header blocks meant, and an encoder that never touches
the dynamic table, so that what it encoded once stays valid forever.

Decoding is the C{hpack} library's (the one C{h2} uses); what is added is
a cache keyed by a block's bytes, within a byte budget per connection
(L{CACHE_BYTES}).  A block's meaning depends only on its
bytes and the decoder's dynamic table, so a block that did not change the
table (no literal with incremental indexing, no table size update) is
cached, and every change to the table empties the cache.  gRPC clients send
the same few blocks again and again once their first call indexed the
headers, so most calls are a dictionary lookup.

Encoding writes each field as indexed (a static-table entry), or as a
literal I{without indexing} (the name indexed from the static table when it
is there), raw (no Huffman): the peer's dynamic table is never used, so an
encoded block can be reused for the life of the process.  A block may
start with a dynamic table size update to 0 when the peer changed its
SETTINGS_HEADER_TABLE_SIZE (RFC 7541 4.2), which C{h2fast} asks for.
"""

from __future__ import annotations

from typing import Any, Sequence

from hpack import Decoder
from hpack.table import HeaderTable

Headers = Sequence[tuple[Any, Any]]

CACHE_BYTES = 65536
"""What the decoded blocks remembered per connection may hold (block bytes
plus decoded names and values); the cache is emptied when it would pass this."""

CACHE_ENTRY_BYTES = 4096
"""Larger blocks (bytes plus decoded size) are never remembered."""

ENCODED_ENTRIES = 1024
"""Encoded blocks remembered per process (emptied when full)."""

ENCODED_ENTRY_BYTES = 1024
"""Larger encoded blocks (say, a long C{grpc-message}) are not remembered."""

TABLE_SIZE_ZERO = b"\x20"
"""A dynamic table size update to 0."""


class _WatchedTable(HeaderTable):
    """
    A decoder's dynamic table that counts its changes: insertions and size
    updates (either can change what an index refers to).
    """

    changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.changes += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class CachedDecoder:
    """
    An HPACK decoder with a cache of decoded blocks.

    @ivar decoder: the C{hpack} decoder (its C{max_header_list_size} is the
        bound on a decoded header list).
    @ivar hits: blocks answered from the cache (for tests and benchmarks).
    """

    def __init__(self, max_header_list_size: int) -> None:
        self.decoder = Decoder(max_header_list_size=max_header_list_size)
        self._table = _WatchedTable()
        self.decoder.header_table = self._table
        self._cache: dict[bytes, tuple[tuple[bytes, bytes], ...]] = {}
        self._cached_bytes = 0
        self.hits = 0

    def decode(self, block: bytes) -> tuple[tuple[bytes, bytes], ...]:
        """
        Decode one complete header block.

        @param block: the block (HEADERS and CONTINUATION fragments joined,
            padding and priority removed).
        @return: C{(name, value)} pairs, as bytes, in order; the same tuple
            object for a block seen before, so never change it.
        @raise hpack.HPACKError: the block is malformed or decodes to more
            than the maximum header list size (the HPACK state is then
            unusable: a connection error).
        """
        cached = self._cache.get(block)
        if cached is not None:
            self.hits += 1
            return cached
        table = self._table
        before = table.changes
        headers = tuple((bytes(k), bytes(v)) for k, v in self.decoder.decode(block, raw=True))
        if table.changes != before:
            self._cache.clear()  # what indices mean has changed
            self._cached_bytes = 0
            return headers
        size = len(block) + sum(len(k) + len(v) for k, v in headers)
        if size <= CACHE_ENTRY_BYTES:
            if self._cached_bytes + size > CACHE_BYTES:
                self._cache.clear()
                self._cached_bytes = 0
            self._cache[block] = headers
            self._cached_bytes += size
        return headers


_STATIC: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC.setdefault((_name, _value), _index)
    _STATIC_NAMES.setdefault(_name, _index)

_encoded: dict[tuple[tuple[Any, Any], ...], bytes] = {}


def encode_integer(value: int, prefix_bits: int, first: int) -> bytes:
    """
    RFC 7541 5.1: an integer with an N-bit prefix.

    @param value: the integer, >= 0.
    @param prefix_bits: N.
    @param first: the bits above the prefix in the first byte.
    """
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _raw(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def encode_block(headers: Headers) -> bytes:
    """
    Encode a header list without the dynamic table (so the result is valid
    whatever the peer's table holds, for ever); remembered per process.

    @param headers: C{(name, value)} pairs, C{str} or C{bytes}; names
        already lower-case.
    @return: the HPACK block.
    """
    key = tuple(headers)
    block = _encoded.get(key)
    if block is not None:
        return block
    out = bytearray()
    for name, value in key:
        name, value = _raw(name), _raw(value)
        index = _STATIC.get((name, value))
        if index is not None:
            out += encode_integer(index, 7, 0x80)
            continue
        name_index = _STATIC_NAMES.get(name)
        if name_index is not None:
            out += encode_integer(name_index, 4, 0x00)
        else:
            out.append(0x00)
            out += encode_integer(len(name), 7, 0x00)
            out += name
        out += encode_integer(len(value), 7, 0x00)
        out += value
    block = bytes(out)
    if len(block) <= ENCODED_ENTRY_BYTES:
        if len(_encoded) >= ENCODED_ENTRIES:
            _encoded.clear()
        _encoded[key] = block
    return block
