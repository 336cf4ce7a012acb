"""
The server side: the factory that gives each accepted connection its wire
protocol (L{rpcd.server.factory}), the sniffer, a Twisted protocol per wire,
and the per-connection limits, budgets and backpressure.

The names of the old module C{rpcd.server} are re-exported here.
"""

from __future__ import annotations

from rpcd._compat import forward
from rpcd.server.factory import SERVER_PROTOCOLS, Limits, RPCServer, RPCServerFactory, SniffingProtocol

__all__ = ["Limits", "RPCServer", "RPCServerFactory", "SERVER_PROTOCOLS", "SniffingProtocol"]

__getattr__ = forward(__name__)
