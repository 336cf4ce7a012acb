"""
What the typed client modules that C{rpcd stubs} writes (L{rpcd.cli.stubs})
import at run time: the interfaces of the clients they wrap, and the
conversion of their arguments to wire values and of wire values to their
dataclasses.

A stub's methods turn their arguments into plain data with L{encode} and
the answer into the declared type with L{decode}, which applies rpcd's own
argument conversion (L{rpcd.core.convert}): struct fields match
case-insensitively, missing ones take their zero value, bytes may come as
base64 text.
"""

from __future__ import annotations

import dataclasses
from typing import Any, AsyncIterator, Generic, Protocol, TypeVar

from rpcd.errors import InvalidArgument

SendT = TypeVar("SendT")
ReceiveT = TypeVar("ReceiveT")


class AsyncCaller(Protocol):
    """
    A client whose calls are awaited: L{rpcd.client.Client} (in a coroutine
    run by Twisted, e.g. C{Deferred.fromCoroutine} or C{react}), the
    balancer of L{rpcd.cluster.balancer}, or any object with the same C{call} and
    C{stream}.
    """

    def call(self, method: str, args: Any = None, *, timeout: float | None = None) -> Any:
        """@return: an awaitable firing with the result."""

    def stream(self, method: str, args: Any = None, *, timeout: float | None = None) -> Any:
        """@return: the stream (see L{rpcd.client.Client.stream})."""


class BlockingCaller(Protocol):
    """A client whose calls block: L{rpcd.client.BlockingClient}."""

    def call(self, method: str, args: Any = None, *, timeout: float | None = None) -> Any:
        """@return: the result."""


def encode(value: Any) -> Any:
    """
    An argument as plain data: a dataclass becomes a dict of its fields,
    leaving out those that are None (the server gives them their zero value,
    as Go leaves zero fields out); lists, tuples and dicts are encoded item by
    item.

    @param value: a stub's argument.
    @return: plain data for any codec.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(v) for f in dataclasses.fields(value)
                if (v := getattr(value, f.name)) is not None}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    return value


def decode(hint: Any, value: Any) -> Any:
    """
    A result as the type a stub declares.

    @param hint: the declared type (e.g. C{list[Args]}, C{Result | None}).
    @param value: the decoded wire value.
    @return: the value converted (dataclasses built from dicts).
    @raise rpcd.errors.InvalidArgument: the value does not fit the type
        (the server's schema changed since the stub was written); the
        message names the field.
    """
    from rpcd.core.convert import argument_converter, convert_argument
    try:
        convert = argument_converter(hint)
    except TypeError as e:
        raise InvalidArgument(f"the stub's type {hint!r} cannot be checked: {e}") from None
    return convert_argument(convert, value, "result")


class TypedStream(Generic[SendT, ReceiveT]):
    """
    A client- or bidirectional-streaming call, typed: what C{send} takes and
    what C{async for} (or C{result()}) gives.  Wraps the stream of
    L{rpcd.client.Client.stream}.
    """

    def __init__(self, stream: Any, receive: Any) -> None:
        """
        @param stream: the client library's stream.
        @param receive: the type of each message received (or of a client
            stream's one result).
        """
        self.stream = stream
        self._receive = receive

    def send(self, message: SendT) -> Any:
        """
        Send one message.

        @return: a Deferred that fires when the message may be followed by
            another (flow control).
        """
        return self.stream.send(encode(message))

    def close_send(self) -> None:
        """Say that no more messages follow (half-close)."""
        self.stream.close_send()

    def cancel(self) -> None:
        """Cancel the call."""
        self.stream.cancel()

    async def result(self) -> ReceiveT:
        """
        @return: the call's result: a client stream's one answer.
        @raise rpcd.errors.RPCError: the call failed.
        """
        value: ReceiveT = decode(self._receive, await self.stream.result())
        return value

    async def __aiter__(self) -> AsyncIterator[ReceiveT]:
        """Each message the server sends, typed."""
        async for message in self.stream:
            item: ReceiveT = decode(self._receive, message)
            yield item
