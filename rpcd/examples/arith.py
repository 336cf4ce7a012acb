"""
The arithmetic services of the seed documents.

C{Cal.Square} (seed 000), C{ServiceA.Add} (seed 002) and C{Arith.Multiply}
(seed 004), with the same names, argument shapes and results as the Go
programs, so those programs work against rpcd unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from rpcd.core.service import exposed


@dataclass
class Result:
    """C{Cal.Square}'s reply: the number and its square."""

    Num: int
    Ans: int


class Cal:
    """Squares numbers (seed 000)."""

    @exposed
    def Square(self, num: int) -> Result:
        """Return num and num squared."""
        return Result(num, num * num)


@dataclass
class Args:
    """C{Arith.Multiply}'s argument."""

    A: int
    B: int


class Arith:
    """Multiplies integers (seed 004)."""

    @exposed
    def Multiply(self, args: Args) -> int:
        """Return A times B."""
        return args.A * args.B


@dataclass
class AddArgs:
    """C{ServiceA.Add}'s argument; seed 002's Python client sends lower-case x, y."""

    X: int
    Y: int


class ServiceA:
    """Adds integers (seed 002)."""

    @exposed
    def Add(self, args: AddArgs) -> int:
        """Return X plus Y."""
        return args.X + args.Y
