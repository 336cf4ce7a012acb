"""
HPACK for rpcd's gRPC server: the C{hpack} library's C{Decoder} and
C{Encoder} (the ones C{h2} uses), each with a cache, plugged into an
C{h2.connection.H2Connection} through its C{decoder} and C{encoder}
attributes (L{install}).

A header block's meaning depends only on its bytes and the decoder's
dynamic table, so L{CachedDecoder} remembers what a block decoded to when
decoding it did not change the table (no literal with incremental indexing,
no table size update), within a byte budget per connection
(L{CACHE_BYTES}); any change to the table empties the cache.  gRPC clients
send the same few blocks again and again once their first call indexed the
headers, so most calls are a dictionary lookup instead of hpack's decoding.

Likewise an encoding depends only on the header list and the encoder's
dynamic table: L{CachedEncoder} remembers the block for a header list whose
encoding did not change the table (every field already indexed), and
forgets everything when the table changes.  rpcd's reply headers and
C{grpc-status: 0} trailers are indexed by the first reply, so later replies
are a lookup instead of hpack's search and Huffman coding.

Both watch the table through a C{hpack.table.HeaderTable} subclass that
counts insertions and size changes (L{_WatchedTable}); that is the one
place relying on how C{hpack} changes its table (C{add} and the C{maxsize}
setter), checked by L{works} (and a canary test): when it does not hold,
L{install} leaves h2's plain decoder and encoder in place.
"""

from __future__ import annotations

from typing import Any, Iterable

from hpack import Decoder, Encoder
from hpack.table import HeaderTable

CACHE_BYTES = 65536
"""What the decoded blocks remembered per connection may hold (block bytes
plus decoded names and values); the cache is emptied when it would pass this."""

CACHE_ENTRY_BYTES = 4096
"""Larger blocks (bytes plus decoded size) are never remembered."""

ENCODED_ENTRIES = 64
"""Encoded blocks remembered per connection (emptied when full)."""

ENCODED_ENTRY_BYTES = 1024
"""Larger encoded blocks (say, long metadata) are not remembered."""


class _WatchedTable(HeaderTable):
    """
    A dynamic table that counts its changes: insertions and size updates
    (either can change what an index refers to).
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


def _watch(coder: Decoder | Encoder) -> _WatchedTable:
    """
    Give a fresh decoder or encoder a watched table (same size).
    """
    table = _WatchedTable()
    table.maxsize = coder.header_table.maxsize
    table.resized = False
    table.changes = 0
    coder.header_table = table
    return table


class CachedDecoder(Decoder):
    """
    C{hpack.Decoder} with a cache of decoded blocks.

    @ivar hits: blocks answered from the cache (for tests and benchmarks).
    """

    def __init__(self, max_header_list_size: int = 65536) -> None:
        super().__init__(max_header_list_size=max_header_list_size)
        self._table = _watch(self)
        self._cache: dict[tuple[bytes, bool], Any] = {}
        self._cached_bytes = 0
        self._limit = max_header_list_size
        self.hits = 0

    def decode(self, data: bytes, raw: bool = False) -> Any:
        """
        Decode one complete header block (see C{hpack.Decoder.decode}).

        @return: C{(name, value)} pairs in order, a tuple; the same tuple
            for a block seen before, so never change it.
        @raise hpack.HPACKError: as C{hpack.Decoder.decode}.
        """
        if self.max_header_list_size != self._limit:  # h2 applied new settings
            self._limit = self.max_header_list_size
            self._cache.clear()
            self._cached_bytes = 0
        key = (bytes(data), raw)
        cached = self._cache.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        table = self._table
        before = table.changes
        headers = tuple(super().decode(data, raw=raw))
        if table.changes != before:
            self._cache.clear()  # what indices mean has changed
            self._cached_bytes = 0
            return headers
        size = len(key[0]) + sum(len(k) + len(v) for k, v in headers)
        if size <= CACHE_ENTRY_BYTES:
            if self._cached_bytes + size > CACHE_BYTES:
                self._cache.clear()
                self._cached_bytes = 0
            self._cache[key] = headers
            self._cached_bytes += size
        return headers


class CachedEncoder(Encoder):
    """
    C{hpack.Encoder} remembering the blocks of header lists whose encoding
    left the dynamic table unchanged.

    @ivar hits: blocks answered from the cache.
    """

    def __init__(self) -> None:
        super().__init__()
        self._table = _watch(self)
        self._cache: dict[tuple[Any, ...], bytes] = {}
        self._changes = 0
        self.hits = 0

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        """
        Encode a header list (see C{hpack.Encoder.encode}).

        @return: the block.
        """
        table = self._table
        if table.changes != self._changes:
            self._cache.clear()
            self._changes = table.changes
        key: tuple[Any, ...] | None = None
        if huffman and not isinstance(headers, dict) and not table.resized:
            key = tuple(headers)
            block = self._cache.get(key)
            if block is not None:
                self.hits += 1
                return block
            headers = key
        block = super().encode(headers, huffman)
        if table.changes != self._changes:
            self._cache.clear()
            self._changes = table.changes
        elif key is not None and len(block) <= ENCODED_ENTRY_BYTES and _plain(key):
            if len(self._cache) >= ENCODED_ENTRIES:
                self._cache.clear()
            self._cache[key] = block
        return block


def _plain(headers: Iterable[Any]) -> bool:
    """
    Whether every field is a plain 2-tuple (a C{HeaderTuple} compares equal
    to one but may ask not to be indexed).
    """
    return all(type(h) is tuple and len(h) == 2 for h in headers)


def works() -> bool:
    """
    Whether C{hpack} still changes its tables through C{add} and C{maxsize}
    and the caches give what plain C{hpack} gives.
    """
    try:
        encoder, decoder = CachedEncoder(), CachedDecoder()
        headers = [(b":status", b"200"), (b"x-canary", b"1")]
        plain_encoder, plain_decoder = Encoder(), Decoder()
        for _ in range(3):  # indexes x-canary, then is cached, then is a hit
            block = encoder.encode(headers)
            if block != plain_encoder.encode(headers):
                return False
            if decoder.decode(block, raw=True) != tuple(plain_decoder.decode(block, raw=True)):
                return False
        if encoder.hits != 1 or decoder.hits != 1 or decoder._table.changes != 1:
            return False
        encoder.header_table_size = 0
        plain_encoder.header_table_size = 0
        block = encoder.encode(headers)
        return block == plain_encoder.encode(headers) and block[:1] == b"\x20" \
            and encoder.hits == 1
    except Exception:  # noqa: BLE001 - any surprise means: do not use the caches
        return False


_WORKS: bool | None = None


def install(conn: Any, max_header_list_size: int) -> bool:
    """
    Put a L{CachedDecoder} and a L{CachedEncoder} into a fresh
    C{H2Connection} (before any frame), when L{works}.

    @param conn: the C{h2.connection.H2Connection}.
    @param max_header_list_size: the decoder's bound on a header list (as
        the SETTINGS_MAX_HEADER_LIST_SIZE the connection announces).
    @return: whether the caches are in place (else h2's own coders are).
    """
    global _WORKS
    if _WORKS is None:
        _WORKS = works()
    if not _WORKS:
        conn.decoder.max_header_list_size = max_header_list_size
        return False
    decoder = CachedDecoder(max_header_list_size)
    decoder.max_allowed_table_size = conn.decoder.max_allowed_table_size
    conn.decoder = decoder
    conn.encoder = CachedEncoder()
    return True
