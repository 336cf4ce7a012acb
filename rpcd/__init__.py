"""
rpcd: an RPC daemon and client library on Twisted.

Go's net/rpc made remote calls feel local; rpcd does the same for Python and
speaks Go's wire formats too, so stock Go clients and servers interoperate.

The packages, lowest layer first (C{docs/architecture.md}): L{rpcd.wire}
(sans-IO codecs), L{rpcd.core} (services, calls, sessions), L{rpcd.middleware}
(built-in interceptors), L{rpcd.tls}, L{rpcd.server} and L{rpcd.client}
(Twisted protocols of each side), L{rpcd.cluster} (balancing, retries,
discovery), L{rpcd.daemon} (config, twistd), L{rpcd.cli}.  L{rpcd.errors} is
shared by all of them.
"""

from __future__ import annotations

from typing import Any

from rpcd import _compat

_compat.install()

__all__ = ["serve", "service_for"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing rpcd (the plugin drop-ins do) stays cheap.
    if name in ("serve", "service_for"):
        from rpcd.daemon import embed
        return getattr(embed, name)
    raise AttributeError(f"module 'rpcd' has no attribute {name!r}")
