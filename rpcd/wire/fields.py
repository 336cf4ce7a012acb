"""
The rules for the fields of native-protocol frames, checked at the
boundary on both sides (see C{docs/protocol.md}, "Fields").

Each check takes a value read from the wire (or given by the caller of the
client library) and returns it in its checked form, or raises:

  - L{ProtocolError} when a frame's id cannot be read (the frame cannot be
    matched to a call, so the connection is closed with a GOAWAY);
  - C{TypeError} or C{ValueError} with a message naming the field
    (C{options.timeout must be ...}) for any other field: the server fails
    that call with INVALID_ARGUMENT, the client library raises it to the
    caller.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from rpcd.errors import ProtocolError
from rpcd.wire.flow import check_window
from rpcd.wire.frames import FrameType

MAX_ID = 2 ** 63 - 1
"""The largest call id."""

MAX_TIMEOUT = 7 * 24 * 3600
"""The longest timeout a call may carry, in seconds (7 days); a call that
needs longer sends none."""

MAX_METADATA_KEYS = 64
"""The most keys a call's metadata may have."""

MAX_METADATA_KEY = 256
"""The longest metadata key, in characters."""


def short(value: Any) -> str:
    """
    @return: C{repr(value)}, cut to 60 characters, for error messages.
    """
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def frame_name(kind: int) -> str:
    """
    @return: the name of a frame type (C{"CANCEL"}), or C{"frame type N"}.
    """
    try:
        return FrameType(kind).name
    except ValueError:
        return f"frame type {kind}"


def read_id(frame: list[Any]) -> int:
    """
    Read the call id of a frame that carries one.

    @param frame: the decoded frame, type first.
    @return: the id.
    @raise ProtocolError: no id, or not an integer from 0 to L{MAX_ID}.
    """
    if len(frame) < 2:
        raise ProtocolError(f"{frame_name(frame[0])} frame has no id")
    call_id = frame[1]
    if type(call_id) is not int or not 0 <= call_id <= MAX_ID:
        raise ProtocolError(f"{frame_name(frame[0])} id must be an integer from 0 to 2^63-1, "
                            f"got {short(call_id)}")
    return call_id


def check_fields(frame: list[Any], layout: str) -> None:
    """
    Check a frame has the fields its layout names (more are ignored).

    @param frame: the decoded frame.
    @param layout: how the docs write it, e.g. C{"[1, id, value]"}.
    @raise ValueError: too few fields.
    """
    needed = layout.count(",") + 1
    if len(frame) < needed:
        raise ValueError(f"needs {layout}, got {len(frame)} fields")


def check_timeout(value: Any, name: str = "timeout") -> float | None:
    """
    Check a timeout.

    @param value: seconds, or None for none.
    @param name: the field, for the message.
    @return: the timeout as a float, or None.
    @raise TypeError: not a number (a bool is not one).
    @raise ValueError: negative, not finite, or over L{MAX_TIMEOUT}.
    """
    if value is None:
        return None
    if type(value) not in (int, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)  # a subclass (numpy's floats, IntEnum): its value
        else:
            raise TypeError(f"{name} must be a non-negative number of seconds, got {short(value)}")
    if not value >= 0:  # NaN fails it too
        raise ValueError(f"{name} must be a non-negative number of seconds, got {short(value)}")
    if value > MAX_TIMEOUT:  # infinity too
        raise ValueError(f"{name} must be at most {MAX_TIMEOUT} seconds (7 days), "
                         f"got {short(value)}")
    return float(value)


def check_metadata(value: Any, name: str = "metadata") -> dict[str, Any] | None:
    """
    Check call metadata.

    @param value: a map of string keys to any values, or None.
    @param name: the field, for the message.
    @return: the metadata (None when empty or None).
    @raise TypeError: not a map, or a key that is not a string.
    @raise ValueError: too many keys, or a key too long.
    """
    if value is None:
        return None
    if type(value) is not dict:
        raise TypeError(f"{name} must be a map of string keys, got {short(value)}")
    if len(value) > MAX_METADATA_KEYS:
        raise ValueError(f"{name} has {len(value)} keys; at most {MAX_METADATA_KEYS} are allowed")
    for key in value:
        if type(key) is not str:
            raise TypeError(f"{name} keys must be strings, got {short(key)}")
        if len(key) > MAX_METADATA_KEY:
            raise ValueError(f"{name} key {short(key)} is longer than {MAX_METADATA_KEY} characters")
    return value or None


class CallOptions(NamedTuple):
    """The checked options of a CALL frame."""

    timeout: float | None
    metadata: dict[str, Any] | None
    stream: bool
    window: int | None


NO_OPTIONS = CallOptions(None, None, False, None)


def parse_options(options: Any) -> CallOptions:
    """
    Check a CALL frame's options map; keys it does not know are ignored.

    @param options: the fifth field of a CALL (None or absent for none).
    @return: the checked options.
    @raise TypeError: a field of the wrong type (the message names it).
    @raise ValueError: a field out of range (the message names it).
    """
    if options is None:
        return NO_OPTIONS
    if type(options) is not dict:
        raise TypeError(f"options must be a map, got {short(options)}")
    if not options:
        return NO_OPTIONS
    stream = options.get("stream")
    if stream is not None and type(stream) is not bool:
        raise TypeError(f"options.stream must be true or false, got {short(stream)}")
    window = options.get("window")
    if window is not None:
        try:
            window = check_window(window)
        except ValueError:
            raise ValueError(f"options.window must be an integer from 1 to 2^20, "
                             f"got {short(window)}") from None
    return CallOptions(check_timeout(options.get("timeout"), "options.timeout"),
                       check_metadata(options.get("metadata"), "options.metadata"),
                       bool(stream), window)


def check_method(method: Any, name: str = "method") -> str:
    """
    @param method: a C{"Service.Method"} name.
    @return: it.
    @raise TypeError: not a string.
    """
    if type(method) is not str:
        raise TypeError(f"{name} must be a string, got {short(method)}")
    return method


__all__ = ["MAX_ID", "MAX_TIMEOUT", "MAX_METADATA_KEYS", "MAX_METADATA_KEY", "CallOptions",
           "NO_OPTIONS", "check_fields", "check_metadata", "check_method", "check_timeout",
           "frame_name", "parse_options", "read_id", "short"]
