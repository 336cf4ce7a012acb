"""
Marker objects: L{NEED_MORE} and L{DISCARD} for L{Decoder.next_value}
callers, and the decoders' internal placeholders for absent fields.
"""

from __future__ import annotations

from typing import Any


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_MORE: Any = _Sentinel("NEED_MORE")
"""Returned by L{Decoder.next_value} when no complete value is buffered."""

DISCARD: Any = _Sentinel("DISCARD")
"""Pass as C{into} to L{Decoder.next_value} to skip a value (result C{None})."""


_MUTABLE: Any = _Sentinel("_MUTABLE")
"""A struct field absent from the wire whose zero value is a fresh list or dict."""

_UNSET: Any = _Sentinel("_UNSET")
"""A dataclass field absent from the wire: its default applies."""
