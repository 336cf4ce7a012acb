"""
Splitting a byte stream of concatenated JSON values, as Go's C{json.Decoder} reads it.

Sans-io: no sockets, no Twisted.  Feed bytes as they arrive, then iterate the
values completed so far::

    stream = JSONStream()
    stream.feed(data)
    try:
        for value in stream.values():
            handle(value)
    except JSONStreamError as e:
        fail(e)            # the stream is broken: answer if you can, then close

Values may be separated by any JSON whitespace or by nothing at all
(C{{"a":1}{"b":2}}) and may be split across feeds anywhere, even inside a
UTF-8 sequence or an escape.  Finding where a value ends is linear in the bytes
received: a scanner keeps its depth and string state between feeds and skips
string bodies and other non-bracket bytes with one C{re} match, so a value is
only decoded (by the standard library's C decoder) once it is complete.

Strictness: a value is refused, with a L{JSONStreamError} naming the problem,
when it is longer than C{max_size} bytes (found while scanning, so at most
C{max_size} bytes plus one feed are ever held), nests deeper than C{max_depth},
is not UTF-8, contains C{NaN}, C{Infinity} or C{-Infinity}, contains a number
too large for a float (C{1e400}), repeats a key in one object, or is not JSON.
A broken stream stays broken: every later call raises the same error, because
there is no way to find the start of the next value with certainty.  Values
completed before the error are still delivered first, in order, as Go would
serve them.

Top-level scalars follow Go: C{true}, C{false}, C{null} and strings end with
their last byte; a number ends at the first byte that cannot continue it
(C{1 2} is two values, C{12} one), so a number at the very end of the buffered
bytes waits for more input or for L{JSONStream.close}.  One difference: a
number token is the longest run of C{0-9 + - . e E}, so C{01} or C{1-2} are
refused where Go would read two values.

Syntax errors inside an unterminated object or array are reported when it
closes or when the size limit is reached, not at the first bad byte as Go does.
Lone surrogate escapes (C{"\\ud800"}) are accepted and decode to lone
surrogates, as the standard library does (Go substitutes U+FFFD).
"""

from __future__ import annotations

import json
import math
import re
from array import array
from collections import deque
from itertools import accumulate
from typing import Any, Iterator, NoReturn

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_SIZE",
    "JSONStream",
    "JSONStreamError",
    "loads",
]

DEFAULT_MAX_SIZE = 4 * 1024 * 1024
DEFAULT_MAX_DEPTH = 128

# Everything that is neither a bracket nor the opening quote of an
# unterminated string: plain bytes and whole strings.
_SKIP = re.compile(rb'(?:[^\[\]{}"]+|"[^"\\]*(?:\\.[^"\\]*)*")*', re.S)
# The body of a string up to (not including) its closing quote, or up to the
# end of the buffer, or up to a trailing lone backslash.
_STRING_BODY = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.S)
_WHITESPACE = re.compile(rb"[ \t\r\n]*")
_WHITESPACE_BYTES = frozenset(b" \t\r\n")
_NUMBER = re.compile(rb"[-+.0-9eE]*")
_LITERALS = {0x74: b"true", 0x66: b"false", 0x6E: b"null"}
_NUMBER_START = frozenset(b"-0123456789")
_OPENERS = frozenset(b"[{")
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_UNDECODED = object()

# Scanner states between feeds.
_BETWEEN = 0  # between values, skipping whitespace
_CONTAINER = 1  # inside an object or array, outside any string
_STRING = 2  # inside a string (at top level if depth is 0)
_NUMBER_STATE = 3  # inside a top-level number
_LITERAL = 4  # inside a top-level true/false/null


class JSONStreamError(ValueError):
    """
    The stream does not hold valid JSON within the limits; the message says why.
    """


def _refuse_constant(name: str) -> NoReturn:
    raise JSONStreamError(f"{name} is not valid JSON")


def _strict_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JSONStreamError(f"number {text} is out of range for a float")
    return value


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JSONStreamError(f"duplicate object key {key!r}")
            seen.add(key)
    return result


_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_pairs,
    parse_float=_strict_float,
    parse_constant=_refuse_constant,
)
_raw_decode = _DECODER.raw_decode


def _decode(raw: bytes) -> object:
    """
    Decode one complete, already delimited JSON value strictly.

    @raise JSONStreamError: the bytes are not UTF-8 or not exactly one strict
        JSON value.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JSONStreamError(
            f"invalid UTF-8 at byte {e.start} of a JSON value: {e.reason}"
        ) from None
    try:
        value, end = _raw_decode(text)
    except JSONStreamError:
        raise
    except RecursionError:
        raise JSONStreamError("JSON value nests too deeply") from None
    except ValueError as e:
        raise JSONStreamError(f"invalid JSON: {e}") from None
    if end != len(text):
        raise JSONStreamError(
            f"invalid JSON: unexpected {text[end:end + 10]!r} at char {end}"
        )
    return value


def _depth(raw: bytes) -> int:
    """
    The nesting depth of a complete, valid JSON value.
    """
    steps = _STRINGS.sub(b"", raw).translate(_BRACKET_STEPS, _NOT_BRACKETS)
    return max(accumulate(array("b", steps)), default=0)


def _bad_start(buf: bytearray, pos: int) -> JSONStreamError:
    """
    Describe the byte at C{pos}, which cannot start a JSON value.
    """
    rest = bytes(buf[pos:pos + 9])
    for name in (b"NaN", b"Infinity", b"-Infinity"):
        if rest.startswith(name) or (
            len(rest) < len(name) and name.startswith(rest)
        ):
            return JSONStreamError(f"{name.decode()} is not valid JSON")
    return JSONStreamError(
        f"invalid character {rest[:1]!r} at the start of a JSON value"
    )


class JSONStream:
    """
    An incremental splitter and strict decoder for concatenated JSON values.

    Not thread-safe; one per connection.
    """

    def __init__(
        self, max_size: int = DEFAULT_MAX_SIZE, max_depth: int = DEFAULT_MAX_DEPTH
    ) -> None:
        """
        @param max_size: the largest value accepted, in bytes (surrounding
            whitespace not counted).
        @param max_depth: the deepest nesting accepted; C{[]} is depth 1,
            C{[[]]} depth 2, a scalar depth 0.
        """
        self.max_size = max_size
        self.max_depth = max_depth
        self._buf = bytearray()
        # Completed values: (their bytes, the decoded value or _UNDECODED).
        self._ready: deque[tuple[bytes, object]] = deque()
        self._error: JSONStreamError | None = None
        self._closed = False
        # Scanner state, kept between feeds.  _start is where the value being
        # scanned begins in _buf, _pos where scanning resumes.
        self._state = _BETWEEN
        self._depth = 0
        self._start = 0
        self._pos = 0
        # Fast-path state, valid during one feed only (see _try_whole).
        self._text: str | None = None
        self._text_ascii = True
        self._sync = (0, 0)

    def feed(self, data: bytes) -> None:
        """
        Add bytes received from the peer and find the values they complete.

        Never raises for bad input: errors are delivered, in stream order, by
        L{values} or L{values_and_bytes}.  Bytes fed after an error or after
        L{close} are discarded.

        @param data: the next bytes of the stream, of any length.
        """
        if self._error is not None or self._closed or not data:
            return
        fast = True
        if not self._buf and self._state == _BETWEEN and data[0] in _OPENERS:
            # The common case: the feed is exactly one object or array,
            # perhaps followed by a newline.
            if self._whole_feed(data):
                return
            fast = False  # the same attempt would fail again in _scan
        self._buf += data
        try:
            self._scan(fast)
        except JSONStreamError as e:
            self._fail(e)

    def _whole_feed(self, data: bytes) -> bool:
        """
        Fast path: queue C{data} as one value if it is exactly one object or
        array followed by nothing but whitespace.

        @return: whether it was.
        """
        if len(data) > self.max_size:
            return False
        try:
            text = data.decode("utf-8")
            value, end = _raw_decode(text)
        except (ValueError, RecursionError):
            return False
        trailing = len(text) - end
        if trailing and text[end:].strip(" \t\r\n"):
            return False
        raw = data[:len(data) - trailing] if trailing else data
        if raw.count(b"[") + raw.count(b"{") > self.max_depth:
            if _depth(raw) > self.max_depth:
                return False
        self._ready.append((bytes(raw), value))
        return True

    def close(self) -> None:
        """
        Tell the stream that no more bytes will come (the peer closed).

        A top-level number waiting for its delimiter is completed.  Anything
        else left unfinished becomes a L{JSONStreamError}
        (C{"unexpected end of stream inside a JSON value"}), delivered by the
        next L{values} call after the values completed before it.
        """
        if self._error is not None or self._closed:
            return
        self._closed = True
        if self._state == _NUMBER_STATE:
            try:
                self._complete(len(self._buf))
            except JSONStreamError as e:
                self._fail(e)
            self._state = _BETWEEN
        elif self._state != _BETWEEN:
            self._fail(JSONStreamError("unexpected end of stream inside a JSON value"))

    def values(self) -> Iterator[object]:
        """
        Yield, in order, every value completed so far, decoded.

        Objects become C{dict}, arrays C{list}, strings C{str}, numbers C{int}
        (any size up to Python's 4300-digit limit) or C{float}, and
        C{true}/C{false}/C{null} become C{True}/C{False}/C{None}.

        @return: an iterator; stop iterating early and the remaining values
            wait for the next call.
        @raise JSONStreamError: when the iteration reaches a bad value, or
            the stream broke earlier.  It keeps raising on later calls.
        """
        for value, _raw in self.values_and_bytes():
            yield value

    def values_and_bytes(self) -> Iterator[tuple[object, bytes]]:
        """
        Like L{values}, but yield each value with the exact bytes it came
        from (no surrounding whitespace), for callers that must echo part of
        a message as it was written.

        @return: an iterator of C{(value, raw)} pairs.
        @raise JSONStreamError: as for L{values}.
        """
        ready = self._ready
        while ready:
            raw, value = ready.popleft()
            if value is _UNDECODED:
                try:
                    value = _decode(raw)
                except JSONStreamError as e:
                    ready.clear()
                    self._fail(e)
                    raise
            yield value, raw
        if self._error is not None:
            raise self._error

    @property
    def buffered(self) -> int:
        """
        The number of bytes held for a value not yet complete.
        """
        return len(self._buf) - self._start

    def _fail(self, error: JSONStreamError) -> None:
        if self._error is None:
            self._error = error
        self._buf = bytearray()
        self._start = self._pos = 0
        self._state = _BETWEEN

    def _complete(self, end: int, value: object = _UNDECODED) -> None:
        size = end - self._start
        if size > self.max_size:
            raise JSONStreamError(
                f"JSON value of {size} bytes exceeds the limit of {self.max_size} bytes"
            )
        self._ready.append((bytes(self._buf[self._start:end]), value))
        self._start = end

    def _try_whole(self, buf: bytearray, pos: int) -> int:
        """
        Fast path: let the C decoder find the end of the object or array at
        C{pos}, if the buffer holds all of it.

        The rest of the buffer is decoded to text once per feed
        (C{self._text}); C{self._sync} pairs a byte offset with the char
        offset it corresponds to, and only whitespace (one byte per char)
        may lie between that byte offset and C{pos}: so once the scanner
        has completed a value, L{_scan} stops using this for the feed.

        @return: the end of the value, its bytes and value queued; or C{-1}
            if the scanner must take over (value incomplete, invalid, too
            big or deep, or not UTF-8: the scanner finds out which, and in
            stream order).
        """
        text = self._text
        if text is None:
            try:
                text = buf[pos:].decode("utf-8")
            except UnicodeDecodeError as e:
                if e.reason != "unexpected end of data":
                    return -1
                text = buf[pos:pos + e.start].decode("utf-8")
            self._text = text
            self._text_ascii = text.isascii()
            self._sync = (pos, 0)
        byte_sync, char_sync = self._sync
        char_pos = char_sync + pos - byte_sync
        try:
            value, end = _raw_decode(text, char_pos)
        except (ValueError, RecursionError):
            return -1
        size = end - char_pos
        if not self._text_ascii:
            size = len(text[char_pos:end].encode("utf-8"))
        if size > self.max_size:
            return -1
        byte_end = pos + size
        raw = bytes(buf[pos:byte_end])
        if raw.count(b"[") + raw.count(b"{") > self.max_depth:
            if _depth(raw) > self.max_depth:
                return -1
        self._sync = (byte_end, end)
        self._ready.append((raw, value))
        self._start = byte_end
        return byte_end

    def _scan(self, fast: bool) -> None:
        buf = self._buf
        n = len(buf)
        pos = self._pos
        state = self._state
        depth = self._depth
        max_depth = self.max_depth
        skip = _SKIP.match
        self._text = None
        while True:
            if state == _BETWEEN:
                if pos < n and buf[pos] in _WHITESPACE_BYTES:
                    pos = _WHITESPACE.match(buf, pos).end()  # type: ignore[union-attr]
                self._start = pos
                if pos == n:
                    break
                c = buf[pos]
                if c == 0x7B or c == 0x5B:
                    if fast:
                        end = self._try_whole(buf, pos)
                        if end >= 0:
                            pos = end
                            continue
                        # Decoding the rest of the buffer failed; do not try
                        # again in this feed, or many values would cost
                        # quadratic time.
                        fast = False
                    state = _CONTAINER
                    depth = 1
                    pos += 1
                    if depth > max_depth:
                        raise JSONStreamError(
                            f"JSON value nests deeper than {max_depth} levels"
                        )
                elif c == 0x22:
                    state = _STRING
                    pos += 1
                elif c in _NUMBER_START:
                    state = _NUMBER_STATE
                elif c in _LITERALS:
                    state = _LITERAL
                else:
                    raise _bad_start(buf, pos)
            elif state == _CONTAINER:
                pos = skip(buf, pos).end()  # type: ignore[union-attr]
                if pos == n:
                    break
                c = buf[pos]
                pos += 1
                if c == 0x22:
                    state = _STRING
                elif c == 0x7B or c == 0x5B:
                    depth += 1
                    if depth > max_depth:
                        raise JSONStreamError(
                            f"JSON value nests deeper than {max_depth} levels"
                        )
                else:
                    depth -= 1
                    if depth == 0:
                        self._complete(pos)
                        state = _BETWEEN
                        fast = False
            elif state == _STRING:
                pos = _STRING_BODY.match(buf, pos).end()  # type: ignore[union-attr]
                if pos == n or pos == n - 1 and buf[pos] == 0x5C:
                    break
                pos += 1  # the closing quote
                if depth:
                    state = _CONTAINER
                else:
                    self._complete(pos)
                    state = _BETWEEN
                    fast = False
            elif state == _NUMBER_STATE:
                end = _NUMBER.match(buf, pos).end()  # type: ignore[union-attr]
                if end == n:
                    pos = n
                    break
                if end == self._start + 1 and buf[self._start] == 0x2D:
                    if buf[end] == 0x49:  # "-I"
                        raise JSONStreamError("-Infinity is not valid JSON")
                pos = end
                self._complete(pos)
                state = _BETWEEN
                fast = False
            else:  # _LITERAL
                literal = _LITERALS[buf[self._start]]
                have = bytes(buf[self._start:self._start + len(literal)])
                if not literal.startswith(have):
                    raise JSONStreamError(
                        f"invalid literal {have!r}, expected {literal!r}"
                    )
                if len(have) < len(literal):
                    pos = n
                    break
                pos = self._start + len(literal)
                self._complete(pos)
                state = _BETWEEN
                fast = False
        self._state = state
        self._depth = depth
        # Drop what was consumed, keeping the value being scanned.
        start = self._start
        if start:
            del buf[:start]
            pos -= start
            self._start = 0
        self._pos = pos
        if n - start > self.max_size:
            raise JSONStreamError(
                f"JSON value exceeds the limit of {self.max_size} bytes "
                f"({n - start} bytes buffered without its end)"
            )


def loads(
    data: bytes, max_size: int = DEFAULT_MAX_SIZE, max_depth: int = DEFAULT_MAX_DEPTH
) -> object:
    """
    Strictly decode a byte string holding exactly one JSON value.

    Same rules as L{JSONStream} (UTF-8, no NaN or Infinity, no duplicate
    keys, C{max_size}, C{max_depth}); surrounding JSON whitespace is
    allowed.  Use it for an HTTP body.

    @param data: the JSON text, UTF-8.
    @param max_size: as for L{JSONStream}.
    @param max_depth: as for L{JSONStream}.
    @return: the decoded value (see L{JSONStream.values}).
    @raise JSONStreamError: the bytes are empty, hold more than one value, or
        break a rule.
    """
    raw = data.strip(b" \t\r\n")
    if not raw:
        raise JSONStreamError("no JSON value")
    if len(raw) > max_size:
        raise JSONStreamError(
            f"JSON value of {len(raw)} bytes exceeds the limit of {max_size} bytes"
        )
    if raw.count(b"[") + raw.count(b"{") > max_depth and _depth(raw) > max_depth:
        raise JSONStreamError(f"JSON value nests deeper than {max_depth} levels")
    if raw[0] in b"NI" or raw[:2] == b"-I":
        raise _bad_start(bytearray(raw), 0)
    try:
        return _decode(raw)
    except JSONStreamError as e:
        if str(e).startswith("invalid JSON: unexpected"):
            raise JSONStreamError("extra data after the JSON value") from None
        raise
