"""
Which C{Host} and C{Origin} an HTTP request may carry (C{[http]
allowed_hosts} and C{allowed_origins}).

A web page cannot set C{Content-Type: application/json} on a cross-site
form post, but with DNS rebinding a page at C{http://evil.example:1234}
makes the browser send its requests to the daemon on 127.0.0.1 as
I{same-origin} requests, with C{Host: evil.example:1234}.  So the C{Host} of
each request must be a name of this daemon:

  - the loopback names C{localhost}, C{127.0.0.1} and C{[::1]}, with any
    port (a page cannot rebind those names);
  - the address the connection reached (C{transport.getHost()}), as a
    client that dials an IP address sends it;
  - the configured names: C{name} (any port), C{name:port}, C{.example.com}
    (that name and any subdomain), or C{*} (any C{Host}: for a daemon
    behind a proxy that checks it).

A request without C{Host} (HTTP/1.0, as Go's C{rpc.DialHTTP} sends) passes:
every browser sends one.

A request that changes something (any method but GET and HEAD) with an
C{Origin} header passes only if that origin is the request's own
(C{scheme://} followed by its C{Host}) or a configured one (exactly as the
browser sends it, e.g. C{https://app.example:8443}), or C{*} is configured.
C{Origin: null} (sandboxed frames, files) passes only with C{*} or an
explicit C{null}.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["LOOPBACK_NAMES", "OriginPolicy", "check_host_pattern", "check_origin_pattern",
           "split_host"]

#: Host names always served: loopback cannot be rebound by a web page.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

_HOST = re.compile(r"(?:\[([0-9a-f:.]+)\]|([a-z0-9._~!$&'()*+,;=%-]*))(?::([0-9]{1,5}))?")
_ORIGIN = re.compile(r"([a-z][a-z0-9+.-]*)://([^/?#@\s]+)")


def split_host(value: str) -> tuple[str, int | None] | None:
    """
    Split a C{Host} header value (or an origin's host part).

    @param value: e.g. C{"localhost:1234"}, C{"[::1]:80"}, C{"Example.COM."}.
    @return: C{(name, port)}: the name lower-cased, without brackets or a
        trailing dot; the port or None; or None for a malformed value.
    """
    match = _HOST.fullmatch(value.strip().lower())
    if match is None:
        return None
    v6, name, port = match.groups()
    if v6 is not None:
        try:
            name = str(ipaddress.IPv6Address(v6))
        except ValueError:
            return None
    name = name.rstrip(".")
    if not name:
        return None
    return name, int(port) if port else None


def check_host_pattern(pattern: str) -> None:
    """
    Check an C{allowed_hosts} entry.

    @raise ValueError: it is not C{*}, C{name}, C{name:port}, C{[v6]},
        C{[v6]:port} or C{.domain}.
    """
    if pattern == "*":
        return
    body = pattern[1:] if pattern.startswith(".") else pattern
    if split_host(body) is None:
        raise ValueError(f"must be a host name like 'rpc.example.com', 'rpc.example.com:8080', "
                         f"'.example.com' (any subdomain) or '*', got {pattern!r}")


def check_origin_pattern(pattern: str) -> None:
    """
    Check an C{allowed_origins} entry.

    @raise ValueError: it is not C{*}, C{null} or C{scheme://host[:port]}.
    """
    if pattern in ("*", "null"):
        return
    match = _ORIGIN.fullmatch(pattern.lower())
    if match is None or split_host(match.group(2)) is None:
        raise ValueError(f"must be an origin as browsers send it, like 'https://app.example' or "
                         f"'http://localhost:8080' (no path, no trailing slash), or '*', "
                         f"got {pattern!r}")


class OriginPolicy:
    """
    The C{Host} and C{Origin} checks of one daemon.
    """

    def __init__(self, allowed_hosts: tuple[str, ...] = (),
                 allowed_origins: tuple[str, ...] = ()) -> None:
        """
        @param allowed_hosts: checked entries (L{check_host_pattern}).
        @param allowed_origins: checked entries (L{check_origin_pattern}).
        """
        self.any_host = "*" in allowed_hosts
        self.any_origin = "*" in allowed_origins
        self.origins = frozenset(o.lower() for o in allowed_origins)
        self.names: set[str] = set()
        self.suffixes: list[str] = []
        self.names_with_port: set[tuple[str, int]] = set()
        for pattern in allowed_hosts:
            pattern = pattern.lower()
            if pattern == "*":
                continue
            if pattern.startswith("."):
                self.suffixes.append(pattern.rstrip("."))
                continue
            parsed = split_host(pattern)
            assert parsed is not None, pattern  # checked by the config
            name, port = parsed
            if port is None:
                self.names.add(name)
            else:
                self.names_with_port.add((name, port))

    def host_allowed(self, host: str, local_host: str | None) -> bool:
        """
        @param host: the request's C{Host} value.
        @param local_host: the address the connection reached (its
            C{getHost().host}), or None.
        @return: whether the request may be served.
        """
        if self.any_host:
            return True
        parsed = split_host(host)
        if parsed is None:
            return False
        name, port = parsed
        if name in LOOPBACK_NAMES or name in self.names:
            return True
        if local_host is not None and name == local_host.lower():
            return True
        if port is not None and (name, port) in self.names_with_port:
            return True
        return any(name == suffix[1:] or name.endswith(suffix) for suffix in self.suffixes)

    def origin_allowed(self, origin: str, host: str | None) -> tuple[bool, bool]:
        """
        @param origin: the request's C{Origin} value.
        @param host: its C{Host} value, or None.
        @return: C{(allowed, cross_origin)}: whether the request may be
            served, and whether it comes from another origin (which then
            needs CORS headers in the answer).
        """
        origin = origin.strip().lower()
        match = _ORIGIN.fullmatch(origin)
        if match is not None and host is not None:
            own = split_host(host)
            if own is not None and split_host(match.group(2)) == own:
                return True, False
        return self.any_origin or origin in self.origins, True
