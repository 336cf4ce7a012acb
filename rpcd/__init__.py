"""
rpcd: an RPC daemon and client library on Twisted.

Go's net/rpc made remote calls feel local; rpcd does the same for Python and
speaks Go's wire formats too, so stock Go clients and servers interoperate.
"""

from __future__ import annotations

from typing import Any

__all__ = ["serve", "service_for"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing rpcd (the plugin drop-ins do) stays cheap.
    if name in ("serve", "service_for"):
        from rpcd import embed
        return getattr(embed, name)
    raise AttributeError(f"module 'rpcd' has no attribute {name!r}")
