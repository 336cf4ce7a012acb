"""
Go's C{encoding/gob} wire format, sans-io: bytes in, values out; values in,
bytes out.  No sockets and no reactor here; L{rpcd.wire.gobrpc} builds the
C{net/rpc} message codecs on top.

Go types are described by L{GoType} objects: the basic singletons L{Bool},
L{Int}, L{Uint}, L{Float}, L{Complex}, L{String}, L{Bytes}, and the composite
L{Slice}, L{Array}, L{Map}, L{Struct} (plus L{Opaque} for values that Go sends
through C{GobEncoder}/C{BinaryMarshaler}/C{TextMarshaler}, e.g. C{time.Time}).
Pointers are flattened as gob flattens them.  Interface values are not
supported.

Python values:
  - C{bool}, C{int} (for both Go int and uint kinds), C{float}, C{complex},
    C{str} (invalid UTF-8 survives a round trip via C{surrogateescape}),
    C{bytes} for C{[]byte}, C{list} for slices and arrays, C{dict} for maps.
  - A struct decodes to a L{GoStruct}: a C{dict} from Go field name to value
    whose class remembers the L{Struct} (C{value.gotype}), so re-encoding it
    sends the same Go type.  Fields missing on the wire come back as their Go
    zero value: C{0}, C{""}, C{b""}, C{[]} for a slice, and C{None} for a nil
    map, a nil (pointer to) struct or array, since Go always sends non-pointer
    struct and array fields and non-nil maps.
  - When encoding a struct field, C{None} and (for basic types, strings,
    bytes and slices) any zero value is omitted, as Go omits it; an empty
    C{dict} is sent (Go's empty, non-nil map).  A top-level C{None} encodes
    the zero value of its type.
  - A C{dataclass} maps to a struct through L{type_from_hint}; decoding into
    that L{Struct} returns an instance of the dataclass.  Fields missing on the
    wire take the dataclass default if there is one, else the zero value as
    above, except that a nil map is C{{}} unless the hint is C{Optional}.

Every malformed input raises L{GobError}.  After a L{GobError} other than
L{GobTypeMismatch} the stream cannot be resynchronised: close the connection.

The package, one job per module (each imports only those listed above it):
  - L{errors}: L{GobError} and its subclasses.
  - L{sentinels}: L{NEED_MORE}, L{DISCARD} and the decoders' placeholders.
  - L{gotypes}: the L{GoType} model and L{GoStruct}/L{OpaqueValue}.
  - L{hints}: L{type_from_hint} and L{guess_type}.
  - L{varint}: gob's unsigned and signed integers.
  - L{primitives}: encode/decode/skip operations of the basic types.
  - L{wiretypes}: type definition messages, built and parsed; type ids.
  - L{codegen}: generated (C{exec}) struct encoders and decoders.
  - L{encops}: compiling a L{GoType} into its cached encode operation.
  - L{decops}: loop-based decode and skip operations.
  - L{encoder}: L{Encoder}, values to a stream.
  - L{decoder}: L{Decoder}, a stream to values, and its limits.
"""

from __future__ import annotations

from rpcd.wire.gob.decoder import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_TYPE_BYTES,
    DEFAULT_MAX_TYPES,
    Decoder,
)
from rpcd.wire.gob.encoder import Encoder
from rpcd.wire.gob.errors import GobEncodeError, GobError, GobTypeMismatch
from rpcd.wire.gob.gotypes import (
    Array,
    Bool,
    Bytes,
    Complex,
    Field,
    Float,
    GoStruct,
    GoType,
    Int,
    Map,
    Opaque,
    OpaqueValue,
    Slice,
    String,
    Struct,
    Uint,
    uint,
)
from rpcd.wire.gob.hints import guess_type, type_from_hint
from rpcd.wire.gob.sentinels import DISCARD, NEED_MORE

__all__ = [
    "Array",
    "Bool",
    "Bytes",
    "Complex",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_TYPE_BYTES",
    "DEFAULT_MAX_TYPES",
    "DISCARD",
    "Decoder",
    "Encoder",
    "Field",
    "Float",
    "GoStruct",
    "GoType",
    "GobEncodeError",
    "GobError",
    "GobTypeMismatch",
    "Int",
    "Map",
    "NEED_MORE",
    "Opaque",
    "OpaqueValue",
    "Slice",
    "String",
    "Struct",
    "Uint",
    "guess_type",
    "type_from_hint",
    "uint",
]
