"""
The client library: L{connect} to a server by endpoint string, call methods,
open streams (L{rpcd.client.client}); a channel per codec (native, gob,
JSON, gRPC); L{BlockingClient} for scripts.

The names of the old module C{rpcd.client} are re-exported here.
"""

from __future__ import annotations

from rpcd._compat import forward
from rpcd.client.client import (
    CLIENT_CODECS,
    BlockingClient,
    Client,
    client_from_string,
    connect,
    parse_endpoint,
)

__all__ = ["BlockingClient", "CLIENT_CODECS", "Client", "client_from_string", "connect", "parse_endpoint"]

__getattr__ = forward(__name__)
