"""
Tests for L{rpcd.convert}: type hints to argument and result converters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from twisted.trial.unittest import SynchronousTestCase

from rpcd.convert import argument_converter, convert_argument, result_converter, to_wire
from rpcd.errors import InvalidArgument


@dataclass
class Point:
    X: int
    Y: int


@dataclass
class Shape:
    name: str
    points: list[Point]
    tags: dict[str, int] = field(default_factory=dict)
    parent: Optional[Point] = None


class ArgumentTests(SynchronousTestCase):
    """Wire values are checked and converted per hint."""

    def convert(self, hint: Any, value: Any) -> Any:
        return convert_argument(argument_converter(hint), value, "arg")

    def test_scalars(self) -> None:
        """Scalars of the right type pass through; an integral float becomes an int."""
        self.assertEqual(self.convert(int, 5), 5)
        self.assertEqual(self.convert(int, 5.0), 5)
        self.assertEqual(self.convert(float, 2), 2.0)
        self.assertIsInstance(self.convert(float, 2), float)
        self.assertEqual(self.convert(str, "x"), "x")
        self.assertIs(self.convert(bool, True), True)
        self.assertEqual(self.convert(bytes, b"\x00"), b"\x00")

    def test_bytes_from_base64(self) -> None:
        """Bytes accept base64 text, as Go's encoding/json sends []byte."""
        self.assertEqual(self.convert(bytes, "AAE="), b"\x00\x01")

    def test_bool_is_not_int(self) -> None:
        """A boolean is refused where an int is expected."""
        e = self.assertRaises(InvalidArgument, self.convert, int, True)
        self.assertEqual(str(e), "arg: expected int, got bool")

    def test_mismatch_names_the_field(self) -> None:
        """A nested mismatch names the path to the bad field."""
        e = self.assertRaises(InvalidArgument, self.convert, Shape,
                              {"name": "s", "points": [{"X": 1, "Y": 2}, {"X": "a"}]})
        self.assertEqual(str(e), "arg.points[1].X: expected int, got str")

    def test_dataclass_case_insensitive(self) -> None:
        """Struct fields match case-insensitively, as Go's JSON decoding does."""
        self.assertEqual(self.convert(Point, {"x": 1, "y": 2}), Point(1, 2))

    def test_dataclass_missing_fields_are_zero(self) -> None:
        """A missing field takes its zero value, as gob omits zero fields."""
        self.assertEqual(self.convert(Point, {"Y": 2}), Point(0, 2))
        self.assertEqual(self.convert(Shape, {}), Shape("", [], {}, None))

    def test_dataclass_ignores_unknown_fields(self) -> None:
        """Unknown fields are ignored, as Go ignores them."""
        self.assertEqual(self.convert(Point, {"X": 1, "Y": 2, "Z": 3}), Point(1, 2))

    def test_dataclass_needs_mapping(self) -> None:
        """A non-mapping for a struct names the expected fields."""
        e = self.assertRaises(InvalidArgument, self.convert, Point, 5)
        self.assertIn("expected Point (an object with fields X, Y), got int", str(e))

    def test_containers(self) -> None:
        """Lists, tuples, dicts and Optional convert element-wise."""
        self.assertEqual(self.convert(list[int], [1, 2]), [1, 2])
        self.assertEqual(self.convert(tuple[str, str], ["a", "b"]), ("a", "b"))
        self.assertEqual(self.convert(dict[str, Point], {"p": {"X": 1}}), {"p": Point(1, 0)})
        self.assertIsNone(self.convert(Optional[int], None))
        self.assertEqual(self.convert(int | None, 3), 3)

    def test_tuple_length(self) -> None:
        """A fixed tuple refuses the wrong number of elements."""
        e = self.assertRaises(InvalidArgument, self.convert, tuple[str, str], ["a"])
        self.assertIn("expected tuple[str, str], got list", str(e))

    def test_unsupported_hint(self) -> None:
        """A hint rpcd cannot check is refused when compiling."""
        e = self.assertRaises(TypeError, argument_converter, Callable[[int], int])
        self.assertIn("rpcd cannot check arguments of type", str(e))


class ResultTests(SynchronousTestCase):
    """Results become plain data."""

    def test_dataclass_result(self) -> None:
        """A dataclass result becomes a dict keyed by field names, recursively."""
        shape = Shape("s", [Point(1, 2)], {"a": 1}, Point(3, 4))
        self.assertEqual(result_converter(Shape)(shape),
                         {"name": "s", "points": [{"X": 1, "Y": 2}], "tags": {"a": 1},
                          "parent": {"X": 3, "Y": 4}})

    def test_to_wire_without_hint(self) -> None:
        """Without a hint, nested dataclasses inside containers are still converted."""
        self.assertEqual(to_wire({"p": [Point(1, 2)]}), {"p": [{"X": 1, "Y": 2}]})

    def test_scalar_result_checked(self) -> None:
        """A scalar result hint checks the value."""
        from rpcd.convert import _Mismatch
        self.assertEqual(result_converter(int)(3), 3)
        self.assertRaises(_Mismatch, result_converter(int), "3")
