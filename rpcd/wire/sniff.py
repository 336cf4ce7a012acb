"""
Telling wire protocols apart by a connection's first bytes.

    00 'R' 'P' 'C' 'D'          native (rpcd's own preface)
    'PRI * HTTP/2.0' ...        grpc (the HTTP/2 client preface)
    an HTTP method and a space  http (CONNECT /_goRPC_, POST /rpc, GET /debug/rpc)
    '{' or '[' (after spaces)   json (Go's net/rpc/jsonrpc, or JSON-RPC 2.0)
    anything else               gob (Go's net/rpc: a gob message length first)

A gob stream can never start with a zero byte (its first message has a
non-zero length), so the native preface is unambiguous.
"""

from __future__ import annotations

from rpcd.wire.frames import MAGIC

NATIVE = "native"
HTTP = "http"
JSON = "json"
GOB = "gob"
GRPC = "grpc"

ALL = frozenset({NATIVE, HTTP, JSON, GOB, GRPC})

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_HTTP_METHODS = (b"GET ", b"POST ", b"CONNECT ", b"PUT ", b"HEAD ", b"OPTIONS ",
                 b"DELETE ", b"PATCH ", b"TRACE ")
_JSON_SPACE = b" \t\r\n"


def sniff(data: bytes) -> str | None:
    """
    Name the protocol a connection speaks from its first bytes.

    @param data: every byte received so far.
    @return: L{NATIVE}, L{HTTP}, L{JSON}, L{GOB} or L{GRPC}, or None when more bytes
        are needed to tell.
    """
    if not data:
        return None
    first = data[0]
    if first == 0:
        if len(data) < len(MAGIC):
            return None if MAGIC.startswith(data) else GOB
        return NATIVE if data.startswith(MAGIC) else GOB
    stripped = data.lstrip(_JSON_SPACE)
    if not stripped:
        return None
    if stripped[:1] in (b"{", b"["):
        return JSON
    if 0x41 <= first <= 0x5A:  # an upper-case letter: maybe an HTTP method
        if data.startswith(H2_PREFACE):
            return GRPC
        if H2_PREFACE.startswith(data):
            return None
        for method in _HTTP_METHODS:
            if data.startswith(method):
                return HTTP
            if method.startswith(data):
                return None
    return GOB
