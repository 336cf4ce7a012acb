"""
The settings of the HTTP wire protocol (C{[http]} in the daemon's config,
parsed by L{rpcd.daemon.config}).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class HTTPConfig:
    """
    What the HTTP wire protocol accepts (L{rpcd.wire.httporigin}).

    @ivar allowed_hosts: C{Host} values served besides the loopback names
        and the address the connection reached: C{name} (any port),
        C{name:port}, C{.example.com} (any subdomain), or C{*} (any Host).
    @ivar allowed_origins: the browser origins (C{https://app.example})
        whose cross-origin requests are served, or C{*} for any; a request
        with another C{Origin} header is refused.
    @ivar debug_page: serve C{GET /debug/rpc}.
    @ivar max_pipelined: requests read from one connection whose responses
        are not yet written; later ones wait unread.
    @ivar metrics: keep per-call figures (L{rpcd.server.metrics}) and serve them
        at C{GET /metrics} in Prometheus' format.
    """

    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    debug_page: bool = True
    max_pipelined: int = 16
    metrics: bool = False
