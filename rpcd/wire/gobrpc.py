"""
Go's C{net/rpc} message framing over gob, sans-io, for both ends.

A request is a gob C{Request{ServiceMethod string; Seq uint64}} followed by
the argument value; a response is C{Response{ServiceMethod string; Seq
uint64; Error string}} followed by the reply value, or, when C{Error} is
set, by an empty C{struct{}} that nobody reads.  Responses may be sent in
any order; the client matches them by C{Seq}.

Each codec owns one gob L{Decoder} and one L{Encoder}, so use one codec per
connection.  A malformed stream raises L{GobError}: gob streams cannot
resynchronise, so the caller must then close the connection.
"""

from __future__ import annotations

from typing import Any, Callable

from rpcd.wire.gob import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_TYPE_BYTES,
    DEFAULT_MAX_TYPES,
    DISCARD,
    NEED_MORE,
    Decoder,
    Encoder,
    Field,
    GobError,
    GobTypeMismatch,
    GoType,
    String,
    Struct,
    Uint,
)

__all__ = [
    "GobClientCodec",
    "GobServerCodec",
    "INVALID_REQUEST",
    "REQUEST",
    "RESPONSE",
    "cant_find_method",
    "cant_find_service",
    "cannot_decode_request",
    "ill_formed",
    "reading_body",
    "split_service_method",
]

REQUEST = Struct(
    "Request", [Field("ServiceMethod", String), Field("Seq", Uint)], py_class=tuple
)
"""net/rpc's request header; decodes to C{(service_method, seq)}."""

RESPONSE = Struct(
    "Response",
    [Field("ServiceMethod", String), Field("Seq", Uint), Field("Error", String)],
    py_class=tuple,
)
"""net/rpc's response header; decodes to C{(service_method, seq, error)}."""

INVALID_REQUEST = Struct("", [])
"""The anonymous C{struct{}} Go's server sends as the body of an error."""

_EMPTY: dict[str, Any] = {}


def split_service_method(service_method: str) -> tuple[str, str] | None:
    """
    Split C{"Service.Method"} at its last dot, as Go's server does.

    @return: C{(service, method)}, or C{None} when there is no dot (reply
        with L{ill_formed}).
    """
    dot = service_method.rfind(".")
    if dot < 0:
        return None
    return service_method[:dot], service_method[dot + 1 :]


def ill_formed(service_method: str) -> str:
    """Go's error for a name without a dot."""
    return "rpc: service/method request ill-formed: " + service_method


def cant_find_service(service_method: str) -> str:
    """Go's error for an unknown service (the whole name is quoted)."""
    return "rpc: can't find service " + service_method


def cant_find_method(service_method: str) -> str:
    """Go's error for an unknown method of a known service."""
    return "rpc: can't find method " + service_method


def cannot_decode_request(error: Exception | str) -> str:
    """
    Go's server error (logged, never sent: Go then hangs up) for a request
    header that does not decode.
    """
    return "rpc: server cannot decode request: " + str(error)


def reading_body(error: Exception | str) -> str:
    """Go's client error for a reply body that does not decode."""
    return "reading body " + str(error)


class GobServerCodec:
    """
    The server end of a net/rpc gob connection.

    Feed it received bytes; it returns the complete requests.  Encode each
    reply with L{encode_response} and write the bytes in the order the calls
    return.
    """

    def __init__(
        self,
        arg_type_for: Callable[[str], Any] | None = None,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_types: int = DEFAULT_MAX_TYPES,
        max_type_bytes: int = DEFAULT_MAX_TYPE_BYTES,
    ) -> None:
        """
        @param arg_type_for: called with each request's C{"Service.Method"}
            once its header arrives; returns the L{GoType} (or a type hint)
            to decode the argument into, C{None} to decode by the wire type,
            or L{DISCARD} to skip the argument (e.g. an unknown method; the
            request then comes with C{None} as argument).  Without it,
            arguments are decoded by the wire type.
        @param max_message_size: see L{Decoder}; so are the other limits.
        """
        self._arg_type_for = arg_type_for
        self._decoder = Decoder(
            max_message_size=max_message_size,
            max_depth=max_depth,
            max_types=max_types,
            max_type_bytes=max_type_bytes,
        )
        self._encoder = Encoder()
        self._pending: tuple[int, str, Any] | None = None

    def close(self) -> None:
        """
        Drop the bytes held for an unfinished request (the connection is
        gone: free them now, not when its objects are collected).  The codec
        decodes nothing more.
        """
        self._decoder = Decoder(max_message_size=self._decoder.max_message_size)
        self._pending = None

    @property
    def buffered(self) -> int:
        """
        Bytes held for a request not yet complete: 1 for a request whose
        header has arrived but none of its argument, 0 for none.
        """
        held = self._decoder.buffered
        if not held and self._pending is not None:
            return 1
        return held

    def feed(self, data: bytes) -> list[tuple[int, str, Any]]:
        """
        Take received bytes.

        @return: the requests completed by C{data}, in order, as C{(seq,
            service_method, argument)}.  When the argument did not fit the
            type from C{arg_type_for}, the argument is the
            L{GobTypeMismatch} itself: reply with C{error=str(argument)},
            as Go does, and carry on.
        @raise GobError: a malformed stream; close the connection.
        """
        decoder = self._decoder
        decoder.feed(data)
        out: list[tuple[int, str, Any]] = []
        while True:
            pending = self._pending
            if pending is None:
                try:
                    header = decoder.next_value(REQUEST)
                except GobTypeMismatch as e:
                    raise GobError(cannot_decode_request(e)) from None
                if header is NEED_MORE:
                    return out
                method, seq = header
                into = self._arg_type_for(method) if self._arg_type_for else None
                pending = self._pending = (seq, method, into)
            try:
                arg = decoder.next_value(pending[2])
            except GobTypeMismatch as e:
                arg = e
            if arg is NEED_MORE:
                return out
            self._pending = None
            out.append((pending[0], pending[1], arg))

    def encode_response(
        self,
        seq: int,
        service_method: str,
        error: str | None,
        result: Any = None,
        result_type: GoType | None = None,
    ) -> bytes:
        """
        Encode one response.

        @param seq: the request's sequence number.
        @param service_method: the request's C{"Service.Method"}, echoed.
        @param error: an error message (then C{result} is ignored and the
            body is Go's empty C{struct{}}), or C{None} / C{""} for success.
        @param result: the reply value.
        @param result_type: its L{GoType}; guessed from C{result} if C{None}.
        @return: the bytes to write (header and body, with any new type
            definitions).
        @raise GobEncodeError: C{result} does not fit C{result_type}; nothing
            was encoded, so send an error response instead.
        """
        if error:
            return self._encoder.encode_all(
                (((service_method, seq, error), RESPONSE), (_EMPTY, INVALID_REQUEST))
            )
        return self._encoder.encode_all(
            (((service_method, seq, ""), RESPONSE), (result, result_type))
        )


class GobClientCodec:
    """
    The client end of a net/rpc gob connection.

    Encode each call with L{encode_request}; feed received bytes to L{feed},
    which returns the completed responses in arrival order.
    """

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_types: int = DEFAULT_MAX_TYPES,
        max_type_bytes: int = DEFAULT_MAX_TYPE_BYTES,
    ) -> None:
        """
        @param max_message_size: see L{Decoder}; so are the other limits.
        """
        self._decoder = Decoder(
            max_message_size=max_message_size,
            max_depth=max_depth,
            max_types=max_types,
            max_type_bytes=max_type_bytes,
        )
        self._encoder = Encoder()
        self._reply_types: dict[int, Any] = {}
        self._pending: tuple[int, str, str | None, Any] | None = None

    def encode_request(
        self,
        seq: int,
        service_method: str,
        args: Any,
        args_type: GoType | None = None,
        reply_type: Any = None,
    ) -> bytes:
        """
        Encode one call.

        @param seq: a sequence number not in use on this connection.
        @param service_method: C{"Service.Method"}.
        @param args: the argument value.
        @param args_type: its L{GoType}; guessed from C{args} if C{None}.
        @param reply_type: the L{GoType} (or type hint) to decode the reply
            into, or C{None} to decode it by its wire type.
        @return: the bytes to write.
        @raise GobEncodeError: C{args} does not fit C{args_type}; nothing
            was encoded.
        """
        data = self._encoder.encode_all(
            (
                ((service_method, seq), REQUEST),
                (args, args_type),
            )
        )
        self._reply_types[seq] = reply_type
        return data

    def forget(self, seq: int) -> None:
        """
        Stop expecting a reply for C{seq} (e.g. the call was abandoned); its
        reply, if it comes, is skipped and returned with a C{None} value.
        """
        self._reply_types.pop(seq, None)

    def feed(self, data: bytes) -> list[tuple[int, str, str | None, Any]]:
        """
        Take received bytes.

        @return: the responses completed by C{data}, in order, as C{(seq,
            service_method, error, reply)}: C{error} is the server's error
            message (then C{reply} is C{None}) or C{None}.  A reply that does
            not fit its C{reply_type} comes back as error
            C{"reading body gob: ..."}, as Go's client reports it.  Replies to
            unknown sequence numbers are skipped (reply C{None}).
        @raise GobError: a malformed stream; close the connection.
        """
        decoder = self._decoder
        decoder.feed(data)
        out: list[tuple[int, str, str | None, Any]] = []
        while True:
            pending = self._pending
            if pending is None:
                try:
                    header = decoder.next_value(RESPONSE)
                except GobTypeMismatch as e:
                    raise GobError(f"gob: bad response header: {e}") from None
                if header is NEED_MORE:
                    return out
                method, seq, error = header
                error = error or None
                if seq in self._reply_types:
                    into = self._reply_types.pop(seq)
                else:
                    into = DISCARD
                if error is not None:
                    into = DISCARD
                pending = self._pending = (seq, method, error, into)
            error = pending[2]
            try:
                reply = decoder.next_value(pending[3])
            except GobTypeMismatch as e:
                reply = None
                error = reading_body(e)
            if reply is NEED_MORE:
                return out
            self._pending = None
            out.append((pending[0], pending[1], error, reply))
