"""
Errors that cross the wire.

Every error a caller can see has a stable numeric code and a message a person
can act on.  The codes are gRPC's status codes, so that people who know gRPC
know them already; L{Code} names them.
"""

from __future__ import annotations

import enum
from typing import Any


class Code(enum.IntEnum):
    """
    Stable error codes (the same numbers as gRPC status codes).
    """

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RPCError(Exception):
    """
    An error a remote call ended with.

    Services raise it (or a subclass) to fail a call with a chosen code; the
    client library raises it when the remote side reports an error.

    @ivar code: the L{Code} (an int on the wire).
    @ivar message: the text for people; for Go's net/rpc this is the whole
        error string the Go client sees.
    @ivar details: optional structured data (anything msgpack can carry).
    """

    code: int = Code.UNKNOWN

    def __init__(self, message: str, code: int | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={code_name(self.code)}, message={self.message!r})"

    def __str__(self) -> str:
        return self.message


def code_name(code: int) -> str:
    """
    @param code: a status code from the wire.
    @return: its name (C{"NOT_FOUND"}), or the number as text when unknown.
    """
    try:
        return Code(code).name
    except ValueError:
        return str(code)


class InvalidArgument(RPCError):
    """The arguments did not match what the method accepts."""

    code = Code.INVALID_ARGUMENT


class NotFound(RPCError):
    """The thing asked for does not exist."""

    code = Code.NOT_FOUND


class EncodeError(InvalidArgument):
    """
    The caller's own codec could not encode a call's argument: a local
    error, nothing was sent (e.g. gob cannot tell the Go type of C{[]}).
    """

    local = True


class Unimplemented(RPCError):
    """No such service or method."""

    code = Code.UNIMPLEMENTED


class DeadlineExceeded(RPCError):
    """The call's deadline passed before it finished."""

    code = Code.DEADLINE_EXCEEDED


class Cancelled(RPCError):
    """The call was cancelled by the caller."""

    code = Code.CANCELLED


class Unauthenticated(RPCError):
    """The call needs a login (or a certificate) that the connection lacks."""

    code = Code.UNAUTHENTICATED


class PermissionDenied(RPCError):
    """The caller is known but not allowed to do this."""

    code = Code.PERMISSION_DENIED


class ResourceExhausted(RPCError):
    """A limit was reached (calls in flight, rate, size)."""

    code = Code.RESOURCE_EXHAUSTED


class Unavailable(RPCError):
    """The connection is gone or not usable; the call may be retried."""

    code = Code.UNAVAILABLE


class Internal(RPCError):
    """Something broke inside rpcd itself."""

    code = Code.INTERNAL


class ConnectionLost(Unavailable):
    """The connection closed while the call was pending."""


class NotRun(Unavailable):
    """
    The server went away (a GOAWAY whose C{last_id} is below the call's id)
    without running the call: it is safe to send again, anywhere.  rpcd's
    clients retry it themselves; callers see it only when the retry, too,
    cannot be sent.
    """


class ProtocolError(Exception):
    """
    The peer sent bytes that break the wire protocol.

    The connection that received them is closed, with this message logged.
    """


_BY_CODE: dict[int, type[RPCError]] = {cls.code: cls for cls in (InvalidArgument, NotFound, Unimplemented,
                                      DeadlineExceeded, Cancelled, Unauthenticated,
                                      PermissionDenied, ResourceExhausted, Unavailable,
                                      Internal)}


#: Go's net/rpc error texts that mean UNIMPLEMENTED (no such service or
#: method, or a name that is not C{Service.Method}).
_GO_UNIMPLEMENTED = ("rpc: can't find ", "rpc: service/method request ill-formed")


def go_error(message: str) -> RPCError:
    """
    The error a caller gets for a Go net/rpc server's error text, the same
    over gob and jsonrpc: Go's texts for an unknown service or method are
    UNIMPLEMENTED, as rpcd's own code for them is; any other text is
    UNKNOWN (net/rpc has no codes).

    @param message: the server's error text.
    @return: the exception to fail the call with.
    """
    if message.startswith(_GO_UNIMPLEMENTED):
        return Unimplemented(message)
    return RPCError(message)


def error_from_wire(code: int, message: str, details: Any = None) -> RPCError:
    """
    Build the most specific L{RPCError} subclass for a code read from the wire.

    @param code: the numeric code.
    @param message: the message.
    @param details: the details, if any.
    @return: an exception to fail the call with.
    """
    cls = _BY_CODE.get(code, RPCError)
    if cls is RPCError:
        return RPCError(message, code=code, details=details)
    return cls(message, details=details)

code_name = code_name  # the old name, for code written before it was public
