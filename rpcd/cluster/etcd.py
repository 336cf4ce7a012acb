"""
A small client for etcd v3's HTTP JSON gateway: the leases and keys that
service discovery (L{rpcd.cluster.discovery}) needs, over Twisted's L{Agent}.

The gateway (grpc-gateway, at C{/v3/} since etcd 3.4) takes a JSON body by
POST and answers JSON; keys and values are base64, 64-bit numbers (lease
ids, TTLs, revisions) are decimal strings::

    POST /v3/lease/grant      {"TTL": 10}                    -> {"ID": "7587...", "TTL": "10"}
    POST /v3/kv/put           {"key": b64, "value": b64, "lease": "7587..."}
    POST /v3/kv/range         {"key": b64, "range_end": b64} -> {"kvs": [{"key", "value", ...}]}
    POST /v3/lease/keepalive  {"ID": "7587..."}              -> {"result": {"ID", "TTL"}}  (no TTL: gone)
    POST /v3/lease/revoke     {"ID": "7587..."}
    POST /v3/watch            {"create_request": {"key", "range_end", "start_revision"}}
                              -> one JSON object a line, as long as the watch runs:
                                 {"result": {"created": true}}, then
                                 {"result": {"events": [{"type": "DELETE"?, "kv": {...}}]}}
                                 ({"result": {"canceled": true, "compact_revision": N}}
                                 when start_revision was compacted away)

Errors come back as a non-200 status with C{{"error", "message", "code"}}
(C{code} is the gRPC status code).
"""

from __future__ import annotations

import base64
import json
from typing import Any, Callable, cast

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (Agent, RequestTransmissionFailed,
                                ResponseDone, ResponseFailed, ResponseNeverReceived, readBody)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import implementer

from rpcd.core.twistedcompat import QuietHTTPConnectionPool

_NOT_FOUND = 5     # gRPC NOT_FOUND: etcd's "requested lease not found"
MAX_WATCH_LINE = 4 * 1024 * 1024  # the longest watch message accepted
_UNAVAILABLE = 14  # gRPC UNAVAILABLE: no leader, shutting down


class EtcdError(Exception):
    """
    etcd refused a request; the message names the URL and says why.

    @ivar code: the gRPC status code etcd gave, or None.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """etcd could not be reached or did not answer in time (worth retrying)."""


class LeaseNotFound(EtcdError):
    """The lease has expired or was revoked (or etcd lost its data)."""


def b64(data: str | bytes) -> str:
    """
    @param data: a key or value (text is UTF-8 encoded).
    @return: it in base64, as the gateway wants it.
    """
    return base64.b64encode(data.encode("utf-8") if isinstance(data, str) else data).decode("ascii")


def prefix_end(prefix: bytes) -> bytes:
    """
    @param prefix: a key prefix.
    @return: etcd's C{range_end} for "every key starting with C{prefix}":
        the prefix with its last byte below 0xff incremented.
    """
    for i in range(len(prefix) - 1, -1, -1):
        if prefix[i] < 0xFF:
            return prefix[:i] + bytes([prefix[i] + 1])
    return b"\0"


@implementer(IBodyProducer)
class _Body:
    """A request body already in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _describe(error: BaseException) -> str:
    if isinstance(error, (ResponseFailed, RequestTransmissionFailed, ResponseNeverReceived)):
        if error.reasons:
            return _describe(error.reasons[0].value)
    return str(error).strip().rstrip(".") or type(error).__name__


class EtcdClient:
    """
    Requests to one etcd server's JSON gateway.

    @ivar url: the gateway's base URL, e.g. C{http://127.0.0.1:2379}.
    @ivar timeout: seconds each request may take.
    """

    def __init__(self, url: str, *, reactor: Any = None, agent: IAgent | None = None,
                 timeout: float = 5.0) -> None:
        """
        @param url: C{http://HOST:PORT} (or C{https://}) of an etcd client URL.
        @param reactor: the reactor (the global one by default); only its
            clock is used when C{agent} is given.
        @param agent: the L{IAgent} to send requests with (an L{Agent} on
            C{reactor} by default).
        @param timeout: seconds each request may take, connecting included.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.url = url.rstrip("/")
        self.clock = reactor
        self.agent = agent if agent is not None else Agent(
            reactor, connectTimeout=timeout, pool=QuietHTTPConnectionPool(reactor, persistent=False))
        self.timeout = timeout

    def request(self, path: str, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """
        POST a JSON body to the gateway.

        @param path: e.g. C{/v3/kv/put}.
        @param body: the request, as JSON-able data.
        @return: a Deferred firing with the decoded answer (the first
            message of a streamed answer, unwrapped from C{"result"}); it
            fails with L{EtcdUnavailable} when etcd cannot be reached, cuts
            the connection or does not answer within C{timeout},
            L{LeaseNotFound} for an unknown lease, L{EtcdError} for any
            other refusal.  Cancelling it aborts the request.
        """
        d = Deferred.fromCoroutine(self._request(path, body))

        def timed_out(result: Any, timeout: float) -> Any:
            if isinstance(result, Failure) and result.check(CancelledError):
                return Failure(EtcdUnavailable(f"{self.url}{path}: no answer within {timeout:g} s"))
            return result
        return d.addTimeout(self.timeout, self.clock, timed_out)

    async def _request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        where = f"{self.url}{path}"
        try:
            response = await self.agent.request(
                b"POST", where.encode("utf-8"), Headers({"content-type": ["application/json"]}),
                _Body(json.dumps(body).encode("utf-8")))
            data = await readBody(response)
        except CancelledError:
            raise
        except Exception as e:
            raise EtcdUnavailable(f"{where}: {_describe(e)}") from None
        first = data.strip().split(b"\n", 1)[0]
        try:
            answer = json.loads(first) if first else {}
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise EtcdError(f"{where}: HTTP {response.code}, not a JSON object: {data[:200]!r}")
        error = answer.get("error")
        if isinstance(error, dict):  # an error inside a streamed answer
            answer = {"message": error.get("message"), "code": error.get("grpc_code")}
            error = answer["message"]
        if response.code != 200 or error:
            message = answer.get("message") or error or f"HTTP {response.code}"
            code = answer.get("code")
            kind = (LeaseNotFound if code == _NOT_FOUND and "lease not found" in str(message)
                    else EtcdUnavailable if code == _UNAVAILABLE else EtcdError)
            raise kind(f"{where}: {message}", code if isinstance(code, int) else None)
        result = answer.get("result", answer)
        return result if isinstance(result, dict) else {}

    def grant(self, ttl: int) -> Deferred[tuple[int, int]]:
        """
        Create a lease.

        @param ttl: seconds it lives without a keepalive (etcd may raise it
            to its minimum, about 2 s).
        @return: a Deferred firing with C{(lease id, granted TTL)}; failing
            as L{request} does.
        """
        def granted(answer: dict[str, Any]) -> tuple[int, int]:
            return int(answer["ID"]), int(answer.get("TTL", ttl))
        return self.request("/v3/lease/grant", {"TTL": ttl}).addCallback(granted)

    def keepalive(self, lease: int) -> Deferred[int]:
        """
        Renew a lease once.

        @param lease: the lease id.
        @return: a Deferred firing with the lease's TTL from now, or 0 if it
            no longer exists (expired or revoked); failing as L{request}
            does.
        """
        return self.request("/v3/lease/keepalive", {"ID": str(lease)}).addCallback(
            lambda answer: int(answer.get("TTL", 0)))

    def revoke(self, lease: int) -> Deferred[None]:
        """
        End a lease now, deleting the keys attached to it.

        @param lease: the lease id.
        @return: a Deferred firing with None (also when the lease had already
            gone); failing as L{request} does.
        """
        def gone(failure: Failure) -> None:
            failure.trap(LeaseNotFound)
        return self.request("/v3/lease/revoke", {"ID": str(lease)}).addCallbacks(
            lambda _: None, gone)

    def put(self, key: str, value: bytes, lease: int = 0) -> Deferred[None]:
        """
        Set a key.

        @param key: the key.
        @param value: its value.
        @param lease: attach it to this lease (0: none).
        @return: a Deferred firing with None; failing as L{request} does
            (L{LeaseNotFound} when the lease has gone).
        """
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return self.request("/v3/kv/put", body).addCallback(lambda _: None)

    def get_prefix(self, prefix: str) -> Deferred[list[tuple[str, bytes]]]:
        """
        Read every key starting with a prefix.

        @param prefix: the prefix.
        @return: a Deferred firing with C{(key, value)} pairs in key order;
            failing as L{request} does.
        """
        return self.get_prefix_at(prefix).addCallback(lambda found: found[0])

    def get_prefix_at(self, prefix: str) -> Deferred[tuple[list[tuple[str, bytes]], int]]:
        """
        Read every key starting with a prefix, and the revision read.

        @param prefix: the prefix.
        @return: a Deferred firing with C{(pairs, revision)}: C{(key, value)}
            pairs in key order, and the store's revision they are from (a
            watch from C{revision + 1} misses no later change); failing as
            L{request} does.
        """
        raw = prefix.encode("utf-8")

        def found(answer: dict[str, Any]) -> tuple[list[tuple[str, bytes]], int]:
            pairs = [(_key(kv), base64.b64decode(kv.get("value", "")))
                     for kv in answer.get("kvs", [])]
            return pairs, int(answer.get("header", {}).get("revision", 0))
        return self.request("/v3/kv/range", {"key": b64(raw), "range_end": b64(prefix_end(raw))}
                            ).addCallback(found)

    def watch_prefix(self, prefix: str, start_revision: int,
                     on_message: Callable[[dict[str, Any]], None]) -> Deferred[None]:
        """
        Watch every key starting with a prefix, from a revision on.

        @param prefix: the prefix.
        @param start_revision: the first revision to report (earlier ones
            that were compacted away end the watch with a message holding
            C{compact_revision}).
        @param on_message: called with each message's C{result} (with
            C{events}, each C{{"type": "DELETE"?, "kv": {...}}}; or
            C{created}, C{canceled}, C{compact_revision}).
        @return: a Deferred firing with None when etcd ends the watch; failing
            with L{EtcdUnavailable} when etcd cannot be reached, does not
            answer within C{timeout}, or the connection is cut, L{EtcdError}
            when it refuses.  Cancelling it ends the watch.
        """
        raw = prefix.encode("utf-8")
        body = {"create_request": {"key": b64(raw), "range_end": b64(prefix_end(raw)),
                                   "start_revision": str(start_revision)}}
        return _Watch(self, body, on_message).done


def _error(failure: Failure) -> BaseException:
    error = failure.value
    assert error is not None  # a Failure always holds its exception
    return error


def _key(kv: dict[str, Any]) -> str:
    return base64.b64decode(kv.get("key", "")).decode("utf-8", "replace")


def event_key(event: dict[str, Any]) -> str:
    """
    @param event: one of a watch message's C{events}.
    @return: the key it is about.
    """
    return _key(event.get("kv", {}))


class _Watch(Protocol):
    """One watch request: its response body, read a line at a time."""

    def __init__(self, client: EtcdClient, body: dict[str, Any],
                 on_message: Callable[[dict[str, Any]], None]) -> None:
        self.where = f"{client.url}/v3/watch"
        self.on_message = on_message
        self.buffer = b""
        self._cancelled = False
        self.done: Deferred[None] = Deferred(self._cancel)
        self._asking = client.agent.request(
            b"POST", self.where.encode("utf-8"), Headers({"content-type": ["application/json"]}),
            _Body(json.dumps(body).encode("utf-8")))

        def timed_out(result: Any, timeout: float) -> Any:
            if isinstance(result, Failure) and result.check(CancelledError) and not self._cancelled:
                return Failure(EtcdUnavailable(f"{self.where}: no answer within {timeout:g} s"))
            return result
        self._asking.addTimeout(client.timeout, client.clock, timed_out)
        self._asking.addCallbacks(self._answered, self._failed)

    def _cancel(self, d: Deferred[None]) -> None:
        self._cancelled = True  # done fails with CancelledError, nothing else
        if not self._asking.called:
            self._asking.cancel()
        else:
            self._stop_body()

    def _failed(self, failure: Failure) -> None:
        if self.done.called or self._cancelled:
            return
        if failure.check(EtcdError):
            self.done.errback(failure)
        else:
            self.done.errback(EtcdUnavailable(f"{self.where}: {_describe(_error(failure))}"))

    def _answered(self, response: Any) -> Any:
        if self.done.called or self._cancelled:
            response.deliverBody(Protocol())
            return None
        if response.code != 200:
            def refused(data: bytes) -> None:
                raise EtcdError(f"{self.where}: HTTP {response.code}: {data[:200]!r}")
            return readBody(response).addCallback(refused).addErrback(self._failed)
        response.deliverBody(self)
        return None

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer and not self.done.called:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.strip():
                self._line(line)
        if len(self.buffer) > MAX_WATCH_LINE and not self.done.called:
            self._stop(EtcdError(f"{self.where}: a watch message longer than "
                                 f"{MAX_WATCH_LINE} bytes"))

    def _line(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self._stop(EtcdError(f"{self.where}: not a JSON object: {line[:200]!r}"))
            return
        error = message.get("error")
        if isinstance(error, dict):
            self._stop(EtcdError(f"{self.where}: {error.get('message')}", error.get("grpc_code")))
            return
        result = message.get("result", message)
        if isinstance(result, dict):
            self.on_message(result)

    def _stop(self, error: Exception) -> None:
        self.done.errback(error)
        self._stop_body()

    def _stop_body(self) -> None:
        # deliverBody's transport is a producer (IPushProducer): stopping it
        # drops the connection.
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if self.done.called or self._cancelled:
            return
        if reason.check(ResponseDone):
            self.done.callback(None)
        else:
            self.done.errback(EtcdUnavailable(f"{self.where}: {_describe(_error(reason))}"))


__all__ = ["EtcdClient", "EtcdError", "EtcdUnavailable", "LeaseNotFound", "b64", "event_key",
           "prefix_end"]
