"""
The endpoint strings the blocking client dials itself (C{tcp:} and C{unix:},
parsed as Twisted parses them) and the plain sockets it opens for them, with
Twisted's endpoints' errors (L{rpcd.client.blocking} runs the protocol over
them).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import error as twisted_error

from rpcd.errors import Unavailable
from rpcd.wire.sockopts import (
    KEEPALIVE_IDLE,
    KEEPALIVE_PROBE_INTERVAL,
    KEEPALIVE_PROBES,
    set_keepalive_timing,
)


def split_endpoint(description: str) -> list[str]:
    """
    Split an endpoint string on its unescaped colons, as Twisted does.

    @param description: e.g. C{tcp:host=\\:\\:1:port=1234}.
    @return: its parts, unescaped.
    """
    parts, current, chars = [], [], iter(description)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, ""))
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


class Address:
    """
    Where a direct connection goes: a C{tcp:} or C{unix:} endpoint string
    this module can dial itself.

    @ivar family: C{AF_INET}, C{AF_INET6} or C{AF_UNIX}.
    @ivar host: the host (a name or an address) for TCP.
    @ivar port: the port for TCP.
    @ivar path: the socket's path for C{unix:}.
    @ivar timeout: the endpoint's own C{timeout=} for the TCP connect, or None.
    @ivar text: the endpoint string.
    """

    def __init__(self, text: str, family: int, host: str = "", port: int = 0, path: str = "",
                 timeout: float | None = None) -> None:
        self.text = text
        self.family = family
        self.host = host
        self.port = port
        self.path = path
        self.timeout = timeout


def direct_address(description: Any) -> Address | None:
    """
    Read an endpoint string this module can dial itself.

    @param description: an endpoint string (or object).
    @return: its L{Address}; None for anything else (another kind, an
        option this module does not know, a string Twisted's parser would
        refuse): the reactor's endpoints take those, and their errors.
    """
    if not isinstance(description, str):
        return None
    kind, *parts = split_endpoint(description)
    positional = [p for p in parts if "=" not in p]
    options: dict[str, str] = {}
    for part in parts:
        if "=" in part:
            key, value = part.split("=", 1)
            if key in options:
                return None
            options[key] = value
    timeout_text = options.pop("timeout", None)
    timeout = None
    if timeout_text is not None:
        if not timeout_text.isdigit() or int(timeout_text) <= 0:
            return None
        timeout = float(timeout_text)
    if kind == "tcp":
        if len(positional) > 2:
            return None
        for name, value in zip(("host", "port"), positional):
            if name in options:
                return None
            options[name] = value
        host = options.pop("host", "")
        port = options.pop("port", "")
        if options or not host or not port.isdigit() or not 0 < int(port) < 65536:
            return None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return Address(description, family, host=host, port=int(port), timeout=timeout)
    if kind == "unix":
        if len(positional) > 1 or (positional and "path" in options):
            return None
        path = options.pop("path", positional[0] if positional else "")
        if options or not path:
            return None
        return Address(description, socket.AF_UNIX, path=path, timeout=timeout)
    return None


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return host.count(".") == 3


def open_socket(address: Address, connect_timeout: float | None) -> socket.socket:
    """
    Connect a socket to C{address}, blocking.

    @param connect_timeout: seconds for the whole connect, or None.
    @return: the connected socket, in blocking mode.
    @raise twisted.internet.error.ConnectError: as Twisted's endpoints
        raise it (refused, no such file, a name that does not resolve, the
        endpoint's own C{timeout=} passed).
    @raise Unavailable: C{connect_timeout} passed.
    """
    if address.family == socket.AF_UNIX:
        target: Any = address.path
    else:
        host = address.host
        if address.family == socket.AF_INET and not _is_ipv4(host):
            try:
                host = socket.gethostbyname(host)
            except OSError:
                raise twisted_error.DNSLookupError(address.host) from None
        target = (host, address.port)
    timeout = connect_timeout
    own = address.timeout is not None and (timeout is None or address.timeout < timeout)
    if own:
        timeout = address.timeout
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(target)
    except socket.timeout:
        sock.close()
        if own:
            raise twisted_error.TimeoutError() from None
        raise _connect_timed_out(address, connect_timeout) from None
    except OSError as e:
        sock.close()
        if e.errno is None:
            raise twisted_error.ConnectError(string=str(e)) from None
        raise twisted_error.getConnectError((e.errno, e.strerror)) from None
    sock.settimeout(None)
    if address.family != socket.AF_UNIX:
        _tcp_options(sock)
    return sock


def _connect_timed_out(address: Address, seconds: float | None) -> Unavailable:
    return Unavailable(f"no native connection to {address.text} within {seconds:g} s "
                       "(is the server up, and does it speak this protocol?)")


def _tcp_options(sock: socket.socket) -> None:
    """
    No Nagle, and TCP keepalive as L{rpcd.wire.sockopts} sets it on the
    Twisted client's connections.
    """
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        return
    set_keepalive_timing(sock, KEEPALIVE_IDLE, KEEPALIVE_PROBE_INTERVAL, KEEPALIVE_PROBES)


def peer_name(sock: socket.socket) -> str:
    """
    @return: how errors name the server, as the Twisted client does:
        C{HOST:PORT} for TCP, C{the server} for a Unix socket.
    """
    if sock.family == socket.AF_UNIX:
        return "the server"
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "the server"
    return f"{host}:{port}"
