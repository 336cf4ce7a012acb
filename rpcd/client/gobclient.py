"""
The client side of Go's C{net/rpc} gob protocol: rpcd's client library
calling a Go C{net/rpc} server (or rpcd itself) as C{rpc.Dial} does (codec
C{gob}) or as C{rpc.DialHTTP} does (codec C{gob-http}: C{CONNECT /_goRPC_}
first).

Go's server decodes each argument into its method's parameter type, and gob
matches structs by field name, so the Go type sent for a Python argument is
chosen as follows (L{arg_type}):

  - a C{dict} whose keys are all identifiers is a B{struct} with those
    fields, each key turned into an exported Go name the way rpcd names
    dataclass fields (C{a} -> C{A}, C{service_method} -> C{ServiceMethod});
    entries that are C{None} or empty containers are left out (Go sees their
    zero value), so C{{"A": 7, "B": 8}} reaches C{Multiply(args *Args, ...)}
    and C{{"x": 10, "y": 20}} reaches C{Add(args *Args{X, Y int}, ...)};
  - C{int} is Go C{int}, C{str} C{string}, C{float} C{float64}, C{bool},
    C{bytes} C{[]byte}, a list of values of one type a slice of it
    (C{[]T}), a tuple of them an array (C{[N]T}, e.g. C{("k", "v")} for
    C{[2]string}), any other C{dict} a map (see
    L{rpcd.wire.gob.guess_type});
  - a dataclass instance or a value decoded from gob (L{GoStruct}) keeps its
    own Go type;
  - C{None} is Go's empty C{struct{}};
  - anything else (a C{uint}, a map with identifier keys, an empty slice)
    needs its type spelled out: pass C{typed(value, gotype)}, e.g.
    C{typed({"x": 1}, Map(String, Int))} or C{typed(3, Uint)}.

Replies decode by their wire type: a struct comes back as a L{GoStruct} (a
C{dict} by Go field name), and Go's empty C{struct{}} as C{None}.  A Go error comes back as an L{RPCError} whose
message is Go's C{err.Error()} text (L{Unimplemented} for C{rpc: can't find
...}).  net/rpc has no cancel message: a timeout or a cancelled call only
stops waiting, and its late reply is skipped.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, NamedTuple

from twisted.logger import Logger

from rpcd import errors
from rpcd.errors import Unavailable
from rpcd.client.channel import ClientChannel
from rpcd.wire.gob import (
    GobError,
    GoStruct,
    GoType,
    OpaqueValue,
    Struct,
    guess_type,
)
from rpcd.wire.gob.hints import array_of, slice_of
from rpcd.wire.gobrpc import INVALID_REQUEST, GobClientCodec

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

log = Logger()

RPC_PATH = b"/_goRPC_"
"""Go's C{rpc.DefaultRPCPath}."""

CONNECTED = "200 Connected to Go RPC"
"""The status Go's C{rpc.DialHTTP} requires (C{rpc.connected})."""

_MAX_HEAD = 64 * 1024


class typed(NamedTuple):
    """
    An argument with its Go type spelled out, for values L{arg_type} would
    guess wrong: C{client.call("KV.Put", typed({"k": 1}, Map(String, Int)))}.
    """

    value: Any
    gotype: GoType


def go_field_name(key: str) -> str | None:
    """
    @param key: a dict key.
    @return: the exported Go field name it stands for (C{a} -> C{A},
        C{service_method} -> C{ServiceMethod}), or None when it has none.
    """
    name = "".join(p[:1].upper() + p[1:] for p in key.split("_") if p)
    if not name or not name.isidentifier() or not name[0].isupper():
        return None
    return name


# Struct types for dict shapes, so that the same shape is the same GoType and
# a connection's encoder defines it once.  Bounded: a client that sends ever
# new shapes keeps at most this many (an evicted shape is simply defined
# again on the wire).  Slices and arrays are interned on their element types.
_MAX_SHAPES = 1024
_STRUCTS: dict[tuple[tuple[str, GoType], ...], Struct] = {}


def _struct_of(fields: tuple[tuple[str, GoType], ...]) -> Struct:
    st = _STRUCTS.pop(fields, None)
    if st is None:
        st = Struct("", list(fields))
        if len(_STRUCTS) >= _MAX_SHAPES:
            del _STRUCTS[next(iter(_STRUCTS))]
    _STRUCTS[fields] = st  # most recently used last
    return st


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (list, tuple, dict)) and not value)


def _shape(value: Any) -> tuple[Any, GoType]:
    """
    @return: C{(value, gotype)}, where dicts that become structs are turned
        into tuples of their field values in Go order (the gob encoder reads
        a dict by Go field name, which the keys may not be).
    """
    kind = type(value)
    if kind is dict and value:
        names, values, types = [], [], []
        for key, item in value.items():
            name = go_field_name(key) if type(key) is str else None
            if name is None:
                return value, guess_type(value)  # not a struct: a map
            if not _empty(item):
                item, t = _shape(item)
                names.append(name)
                values.append(item)
                types.append(t)
        if len(set(names)) != len(names):
            return value, guess_type(value)
        return tuple(values), _struct_of(tuple(zip(names, types)))
    if (kind is list or kind is tuple) and value:
        shaped = [_shape(item) for item in value]
        first = shaped[0][1]
        if any(t is not first for _, t in shaped):
            raise GobError("gob: list elements of mixed types; pass typed(value, gotype)")
        elem = [v for v, _ in shaped]
        if kind is tuple:
            return elem, array_of(first, len(elem), as_tuple=False)
        return elem, slice_of(first)
    return value, guess_type(value)


def arg_type(value: Any) -> tuple[Any, GoType]:
    """
    The value and Go type to send for an argument (see the module docstring).

    @param value: the Python argument, or a L{typed} one.
    @return: C{(value, gotype)}: the value as the gob encoder takes it.
    @raise GobError: a value whose Go type cannot be guessed.
    """
    if type(value) is typed:
        return value.value, value.gotype
    if value is None:
        return None, INVALID_REQUEST
    if isinstance(value, (GoStruct, OpaqueValue)):
        return value, guess_type(value)
    return _shape(value)


go_error = errors.go_error


class GobClientChannel(ClientChannel):
    """
    Calls to a Go net/rpc server over gob (C{rpc.Dial}): many in flight on
    one connection, matched by sequence number.
    """

    codec_name = "gob"

    def __init__(self, clock: IReactorTime) -> None:
        """
        @param clock: for call deadlines.
        """
        super().__init__(clock)
        self.codec = GobClientCodec()

    def send_call(self, call_id: int, method: str, value: Any, timeout: float | None,
                  metadata: dict[str, Any] | None) -> None:
        value, gotype = arg_type(value)
        self.transport.write(self.codec.encode_request(call_id, method, value, gotype))

    def send_cancel(self, call_id: int) -> None:
        # net/rpc has no cancel: skip the reply if it comes.
        self.codec.forget(call_id)

    def dataReceived(self, data: bytes) -> None:
        if self.lost_reason is not None:
            return
        try:
            replies = self.codec.feed(data)
        except GobError as e:
            why = f"malformed gob stream from {self.peer_name}: {e}"
            log.error("{why}", why=why)
            self.fail_all(Unavailable(why))
            self.transport.loseConnection()
            return
        for seq, _, error, reply in replies:
            if error is None:
                if isinstance(reply, GoStruct) and not reply:
                    gotype = reply.gotype
                    if gotype is not None and not gotype.fields:
                        reply = None  # Go's struct{}: the method returns nothing
                self.resolve(seq, reply)
            else:
                self.reject(seq, go_error(error))


class GobHTTPClientChannel(GobClientChannel):
    """
    Calls to a Go net/rpc server over HTTP, as C{rpc.DialHTTP} makes them:
    C{CONNECT /_goRPC_ HTTP/1.0}, then gob once the server answers
    C{200 Connected to Go RPC}.
    """

    codec_name = "gob-http"

    def __init__(self, clock: IReactorTime, path: bytes = RPC_PATH) -> None:
        """
        @param clock: for call deadlines.
        @param path: the server's RPC path.
        """
        super().__init__(clock)
        self.path = path
        self._head: bytes | None = b""

    def connectionMade(self) -> None:
        self.transport.write(b"CONNECT " + self.path + b" HTTP/1.0\n\n")
        super().connectionMade()

    def ready(self) -> None:
        if self._head is None:
            super().ready()

    def dataReceived(self, data: bytes) -> None:
        if self._head is None:
            super().dataReceived(data)
            return
        head = self._head + data
        match = re.search(b"\r?\n\r?\n", head)
        if match is None:
            if len(head) > _MAX_HEAD:
                self._refused(f"no end of the HTTP response head within {_MAX_HEAD} bytes")
            else:
                self._head = head
            return
        status_line = head[:head.find(b"\n")].rstrip(b"\r").decode("latin-1")
        version, _, status = status_line.partition(" ")
        if not version.startswith("HTTP/") or status != CONNECTED:
            self._refused(f"unexpected HTTP response: {status or status_line}")
            return
        self._head = None
        self.ready()
        rest = head[match.end():]
        if rest:
            super().dataReceived(rest)

    def _refused(self, why: str) -> None:
        self._head = b""
        error = Unavailable(f"{self.peer_name}: {why}")
        if not self.connected_d.called:
            self.connected_d.errback(error)
        self.transport.loseConnection()


__all__ = ["GobClientChannel", "GobHTTPClientChannel", "arg_type", "go_error", "typed"]
