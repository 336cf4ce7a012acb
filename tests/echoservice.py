"""
A test-only service that echoes its argument, for the Go end-to-end tests of
rich types (C{tests/go/gobcalls}, mode C{echo}).  The daemon loads it from a
temporary config: C{[services.Echo] class = "tests.echoservice:Echo"}.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from rpcd.service import exposed
from rpcd.wire.gob import uint


@dataclass
class Item:
    """The Go program's C{Inner} (gob matches fields by name, not types)."""

    Label: str = ""
    Weights: list[float] = field(default_factory=list)


@dataclass
class Rich:
    """
    The Go program's C{Rich}, field for field; C{small_ratio} is Go's
    C{SmallRatio} (rpcd's snake_case to CamelCase rule).
    """

    Name: str = ""
    Count: uint = 0
    Delta: int = 0
    Ratio: float = 0.0
    Small: float = 0.0
    small_ratio: float = 0.0
    Z: complex = 0j
    OK: bool = False
    Blob: bytes = b""
    Tags: list[str] = field(default_factory=list)
    Scores: dict[str, int] = field(default_factory=dict)
    Inner: Item = field(default_factory=Item)
    Inners: list[Item] = field(default_factory=list)
    ByName: dict[str, Item] = field(default_factory=dict)
    Grid: tuple[tuple[int, int, int], tuple[int, int, int]] = ((0, 0, 0), (0, 0, 0))
    Ptr: Optional[Item] = None
    Nothing: Optional[Item] = None


class Echo:
    """Returns what it is given."""

    @exposed
    def Plain(self, value):  # type: ignore[no-untyped-def]
        """No type hints: the argument comes back as it was decoded."""
        return value

    @exposed
    def Rich(self, value: Rich) -> Rich:
        """Type hints: the argument is converted to L{Rich} and back."""
        assert isinstance(value, Rich), type(value)
        return dataclasses.replace(value)

    @exposed
    def Nothing(self, value: int) -> None:
        """Returns nothing: Go's C{reply *struct{}}."""

    @exposed
    def Fail(self, message: str) -> str:
        """Fails with the given message."""
        from rpcd.errors import RPCError
        raise RPCError(message)
