"""
Tests for L{rpcd.wire.jsonstream}.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from rpcd.wire.jsonstream import JSONStream, JSONStreamError, loads

SMALL = b'{"method":"Arith.Multiply","params":[{"A":7,"B":8}],"id":1}'


def _collect(stream: JSONStream, *chunks: bytes, close: bool = False) -> list[object]:
    out: list[object] = []
    for chunk in chunks:
        stream.feed(chunk)
        out.extend(stream.values())
    if close:
        stream.close()
        out.extend(stream.values())
    return out


class SplittingTests(SynchronousTestCase):
    """
    Finding value boundaries in a stream.
    """

    def test_every_split_point(self) -> None:
        """
        A stream of several values, cut into two feeds at every byte, gives the same values.
        """
        data = (
            b'{"a":[1,2,{"b":"x]}\\"{["}]} [true,false,null] "s\\\\" 12 '
            b'{"\xc3\xa9":"\xe2\x82\xac"}{}[]-3.5e2 true null'
        )
        expected = [
            {"a": [1, 2, {"b": 'x]}"{['}]},
            [True, False, None],
            "s\\",
            12,
            {"\u00e9": "\u20ac"},
            {},
            [],
            -350.0,
            True,
            None,
        ]
        for cut in range(len(data) + 1):
            self.assertEqual(
                _collect(JSONStream(), data[:cut], data[cut:], close=True), expected, cut
            )

    def test_scalars_between_containers(self) -> None:
        """
        Non-ASCII top-level scalars between containers in one feed do not shift later values.
        """
        self.assertEqual(
            _collect(JSONStream(), b' {} "\xc3\xa9" {"a":1} 7 ["\xe2\x82\xac"] true [2]', close=True),
            [{}, "\u00e9", {"a": 1}, 7, ["\u20ac"], True, [2]],
        )

    def test_byte_by_byte(self) -> None:
        """
        Feeding one byte at a time gives each value as soon as it is complete.
        """
        stream = JSONStream()
        seen = []
        for i, byte in enumerate(SMALL + SMALL):
            stream.feed(bytes([byte]))
            for value in stream.values():
                seen.append((i, value))
        self.assertEqual(
            seen, [(len(SMALL) - 1, json.loads(SMALL)), (2 * len(SMALL) - 1, json.loads(SMALL))]
        )

    def test_many_values_one_feed(self) -> None:
        """
        A thousand values in one feed come out in order.
        """
        data = b"".join(b'{"n":%d}' % i for i in range(1000))
        self.assertEqual(_collect(JSONStream(), data), [{"n": i} for i in range(1000)])

    def test_whitespace_between(self) -> None:
        """
        Any JSON whitespace, or none, may separate values.
        """
        self.assertEqual(
            _collect(JSONStream(), b' \t\r\n{"a":1}\n\n[2]{"b":3}\r\n "c"\t'),
            [{"a": 1}, [2], {"b": 3}, "c"],
        )

    def test_brackets_and_escapes_in_strings(self) -> None:
        """
        Brackets and escaped quotes inside strings do not end a value.
        """
        data = rb'{"k":"}]\"{[\\","j":"\\\"}"}'
        self.assertEqual(_collect(JSONStream(), data), [{"k": '}]"{[\\', "j": '\\"}'}])

    def test_escape_split_across_feeds(self) -> None:
        """
        A backslash at the end of one feed escapes the first byte of the next.
        """
        self.assertEqual(
            _collect(JSONStream(), b'["a\\', b'"', b']"]'), [['a"]']]
        )

    def test_number_waits_for_delimiter(self) -> None:
        """
        A top-level number is complete only when a delimiter or close() follows.
        """
        stream = JSONStream()
        self.assertEqual(_collect(stream, b"12"), [])
        self.assertEqual(_collect(stream, b"3 4"), [123])
        self.assertEqual(_collect(stream, close=True), [4])

    def test_literal_and_string_end_at_last_byte(self) -> None:
        """
        Top-level literals and strings are delivered without waiting for a delimiter.
        """
        self.assertEqual(_collect(JSONStream(), b'truefalse"x"null'), [True, False, "x", None])

    def test_values_and_bytes(self) -> None:
        """
        values_and_bytes gives each value with its exact bytes, without the whitespace around.
        """
        stream = JSONStream()
        stream.feed(b'  {"id": 1.0 }\n[1, 2]  ')
        self.assertEqual(
            list(stream.values_and_bytes()),
            [({"id": 1.0}, b'{"id": 1.0 }'), ([1, 2], b"[1, 2]")],
        )

    def test_unconsumed_values_wait(self) -> None:
        """
        Values not iterated stay queued for the next call.
        """
        stream = JSONStream()
        stream.feed(b"[1][2][3]")
        it = stream.values()
        self.assertEqual(next(it), [1])
        self.assertEqual(list(stream.values()), [[2], [3]])

    def test_big_value_in_small_chunks(self) -> None:
        """
        A large value fed in many small chunks is decoded once it is complete.
        """
        value = [{"k": "v" * 50, "n": [i, "]}"]} for i in range(2000)]
        data = json.dumps(value).encode()
        stream = JSONStream()
        out = []
        for i in range(0, len(data), 1000):
            stream.feed(data[i:i + 1000])
            out.extend(stream.values())
            if i + 1000 < len(data):
                self.assertEqual(out, [])
        self.assertEqual(out, [value])


class RefusalTests(SynchronousTestCase):
    """
    What the stream refuses, and how it reports it.
    """

    def assertRefused(self, data: bytes, message: str, **kwargs: int) -> JSONStream:
        stream = JSONStream(**kwargs)
        stream.feed(data)
        stream.close()
        error = self.assertRaises(JSONStreamError, list, stream.values())
        self.assertIn(message, str(error))
        return stream

    def test_nan(self) -> None:
        """
        NaN is refused, at top level and inside a value.
        """
        self.assertRefused(b"NaN", "NaN is not valid JSON")
        self.assertRefused(b'{"a":NaN}', "NaN is not valid JSON")

    def test_infinity(self) -> None:
        """
        Infinity and -Infinity are refused, at top level and inside a value.
        """
        self.assertRefused(b"Infinity", "Infinity is not valid JSON")
        self.assertRefused(b"-Infinity", "-Infinity is not valid JSON")
        self.assertRefused(b"[1,-Infinity]", "-Infinity is not valid JSON")

    def test_float_overflow(self) -> None:
        """
        A number too large for a float is refused rather than read as infinity.
        """
        self.assertRefused(b"[1e400]", "number 1e400 is out of range")

    def test_duplicate_keys(self) -> None:
        """
        A key repeated in one object is refused, even nested.
        """
        self.assertRefused(b'{"a":1,"a":2}', "duplicate object key 'a'")
        self.assertRefused(b'[{"x":{"b":1,"c":2,"b":3}}]', "duplicate object key 'b'")

    def test_too_deep(self) -> None:
        """
        Nesting beyond max_depth is refused; exactly max_depth is accepted.
        """
        self.assertRefused(b"[" * 11 + b"]" * 11, "nests deeper than 10 levels", max_depth=10)
        self.assertRefused(b"[" * 11, "nests deeper than 10 levels", max_depth=10)
        stream = JSONStream(max_depth=10)
        stream.feed(b"[" * 10 + b"]" * 10)
        self.assertEqual(len(list(stream.values())), 1)

    def test_too_deep_found_before_the_end(self) -> None:
        """
        Excess depth is reported while the value is still incomplete.
        """
        stream = JSONStream(max_depth=5)
        stream.feed(b'{"a":' * 3)
        self.assertEqual(list(stream.values()), [])
        stream.feed(b'{"a":' * 3)
        self.assertRaises(JSONStreamError, list, stream.values())

    def test_too_big(self) -> None:
        """
        A value longer than max_size is refused; exactly max_size is accepted.
        """
        self.assertRefused(b'"' + b"x" * 20 + b'"', "exceeds the limit of 10 bytes", max_size=10)
        stream = JSONStream(max_size=10)
        stream.feed(b'"' + b"x" * 8 + b'"')
        self.assertEqual(list(stream.values()), ["x" * 8])

    def test_too_big_before_buffering(self) -> None:
        """
        An incomplete value is refused as soon as it passes max_size, and its bytes are dropped.
        """
        stream = JSONStream(max_size=100)
        stream.feed(b'["' + b"x" * 90)
        self.assertEqual(list(stream.values()), [])
        self.assertEqual(stream.buffered, 92)
        stream.feed(b"x" * 20)
        self.assertEqual(stream.buffered, 0)
        error = self.assertRaises(JSONStreamError, list, stream.values())
        self.assertIn("exceeds the limit of 100 bytes", str(error))

    def test_bad_utf8(self) -> None:
        """
        Bytes that are not UTF-8 are refused, with the offset.
        """
        self.assertRefused(b'["\xff"]', "invalid UTF-8 at byte 2")
        self.assertRefused(b'{"a":"\xed\xa0\x80"}', "invalid UTF-8")

    def test_bad_start(self) -> None:
        """
        A byte that cannot start a value is refused and named.
        """
        self.assertRefused(b"hello", "invalid character b'h'")

    def test_bad_literal(self) -> None:
        """
        A misspelt literal is refused.
        """
        self.assertRefused(b"trux", "invalid literal")

    def test_syntax_error_inside(self) -> None:
        """
        A container with a syntax error is refused when it closes.
        """
        self.assertRefused(b'{"a" 1}', "invalid JSON")
        self.assertRefused(b"[1,]", "invalid JSON")

    def test_truncated(self) -> None:
        """
        The end of the stream inside a value is an error.
        """
        self.assertRefused(b'{"a":[1', "unexpected end of stream")

    def test_values_before_error_delivered(self) -> None:
        """
        Values completed before a bad one are delivered first, then the error, then the error again.
        """
        stream = JSONStream()
        stream.feed(b'[1] {"a":2} [NaN] [3]')
        it = stream.values()
        self.assertEqual([next(it), next(it)], [[1], {"a": 2}])
        self.assertRaises(JSONStreamError, next, it)
        self.assertRaises(JSONStreamError, next, stream.values())
        stream.feed(b"[4]")
        self.assertRaises(JSONStreamError, next, stream.values())


class LoadsTests(SynchronousTestCase):
    """
    Decoding a whole body with L{loads}.
    """

    def test_one_value(self) -> None:
        """
        One value with whitespace around decodes.
        """
        self.assertEqual(loads(b' \n{"a":[1,2.5,"\xc3\xa9"]}\r\n'), {"a": [1, 2.5, "\u00e9"]})

    def test_scalar(self) -> None:
        """
        A top-level number decodes without a delimiter.
        """
        self.assertEqual(loads(b"42"), 42)

    def test_refusals(self) -> None:
        """
        Empty input, extra data and the stream's rules are refused with a reason.
        """
        for data, message in [
            (b"  ", "no JSON value"),
            (b"[1] [2]", "extra data"),
            (b'{"a":1,"a":1}', "duplicate object key"),
            (b"[NaN]", "NaN is not valid JSON"),
            (b"NaN", "NaN is not valid JSON"),
            (b"[" * 200 + b"]" * 200, "nests deeper than 128 levels"),
            (b"[1", "invalid JSON"),
            (b"\xff", "invalid"),
        ]:
            error = self.assertRaises(JSONStreamError, loads, data)
            self.assertIn(message, str(error), data)

    def test_size_limit(self) -> None:
        """
        A body over max_size is refused.
        """
        error = self.assertRaises(JSONStreamError, loads, b"[" + b"1," * 10 + b"1]", max_size=10)
        self.assertIn("exceeds the limit of 10 bytes", str(error))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=5), children, max_size=5),
    max_leaves=20,
)


class PropertyTests(SynchronousTestCase):
    """
    Properties over random values and random bytes.
    """

    @settings(max_examples=200, deadline=None)
    @given(
        values=st.lists(json_values, min_size=1, max_size=5),
        separators=st.lists(st.sampled_from(["", " ", "\n", "\r\n\t"]), min_size=5, max_size=5),
        cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
        ensure_ascii=st.booleans(),
    )
    def test_round_trip(
        self,
        values: list[object],
        separators: list[str],
        cuts: list[int],
        ensure_ascii: bool,
    ) -> None:
        """
        Encoded values, joined and fed in random pieces, decode to the same values.
        """
        parts = []
        for value, sep in zip(values, separators):
            text = json.dumps(value, ensure_ascii=ensure_ascii)
            if not sep and not text.startswith(("{", "[", '"')):
                sep = " "  # a top-level number needs a delimiter, as in Go
            parts.append(text + sep)
        data = "".join(parts).encode("utf-8", "surrogatepass")
        if not ensure_ascii and any(0xD800 <= ord(c) <= 0xDFFF for c in "".join(parts)):
            return  # lone surrogates are not UTF-8; refused, tested elsewhere
        points = sorted({c % (len(data) + 1) for c in cuts})
        chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
        got = _collect(JSONStream(), *chunks, close=True)
        self.assertEqual(json.dumps(got), json.dumps(values))

    @settings(max_examples=300, deadline=None)
    @given(data=st.binary(max_size=200), cut=st.integers(min_value=0, max_value=200))
    def test_random_bytes(self, data: bytes, cut: int) -> None:
        """
        Random bytes give values or JSONStreamError, never another exception.
        """
        stream = JSONStream(max_size=100, max_depth=8)
        try:
            _collect(stream, data[:cut], data[cut:], close=True)
            loads(data, max_size=100, max_depth=8)
        except JSONStreamError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(data=st.text(alphabet='[]{}"\\:,01tnf ', max_size=60))
    def test_json_like_bytes(self, data: str) -> None:
        """
        Strings of JSON punctuation give values or JSONStreamError, and agree with json.loads on single values.
        """
        raw = data.encode()
        try:
            value = loads(raw)
        except JSONStreamError as e:
            try:
                json.loads(raw)
            except ValueError:
                return
            # json.loads accepts duplicate keys; loads must not.
            self.assertIn("duplicate object key", str(e))
            return
        self.assertEqual(value, json.loads(raw))
