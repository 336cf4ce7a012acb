"""
Tests for L{rpcd.wire.gob}: the worked example of Go's doc.go, round trips,
captures from Go's own encoder, hostile input, and property tests.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from rpcd.wire import gob
from rpcd.wire.gob.encops import _enc_ops
from rpcd.wire.gob.varint import _int_bytes, _uint_bytes
from rpcd.wire.gob.wiretypes import _common, _fields_struct, _str_bytes, _wire_struct
from tests.cache import cached_build_sync, tool_stamp
from tests.tools import require_tool

GO_PROGRAM = os.path.join(os.path.dirname(__file__), "go", "gobvectors", "main.go")
_built: list[str] = []


def go_vectors() -> str:
    """
    Build the Go vector program once for all runs (L{tests.cache}).

    @return: the path of the executable.
    @raise SkipTest: Go is missing (unless C{RPCD_REQUIRE_TOOLS=1}).
    """
    go = require_tool("go", "to build Go gob vectors")
    if not _built:
        tmp = tempfile.mkdtemp(prefix="rpcd-gobvectors-")
        atexit.register(shutil.rmtree, tmp, True)
        env = dict(os.environ)
        if not (env.get("GOCACHE") or env.get("HOME") or env.get("XDG_CACHE_HOME")):
            env["GOCACHE"] = os.path.join(tmp, "gocache")

        def build(exe: str) -> None:
            subprocess.run(
                [go, "build", "-o", exe, GO_PROGRAM],
                check=True,
                env=env,
                cwd=tmp,
                capture_output=True,
                timeout=300,
            )

        _built.append(cached_build_sync("gobvectors", [Path(GO_PROGRAM), tool_stamp(go)], build))
    return _built[0]


def run_go(mode: str, stdin: bytes = b"") -> str:
    """
    Run the Go vector program.

    @return: its standard output.
    """
    done = subprocess.run(
        [go_vectors(), mode], input=stdin, capture_output=True, timeout=60, check=True
    )
    return done.stdout.decode()


def decode_all(data: bytes, into: Any = None, **limits: int) -> list[Any]:
    """
    Decode every value in C{data}, fed in one piece.
    """
    d = gob.Decoder(**limits)
    d.feed(data)
    out = []
    while (v := d.next_value(into)) is not gob.NEED_MORE:
        out.append(v)
    return out


# The worked example in Go's encoding/gob/doc.go.
DOC_POINT = bytes.fromhex(
    "1fff8103010105506f696e7401ff82000102010158010400010159010400000007ff8201"
    "2c014200"
)

# Go's encoding of Args{7, 8} on a fresh Encoder (the start of GO_SAMPLES).
GO_ARGS = bytes.fromhex(
    "1eff81030101044172677301ff82000102010141010400010142010400000007ff82010e"
    "011000"
)

# Go 1.19's gob.Encoder output for the sample values of tests/go/gobvectors
# ("gobvectors encode"): Args{7, 8}, a Rich, a Tree, a Node list, Empty{},
# map[string]Args, Rich{} and []int{1, -1, 1000}.
GO_SAMPLES = bytes.fromhex(
    "1eff81030101044172677301ff82000102010141010400010142010400000007ff82010e"
    "011000ffc5ff83030101045269636801ff8400011201044e616d65010c000105436f756e"
    "74010600010544656c74610104000105526174696f0108000105536d616c6c0108000101"
    "5a010e0001024f4b0102000104426c6f62010a0001045461677301ff8600010653636f72"
    "657301ff88000105496e6e657201ff8a000106496e6e65727301ff8e00010642794e616d"
    "6501ff900001044772696401ff9400010350747201ff8a0001074e6f7468696e6701ff8a"
    "0001045a65726f0104000105456d707479010c00000016ff85020101085b5d737472696e"
    "6701ff8600010c00001eff870401010e6d61705b737472696e675d696e7401ff8800010c"
    "010400002aff8903010105496e6e657201ff8a00010201054c6162656c010c0001075765"
    "696768747301ff8c00000017ff8b020101095b5d666c6f6174363401ff8c00010800001b"
    "ff8d0201010c5b5d6d61696e2e496e6e657201ff8e0001ff8a000026ff8f040101156d61"
    "705b737472696e675d6d61696e2e496e6e657201ff9000010c01ff8a00001aff93010101"
    "095b325d5b335d696e7401ff940001ff92010400000eff91010102ff9200010401060000"
    "7aff840106676f7068657201fa01000000000001fe010101fe314001fee03f01fef83fff"
    "c001010104000102ff010301610002c3bc0102017802017901010102696e0102fed03ff8"
    "9c7500883ce437fe0001020001067365636f6e64000101016b0101760001020302040603"
    "080a0c010107706f696e746564000024ff95030101045472656501ff9600010201035661"
    "6c01040001044b69647301ff980000001aff970201010b5b5d6d61696e2e5472656501ff"
    "980001ff96000012ff960102010201040001060101010800000024ff99030101044e6f64"
    "6501ff9a000102010356616c01040001044e65787401ff9a0000000dff9a010201010401"
    "010600000011ff9b03010105456d70747901ff9c00000003ff9c000fff9d040102ff9e00"
    "010c01ff82000011ff9e0002036f6e65010200047a65726f000fff840b00030203000000"
    "03000000000cff9f020102ffa0000104000009ffa000030201fe07d0"
)


@dataclass
class Args:
    a: int
    b: int


@dataclass
class Inner:
    label: str = ""
    weights: list[float] = field(default_factory=list)


@dataclass
class Rich:
    name: str
    count: gob.uint
    delta: int
    ratio: float
    small: float
    z: complex
    ok: bool = field(metadata={"gob_name": "OK"})
    blob: bytes
    tags: list[str]
    scores: Optional[dict[str, int]]
    inner: Inner
    inners: list[Inner]
    by_name: Optional[dict[str, Inner]]
    grid: tuple[tuple[int, int, int], tuple[int, int, int]]
    ptr: Optional[Inner]
    nothing: Optional[Inner]
    zero: int
    empty: str


@dataclass
class Tree:
    val: int
    kids: list["Tree"] = field(default_factory=list)


@dataclass
class Node:
    val: int
    next: Optional["Node"] = None


@dataclass
class Empty:
    pass


def sample_rich() -> Rich:
    """The Python twin of gobvectors' sampleRich()."""
    return Rich(
        name="gopher",
        count=1 << 40,
        delta=-129,
        ratio=17.0,
        small=0.5,
        z=1.5 - 2j,
        ok=True,
        blob=b"\0\1\2\xff",
        tags=["a", "", "ü"],
        scores={"x": 1, "y": -1},
        inner=Inner("in", [0.25, -1e300]),
        inners=[Inner(), Inner("second")],
        by_name={"k": Inner("v")},
        grid=((1, 2, 3), (4, 5, 6)),
        ptr=Inner("pointed"),
        nothing=None,
        zero=0,
        empty="",
    )


def python_samples() -> bytes:
    """Python's encoding of the values that gobvectors' decode mode expects."""
    e = gob.Encoder()
    return b"".join(
        [
            e.encode(Args(7, 8)),
            e.encode(sample_rich()),
            e.encode(Tree(1, [Tree(2), Tree(3, [Tree(4)])])),
            e.encode(Node(1, Node(2, Node(3)))),
            e.encode(Empty()),
            e.encode({"one": Args(1, 0), "zero": Args(0, 0)}),
            e.encode([1, -1, 1000]),
        ]
    )


GO_DECODED = [
    "main.Args{A:7, B:8}",
    'main.Rich{Name:"gopher", Count:0x10000000000, Delta:-129, Ratio:17, '
    "Small:0.5, Z:(1.5-2i), OK:true, Blob:[]uint8{0x0, 0x1, 0x2, 0xff}, "
    'Tags:[]string{"a", "", "ü"}, Scores:map[string]int{"x":1, "y":-1}, '
    'Inner:main.Inner{Label:"in", Weights:[]float64{0.25, -1e+300}}, '
    'Inners:[]main.Inner{main.Inner{Label:"", Weights:[]float64(nil)}, '
    'main.Inner{Label:"second", Weights:[]float64(nil)}}, '
    'ByName:map[string]main.Inner{"k":main.Inner{Label:"v", Weights:[]float64(nil)}}, '
    "Grid:[2][3]int{[3]int{1, 2, 3}, [3]int{4, 5, 6}}, Ptr:(*main.Inner)(nil), "
    'Nothing:(*main.Inner)(nil), Zero:0, Empty:""}',
    'Ptr main.Inner{Label:"pointed", Weights:[]float64(nil)} Nothing true',
    "main.Tree{Val:1, Kids:[]main.Tree{main.Tree{Val:2, Kids:[]main.Tree(nil)}, "
    "main.Tree{Val:3, Kids:[]main.Tree{main.Tree{Val:4, Kids:[]main.Tree(nil)}}}}}",
    "Node 1 2 3 true",
    "main.Empty{}",
    'map[string]main.Args{"one":main.Args{A:1, B:0}, "zero":main.Args{A:0, B:0}}',
    "[]int{1, -1, 1000}",
]
"""What gobvectors' decode mode prints for the sample values."""


def rich_struct() -> gob.Struct:
    """The Struct of the Rich dataclass."""
    t = gob.type_from_hint(Rich)
    assert isinstance(t, gob.Struct)
    return t


POINT = gob.Struct("Point", [gob.Field("X", gob.Int), gob.Field("Y", gob.Int)])


class DocExampleTests(SynchronousTestCase):
    """
    The encodings spelled out in Go's encoding/gob/doc.go.
    """

    def test_point_encode(self) -> None:
        """Point{22, 33} encodes to doc.go's bytes, then to the short form."""
        e = gob.Encoder()
        self.assertEqual(e.encode(POINT.new(X=22, Y=33)), DOC_POINT)
        self.assertEqual(e.encode((22, 33), POINT), bytes.fromhex("07ff82012c014200"))

    def test_point_decode_bytewise(self) -> None:
        """doc.go's bytes fed one at a time decode to Point{22, 33} at the last byte."""
        d = gob.Decoder()
        seen = []
        for i in range(len(DOC_POINT)):
            d.feed(DOC_POINT[i : i + 1])
            v = d.next_value()
            if v is not gob.NEED_MORE:
                seen.append((i, v))
        self.assertEqual(seen, [(len(DOC_POINT) - 1, {"X": 22, "Y": 33})])
        value = seen[0][1]
        self.assertIsInstance(value, gob.GoStruct)
        self.assertEqual(value.gotype.name, "Point")
        self.assertEqual([f.name for f in value.gotype.fields], ["X", "Y"])

    def test_singleton_int(self) -> None:
        """A top-level int 3 is 03 04 00 06 both ways."""
        self.assertEqual(gob.Encoder().encode(3), bytes.fromhex("03040006"))
        self.assertEqual(decode_all(bytes.fromhex("03040006")), [3])

    def test_integer_and_float_examples(self) -> None:
        """doc.go's 256 (FE 01 00), -129 (FE 01 01) and 17.0 (FE 31 40) examples."""
        e = gob.Encoder()
        self.assertEqual(e.encode(256, gob.Uint), bytes.fromhex("050600fe0100"))
        self.assertEqual(e.encode(-129, gob.Int), bytes.fromhex("050400fe0101"))
        self.assertEqual(e.encode(17.0, gob.Float), bytes.fromhex("050800fe3140"))
        self.assertEqual(
            decode_all(bytes.fromhex("050600fe0100" "050400fe0101" "050800fe3140")),
            [256, -129, 17.0],
        )

    def test_args_like_go(self) -> None:
        """Args{7, 8} encodes to exactly the bytes Go's encoder produces."""
        self.assertEqual(gob.Encoder().encode(Args(7, 8)), GO_ARGS)


class RoundTripTests(SynchronousTestCase):
    """
    Values encoded by L{gob.Encoder} decode back to themselves.
    """

    def roundtrip(self, value: Any, gotype: gob.GoType | None = None, into: Any = None) -> Any:
        e = gob.Encoder()
        data = e.encode(value, gotype) + e.encode(value, gotype)
        first, second = decode_all(data, into)
        self.assertEqual(first, second)
        return first

    def test_basic_types(self) -> None:
        """Every basic type survives a round trip, including extremes."""
        cases = [
            (True, gob.Bool),
            (False, gob.Bool),
            (0, gob.Int),
            (-(2**63), gob.Int),
            (2**63 - 1, gob.Int),
            (2**64 - 1, gob.Uint),
            (1.5e-300, gob.Float),
            (-0.0, gob.Float),
            (float("inf"), gob.Float),
            (3 - 4j, gob.Complex),
            ("héllo", gob.String),
            ("", gob.String),
            ("bad \udcff utf-8", gob.String),
            (b"\x00\xff" * 100, gob.Bytes),
        ]
        for value, t in cases:
            self.assertEqual(self.roundtrip(value, t), value, (value, t))

    def test_out_of_range(self) -> None:
        """Integers that do not fit 64 bits and negative uints are refused."""
        e = gob.Encoder()
        for value, t in [(2**63, gob.Int), (2**64, gob.Uint), (-1, gob.Uint)]:
            self.assertRaises(gob.GobEncodeError, e.encode, value, t)

    def test_invalid_utf8_from_go(self) -> None:
        """A Go string that is not UTF-8 decodes and re-encodes to the same bytes."""
        data = bytes.fromhex("060c0003ff0061")
        (value,) = decode_all(data)
        self.assertEqual(gob.Encoder().encode(value, gob.String), data)

    def test_containers(self) -> None:
        """Slices, arrays, maps and nested containers round trip."""
        self.assertEqual(self.roundtrip([1, 2, 3]), [1, 2, 3])
        self.assertEqual(self.roundtrip([[1], [], [2, 3]]), [[1], [], [2, 3]])
        self.assertEqual(self.roundtrip({"a": [1.5]}), {"a": [1.5]})
        grid = gob.Array(gob.Array(gob.Int, 2), 2)
        self.assertEqual(self.roundtrip([[1, 2], [3, 4]], grid), [[1, 2], [3, 4]])
        self.assertEqual(self.roundtrip({}, gob.Map(gob.String, gob.Int)), {})
        self.assertEqual(self.roundtrip([], gob.Slice(gob.Int)), [])

    def test_nested_structs_and_maps_of_structs(self) -> None:
        """Structs nested in structs, slices and maps round trip as GoStructs."""
        value = {"one": Args(1, 0), "zero": Args(0, 0)}
        out = self.roundtrip(value)
        self.assertEqual(out, {"one": {"A": 1, "B": 0}, "zero": {"A": 0, "B": 0}})
        self.assertEqual(type(out["one"]).gotype.name, "Args")

    def test_dataclass_into(self) -> None:
        """Decoding into a dataclass type gives that dataclass, zero fields included."""
        rich = sample_rich()
        self.assertEqual(self.roundtrip(rich, into=Rich), rich)
        self.assertEqual(self.roundtrip(Args(0, 0), into=Args), Args(0, 0))

    def test_recursive_types(self) -> None:
        """Recursive structs (through a slice and through a pointer) round trip."""
        tree = Tree(1, [Tree(2), Tree(3, [Tree(4)])])
        self.assertEqual(self.roundtrip(tree, into=Tree), tree)
        node = Node(1, Node(2, Node(3)))
        self.assertEqual(self.roundtrip(node, into=Node), node)
        generic = self.roundtrip(node)
        self.assertEqual(generic["Next"]["Next"], {"Val": 3, "Next": None})

    def test_recursive_slice_type(self) -> None:
        """A slice of itself (type T []T) encodes and decodes."""
        t = gob.Slice(None, "T")
        t.elem = t
        self.assertEqual(self.roundtrip([[], [[]]], t), [[], [[]]])

    def test_empty_struct(self) -> None:
        """An empty struct is its type id and a terminator."""
        data = gob.Encoder().encode(Empty())
        self.assertTrue(data.endswith(bytes.fromhex("03ff8200")))
        self.assertEqual(self.roundtrip(Empty(), into=Empty), Empty())

    def test_zero_fields_omitted(self) -> None:
        """Zero fields are not sent, as by Go, and come back as zero values."""
        zero = Rich("", 0, 0, 0.0, 0.0, 0j, False, b"", [], None, Inner(), [], None,
                    ((0, 0, 0), (0, 0, 0)), None, None, 0, "")
        e = gob.Encoder()
        e.encode(None, Rich)
        # Only Inner (a struct) and Grid (an array) are sent: the same bytes
        # as Go's Rich{} in GO_SAMPLES, but for the type id.
        expected = "0f" "ff82" "0b00" "03" "02" "03000000" "03000000" "00"
        self.assertEqual(e.encode(zero).hex(), expected)
        self.assertIn(bytes.fromhex(expected.replace("ff82", "ff84")), GO_SAMPLES)
        (back,) = decode_all(gob.Encoder().encode(zero))
        self.assertEqual(back["Tags"], [])
        self.assertEqual(back["Name"], "")
        self.assertEqual(back["Scores"], None)
        self.assertEqual(back["Ptr"], None)
        self.assertEqual(decode_all(gob.Encoder().encode(zero), into=Rich), [zero])

    def test_new_is_all_nil(self) -> None:
        """Struct.new() leaves struct, array and map fields None, so nothing is sent."""
        t = rich_struct()
        e = gob.Encoder()
        e.encode(None, t)
        self.assertEqual(e.encode(t.new()), bytes.fromhex("03ff8200"))

    def test_gostruct_echo(self) -> None:
        """A decoded GoStruct re-encodes as the same Go type and value."""
        values = decode_all(GO_SAMPLES)
        e = gob.Encoder()
        again = decode_all(b"".join(e.encode(v) for v in values))
        self.assertEqual(again, values)
        self.assertEqual(
            [getattr(getattr(type(v), "gotype", None), "name", None) for v in again],
            ["Args", "Rich", "Tree", "Node", "Empty", None, "Rich", None],
        )

    def test_tuple_struct(self) -> None:
        """A Struct with py_class=tuple decodes to a tuple in Go field order."""
        t = gob.Struct("Point", [("X", gob.Int), ("Y", gob.Int)], py_class=tuple)
        self.assertEqual(self.roundtrip((0, 5), t, into=t), (0, 5))

    def test_skip_unknown_fields(self) -> None:
        """Fields the target lacks are skipped; fields the wire lacks are zero."""
        (a,) = decode_all(gob.Encoder().encode(sample_rich()), into=gob.Struct(
            "Mine", [("Name", gob.String), ("Missing", gob.Slice(gob.Int)), ("Zero", gob.Int)]
        ))
        self.assertEqual(a, {"Name": "gopher", "Missing": [], "Zero": 0})

    def test_discard(self) -> None:
        """DISCARD skips a value of any type and the stream carries on."""
        e = gob.Encoder()
        data = e.encode(sample_rich()) + e.encode(Tree(1, [Tree(2)])) + e.encode(5)
        d = gob.Decoder()
        d.feed(data)
        self.assertIsNone(d.next_value(gob.DISCARD))
        self.assertIsNone(d.next_value(gob.DISCARD))
        self.assertEqual(d.next_value(), 5)

    def test_type_mismatch_recoverable(self) -> None:
        """A value that does not fit the target raises GobTypeMismatch, and the next value decodes."""
        e = gob.Encoder()
        d = gob.Decoder()
        d.feed(e.encode(Args(1, 2)) + e.encode("s") + e.encode(Args(3, 4)))
        self.assertRaises(gob.GobTypeMismatch, d.next_value, Tree)
        self.assertRaises(gob.GobTypeMismatch, d.next_value, gob.Int)
        self.assertEqual(d.next_value(Args), Args(3, 4))

    def test_uint_into_int_mismatch(self) -> None:
        """As in Go, an unsigned wire value does not decode into a signed target."""
        d = gob.Decoder()
        d.feed(gob.Encoder().encode(3, gob.Uint))
        self.assertRaises(gob.GobTypeMismatch, d.next_value, gob.Int)

    def test_uint_into_int_names_the_hint(self) -> None:
        """The mismatch of Go's uint and a field hinted int names rpcd.wire.gob.uint and docs/gob.md."""
        d = gob.Decoder()
        d.feed(gob.Encoder().encode(3, gob.Uint))
        e = self.assertRaises(gob.GobTypeMismatch, d.next_value, gob.Int)
        self.assertIn("cannot decode uint into int", str(e))
        self.assertIn("hint the field rpcd.wire.gob.uint instead of int (docs/gob.md", str(e))

    def test_int_into_uint_names_the_hint(self) -> None:
        """The opposite mismatch names int as the hint to use."""
        d = gob.Decoder()
        d.feed(gob.Encoder().encode(-3, gob.Int))
        e = self.assertRaises(gob.GobTypeMismatch, d.next_value, gob.Uint)
        self.assertIn("hint the field int instead of rpcd.wire.gob.uint", str(e))

    def test_failed_encode_leaves_encoder_intact(self) -> None:
        """A failed encode sends nothing and leaves the type state unchanged."""
        e = gob.Encoder()
        self.assertRaises(gob.GobEncodeError, e.encode, Args("x", 1))  # type: ignore[arg-type]
        self.assertEqual(e.encode(Args(7, 8)), GO_ARGS)

    def test_failed_type_compile_caches_nothing(self) -> None:
        """A recursive type that fails to compile leaves no half-built encoder behind."""
        node = gob.Struct("N")
        kids = gob.Slice(node)
        node.define([("Kids", kids), ("Bad", gob.Slice(None))])
        self.assertRaises(gob.GobEncodeError, gob.Encoder().encode, None, node)
        self.assertRaises(gob.GobEncodeError, _enc_ops, node)
        self.assertIsNone(kids._enc)
        node.define([("Kids", kids)])
        self.assertEqual(decode_all(gob.Encoder().encode([{"Kids": [{}]}], kids)), [[{"Kids": [{"Kids": []}]}]])

    def test_atomic_encode_all(self) -> None:
        """encode_all with one bad value encodes nothing, and later type definitions still go out."""
        e = gob.Encoder()
        self.assertRaises(gob.GobEncodeError, e.encode_all, [(Args(1, 2), None), ([1, "x"], gob.Slice(gob.Int))])
        self.assertEqual(decode_all(e.encode(Args(1, 2))), [{"A": 1, "B": 2}])

    def test_new_fills_zero_values(self) -> None:
        """Struct.new fills the fields it is not given and refuses unknown ones."""
        self.assertEqual(POINT.new(X=1), {"X": 1, "Y": 0})
        self.assertRaises(gob.GobEncodeError, POINT.new, Z=1)


class HintTests(SynchronousTestCase):
    """
    L{gob.type_from_hint} and L{gob.guess_type}.
    """

    def test_hints(self) -> None:
        """Python hints map to the documented Go types."""
        self.assertIs(gob.type_from_hint(int), gob.Int)
        self.assertIs(gob.type_from_hint(gob.uint), gob.Uint)
        self.assertIs(gob.type_from_hint(Optional[str]), gob.String)
        self.assertEqual(str(gob.type_from_hint(list[int])), "[]int")
        self.assertEqual(str(gob.type_from_hint(tuple[float, ...])), "[]float64")
        self.assertEqual(str(gob.type_from_hint(tuple[int, int, int])), "[3]int")
        self.assertEqual(str(gob.type_from_hint(dict[str, list[bytes]])), "map[string][][]byte")
        self.assertIs(gob.type_from_hint(list[int]), gob.type_from_hint(list[int]))
        self.assertRaises(gob.GobEncodeError, gob.type_from_hint, int | str)
        self.assertRaises(gob.GobEncodeError, gob.type_from_hint, tuple[int, str])

    def test_dataclass_names(self) -> None:
        """Dataclass fields get CamelCase Go names unless metadata names them."""
        t = rich_struct()
        names = [f.name for f in t.fields]
        self.assertEqual(names[:7], ["Name", "Count", "Delta", "Ratio", "Small", "Z", "OK"])
        self.assertIn("ByName", names)
        self.assertIs(t.fields[1].type, gob.Uint)
        self.assertEqual(t.py_names[names.index("ByName")], "by_name")

    def test_guess(self) -> None:
        """guess_type names a Go type for plain values and refuses what gob cannot say."""
        self.assertIs(gob.guess_type(1), gob.Int)
        self.assertIs(gob.guess_type(True), gob.Bool)
        self.assertEqual(str(gob.guess_type([1, 2])), "[]int")
        self.assertEqual(str(gob.guess_type({"a": 1})), "map[string]int")
        self.assertIs(gob.guess_type(Args(1, 2)), gob.type_from_hint(Args))
        for bad in (None, [], {}, [1, "a"], object(), {1: 2, "a": 2}):
            self.assertRaises(gob.GobEncodeError, gob.guess_type, bad)
        loop: list[Any] = []
        loop.append(loop)
        self.assertRaises(gob.GobEncodeError, gob.guess_type, loop)


class GoCaptureTests(SynchronousTestCase):
    """
    Interoperation with Go's own encoder and decoder (committed captures, and
    the live Go program when Go is installed).
    """

    def check_samples(self, values: list[Any]) -> None:
        args, rich, tree, node, empty, by_name, zero_rich, ints = values
        self.assertEqual(args, {"A": 7, "B": 8})
        self.assertEqual(rich["Count"], 1 << 40)
        self.assertEqual(rich["Delta"], -129)
        self.assertEqual(rich["Z"], 1.5 - 2j)
        self.assertEqual(rich["Blob"], b"\0\1\2\xff")
        self.assertEqual(rich["Tags"], ["a", "", "ü"])
        self.assertEqual(rich["Scores"], {"x": 1, "y": -1})
        self.assertEqual(rich["Inner"], {"Label": "in", "Weights": [0.25, -1e300]})
        self.assertEqual(rich["Inners"], [{"Label": "", "Weights": []}, {"Label": "second", "Weights": []}])
        self.assertEqual(rich["Grid"], [[1, 2, 3], [4, 5, 6]])
        self.assertEqual(rich["Ptr"], {"Label": "pointed", "Weights": []})
        self.assertEqual((rich["Nothing"], rich["Zero"], rich["Empty"], rich["OK"]), (None, 0, "", True))
        self.assertEqual(tree["Kids"][1]["Kids"][0], {"Val": 4, "Kids": []})
        self.assertEqual(node["Next"]["Next"], {"Val": 3, "Next": None})
        self.assertEqual(empty, {})
        self.assertEqual(by_name, {"one": {"A": 1, "B": 0}, "zero": {"A": 0, "B": 0}})
        self.assertEqual(zero_rich["Grid"], [[0, 0, 0], [0, 0, 0]])
        self.assertEqual(zero_rich["Scores"], None)
        self.assertEqual(ints, [1, -1, 1000])

    def test_committed_samples(self) -> None:
        """The committed Go capture decodes to the sample values."""
        self.check_samples(decode_all(GO_SAMPLES))

    def test_committed_samples_into_dataclasses(self) -> None:
        """Go's Rich decodes into the Python dataclass, equal to the Python sample."""
        d = gob.Decoder()
        d.feed(GO_SAMPLES)
        self.assertEqual(d.next_value(Args), Args(7, 8))
        self.assertEqual(d.next_value(Rich), sample_rich())
        self.assertEqual(d.next_value(Tree), Tree(1, [Tree(2), Tree(3, [Tree(4)])]))
        self.assertEqual(d.next_value(Node), Node(1, Node(2, Node(3))))

    def test_live_go_encoder(self) -> None:
        """What the installed Go encodes now decodes to the sample values."""
        self.check_samples(decode_all(bytes.fromhex(run_go("encode").strip())))

    def test_live_go_decoder(self) -> None:
        """Go decodes what Python encodes into the expected Go values."""
        self.assertEqual(run_go("decode", python_samples()).splitlines(), GO_DECODED)

    def test_live_go_decodes_echo(self) -> None:
        """Go decodes Go's own samples after Python decoded and re-encoded them as GoStructs."""
        e = gob.Encoder()
        values = decode_all(GO_SAMPLES)
        del values[6]  # Rich{}: the decode mode does not expect it
        data = b"".join(e.encode(v) for v in values)
        self.assertEqual(run_go("decode", data).splitlines(), GO_DECODED)


def _hdr(tid: int) -> bytes:
    return _int_bytes(tid)


def _msg(body: bytes) -> bytes:
    return _uint_bytes(len(body)) + body


def _slice_def(tid: int, elem: int) -> bytes:
    """A type definition message: type tid []elem."""
    return _msg(_hdr(-tid) + _wire_struct(1, [_common("", tid), _hdr(elem)]))


def _struct_def(tid: int, fields: list[tuple[str, int]]) -> bytes:
    """A type definition message: a struct with the given (name, type id) fields."""
    body = _uint_bytes(len(fields)) + b"".join(
        _fields_struct([_str_bytes(n), _hdr(i)]) for n, i in fields
    )
    return _msg(_hdr(-tid) + _wire_struct(2, [_common("S", tid), body]))


class HostileInputTests(SynchronousTestCase):
    """
    Malformed and hostile streams fail fast with L{gob.GobError}.
    """

    def assertGobError(self, data: bytes, into: Any = None, **limits: int) -> gob.GobError:
        # CPU time of this thread, not wall-clock time: other processes
        # loading the machine do not count.
        start = time.thread_time()
        d = gob.Decoder(**limits)
        d.feed(data)
        with self.assertRaises(gob.GobError) as cm:
            while d.next_value(into) is not gob.NEED_MORE:
                pass
        self.assertLess(time.thread_time() - start, 2.0)
        return cm.exception

    def test_deep_type_nesting(self) -> None:
        """A chain of 5000 nested slice types is refused, not a RecursionError (CVE-2022-30635)."""
        defs = b"".join(_slice_def(65 + i, 66 + i) for i in range(5000))
        defs += _slice_def(5065, 2)
        e = self.assertGobError(defs + _msg(_hdr(65) + b"\x00\x00"), max_types=10000, max_type_bytes=10**7)
        self.assertIn("nested", str(e))
        e = self.assertGobError(defs + _msg(_hdr(65) + b"\x00\x00"), gob.DISCARD, max_types=10000, max_type_bytes=10**7)
        self.assertIn("nested", str(e))

    def test_deep_value_nesting(self) -> None:
        """A recursive type nested 100000 deep in one message is refused, also when discarded."""
        defs = _struct_def(65, [("Next", 65)])
        value = _hdr(65) + b"\x01" * 100000 + b"\x00" * 100001
        for into in (None, gob.DISCARD):
            e = self.assertGobError(defs + _msg(value), into)
            self.assertIn("nested", str(e))
        e = self.assertGobError(_slice_def(65, 65) + _msg(_hdr(65) + b"\x00" + b"\x01" * 50000 + b"\x00"))
        self.assertIn("nested", str(e))

    def test_huge_counts(self) -> None:
        """Huge slice, map, string and byte counts in tiny messages are refused before allocating."""
        huge = bytes.fromhex("f83fffffffffffffff")
        cases = [
            _slice_def(65, 2) + _msg(_hdr(65) + b"\x00" + huge),
            _msg(_hdr(6) + b"\x00" + huge),
            _msg(_hdr(5) + b"\x00" + huge),
            _msg(_hdr(6) + b"\x00\x7f"),
        ]
        for data in cases:
            self.assertGobError(data)
        map_def = _msg(_hdr(-65) + _wire_struct(3, [_common("", 65), _hdr(6), _hdr(2)]))
        self.assertGobError(map_def + _msg(_hdr(65) + b"\x00" + huge))

    def test_huge_array_length(self) -> None:
        """An array type of length 2**62 with a short value is refused."""
        defn = _msg(_hdr(-65) + _wire_struct(0, [_common("", 65), _hdr(2), _hdr(2**62)]))
        self.assertGobError(defn + _msg(_hdr(65) + b"\x00\x02\x02\x02"))

    def test_message_length_limit(self) -> None:
        """A length prefix over the limit is refused before its body arrives."""
        d = gob.Decoder(max_message_size=1000)
        d.feed(bytes.fromhex("fe03e9"))
        self.assertRaises(gob.GobError, d.next_value)
        d = gob.Decoder()
        d.feed(bytes.fromhex("f7"))
        self.assertRaises(gob.GobError, d.next_value)
        d = gob.Decoder()
        d.feed(bytes.fromhex("f8ffffffffffffffff"))
        self.assertRaises(gob.GobError, d.next_value)

    def test_type_definition_limits(self) -> None:
        """Too many type definitions, too many type bytes, duplicates and reserved ids are refused."""
        defs = b"".join(_slice_def(65 + i, 2) for i in range(20))
        self.assertIn("more than 10", str(self.assertGobError(defs, max_types=10)))
        self.assertIn("exceed", str(self.assertGobError(defs, max_type_bytes=100)))
        self.assertIn("duplicate", str(self.assertGobError(_slice_def(65, 2) * 2)))
        self.assertIn("reserved", str(self.assertGobError(_slice_def(16, 2))))

    def test_bad_references(self) -> None:
        """Undefined type ids, interface values and extra bytes are refused."""
        self.assertIn("undefined", str(self.assertGobError(_slice_def(65, 99) + _msg(_hdr(65) + b"\x00\x00"))))
        self.assertIn("interface", str(self.assertGobError(_slice_def(65, 8) + _msg(_hdr(65) + b"\x00\x00"))))
        self.assertIn("unknown type", str(self.assertGobError(_msg(_hdr(70) + b"\x00"))))
        self.assertIn("left over", str(self.assertGobError(_msg(_hdr(2) + b"\x00\x02\x02"))))
        self.assertIn("truncated", str(self.assertGobError(_msg(_hdr(7) + b"\x00\x02"))))
        self.assertIn("out of range", str(self.assertGobError(_struct_def(65, [("A", 2)]) + _msg(_hdr(65) + b"\x02\x02\x00"))))
        self.assertIn("empty", str(self.assertGobError(b"\x00")))

    def test_failed_stream_stays_failed(self) -> None:
        """After a GobError every call raises GobError."""
        d = gob.Decoder()
        d.feed(b"\x00" + gob.Encoder().encode(1))
        self.assertRaises(gob.GobError, d.next_value)
        self.assertRaises(gob.GobError, d.next_value)


# Property tests

_names = st.from_regex(r"\A[A-Z][a-zA-Z0-9]{0,5}\Z")
_basic = st.sampled_from([gob.Bool, gob.Int, gob.Uint, gob.Float, gob.Complex, gob.String, gob.Bytes])
_keys = st.sampled_from([gob.Bool, gob.Int, gob.Uint, gob.Float, gob.String])


def _structs(inner: st.SearchStrategy[gob.GoType]) -> st.SearchStrategy[gob.GoType]:
    return st.builds(
        lambda name, fields: gob.Struct(name, fields),
        _names,
        st.lists(st.tuples(_names, inner), max_size=4, unique_by=lambda f: f[0]),
    )


gotypes = st.recursive(
    _basic,
    lambda inner: st.one_of(
        st.builds(gob.Slice, inner),
        st.builds(gob.Array, inner, st.integers(0, 3)),
        st.builds(gob.Map, _keys, inner),
        _structs(inner),
    ),
    max_leaves=8,
)


def values_of(t: gob.GoType) -> st.SearchStrategy[Any]:
    """Python values of Go type C{t} (as they decode back)."""
    if t is gob.Bool:
        return st.booleans()
    if t is gob.Int:
        return st.integers(-(2**63), 2**63 - 1)
    if t is gob.Uint:
        return st.integers(0, 2**64 - 1)
    if t is gob.Float:
        return st.floats(allow_nan=False)
    if t is gob.Complex:
        return st.complex_numbers(allow_nan=False)
    if t is gob.String:
        return st.text(max_size=10)
    if t is gob.Bytes:
        return st.binary(max_size=10)
    if isinstance(t, gob.Slice) and t.elem is not None:
        return st.lists(values_of(t.elem), max_size=3)
    if isinstance(t, gob.Array) and t.elem is not None:
        return st.lists(values_of(t.elem), min_size=t.length, max_size=t.length)
    if isinstance(t, gob.Map) and t.key is not None and t.elem is not None:
        return st.dictionaries(values_of(t.key), values_of(t.elem), max_size=3)
    assert isinstance(t, gob.Struct)
    return st.fixed_dictionaries({f.name: values_of(f.type) for f in t.fields}).map(
        lambda d: t.value_class(d)
    )


typed_values = gotypes.flatmap(lambda t: st.tuples(st.just(t), st.lists(values_of(t), min_size=1, max_size=3)))


class PropertyTests(SynchronousTestCase):
    """
    Random types and values round trip; random bytes only ever raise GobError.
    """

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(typed_values, st.data())
    def test_roundtrip(self, tv: tuple[gob.GoType, list[Any]], data: st.DataObject) -> None:
        """Random values of random types decode to themselves, in any feed split."""
        t, values = tv
        e = gob.Encoder()
        stream = b"".join(e.encode(v, t) for v in values)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
        d = gob.Decoder()
        out: list[Any] = []
        for a, b in zip([0] + cuts, cuts + [len(stream)]):
            d.feed(stream[a:b])
            while (v := d.next_value(t if len(out) % 2 else None)) is not gob.NEED_MORE:
                out.append(v)
        self.assertEqual(out, values)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200), st.sampled_from([None, gob.DISCARD, Tree]))
    def test_random_bytes(self, data: bytes, into: Any) -> None:
        """Random bytes give values, NEED_MORE or GobError, nothing else."""
        d = gob.Decoder()
        d.feed(data)
        try:
            for _ in range(1000):
                if d.next_value(into) is gob.NEED_MORE:
                    break
        except gob.GobError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def test_mutated_streams(self, data: st.DataObject) -> None:
        """Valid streams with bytes flipped, inserted or deleted only ever raise GobError."""
        stream = bytearray(GO_SAMPLES if data.draw(st.booleans()) else python_samples())
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(stream) - 1))
            action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
            if action == "flip":
                stream[i] = data.draw(st.integers(0, 255))
            elif action == "insert":
                stream.insert(i, data.draw(st.integers(0, 255)))
            else:
                del stream[i]
        into = data.draw(st.sampled_from([None, gob.DISCARD, Rich]))
        d = gob.Decoder()
        d.feed(bytes(stream))
        try:
            for _ in range(100):
                try:
                    if d.next_value(into) is gob.NEED_MORE:
                        break
                except gob.GobTypeMismatch:
                    pass
        except gob.GobError:
            pass


class InterningLifetimeTests(SynchronousTestCase):
    """Composite types built from decoded types do not outlive them."""

    def test_no_growth_per_decoder(self) -> None:
        """Guessing []T for structs from many short-lived decoders keeps no types alive."""
        import gc

        from rpcd.wire import gob as gob_module
        point = gob_module.Struct("P", [("X", gob_module.Int), ("Y", gob_module.Int)])
        data = gob_module.Encoder().encode([{"X": 1, "Y": 2}], gob_module.Slice(point))

        def churn(n: int) -> int:
            for _ in range(n):
                decoder = gob_module.Decoder()
                decoder.feed(data)
                value = decoder.next_value()
                gob_module.Encoder().encode(value, gob_module.guess_type(value))
            gc.collect()
            return sum(1 for o in gc.get_objects()
                       if isinstance(o, (gob_module.Slice, gob_module.Struct)))

        churn(5)
        before = churn(5)
        self.assertEqual(churn(300), before)
