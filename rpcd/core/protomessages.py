"""
Protobuf messages as rpcd's values: the argument converter of a
message-typed hint and a message as plain data in protobuf's JSON mapping.
L{rpcd.core.convert} uses them for message-typed hints; they import
nothing of rpcd's services, so that conversion and L{rpcd.core.protos}
(which reads services) do not import each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from rpcd.errors import InvalidArgument


def message_converter(cls: type[Message]) -> Callable[[Any], Any]:
    """
    The argument converter of a message-typed hint: a message of that class
    passes unchanged, a mapping is read with protobuf's JSON mapping, bytes
    are parsed as the binary form.

    @param cls: the message class.
    @return: the converter; a value that does not fit raises
        L{InvalidArgument} naming the message type and what was wrong.
    """
    full_name = cls.DESCRIPTOR.full_name

    def convert(value: Any) -> Any:
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            try:
                return json_format.ParseDict(value, cls())
            except json_format.ParseError as e:
                raise InvalidArgument(f"not a {full_name}: {e}") from None
        if isinstance(value, (bytes, bytearray)):
            try:
                return cls.FromString(bytes(value))
            except DecodeError as e:
                raise InvalidArgument(f"not a serialized {full_name}: {e}") from None
        raise InvalidArgument(f"expected a {full_name} (a JSON object), got {type(value).__name__}")
    return convert


def message_to_dict(message: Message) -> dict[str, Any]:
    """
    A message as plain data, in protobuf's JSON mapping (field names in
    lowerCamelCase, 64-bit integers as strings, bytes as base64), for rpcd's
    native protocol and JSON.
    """
    return json_format.MessageToDict(message)


__all__ = ["message_converter", "message_to_dict"]
