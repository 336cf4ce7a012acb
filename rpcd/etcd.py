"""
A small client for etcd v3's HTTP JSON gateway: the leases and keys that
service discovery (L{rpcd.discovery}) needs, over Twisted's L{Agent}.

The gateway (grpc-gateway, at C{/v3/} since etcd 3.4) takes a JSON body by
POST and answers JSON; keys and values are base64, 64-bit numbers (lease
ids, TTLs, revisions) are decimal strings::

    POST /v3/lease/grant      {"TTL": 10}                    -> {"ID": "7587...", "TTL": "10"}
    POST /v3/kv/put           {"key": b64, "value": b64, "lease": "7587..."}
    POST /v3/kv/range         {"key": b64, "range_end": b64} -> {"kvs": [{"key", "value", ...}]}
    POST /v3/lease/keepalive  {"ID": "7587..."}              -> {"result": {"ID", "TTL"}}  (no TTL: gone)
    POST /v3/lease/revoke     {"ID": "7587..."}

Errors come back as a non-200 status with C{{"error", "message", "code"}}
(C{code} is the gRPC status code).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.client import (Agent, HTTPConnectionPool, RequestTransmissionFailed,
                                ResponseFailed, ResponseNeverReceived, _HTTP11ClientFactory,
                                readBody)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import implementer

_NOT_FOUND = 5     # gRPC NOT_FOUND: etcd's "requested lease not found"
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


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False


class _QuietPool(HTTPConnectionPool):
    """
    One connection per request, without Twisted's "Starting factory" and
    "Stopping factory" log lines for each (a keepalive every few seconds
    would fill the daemon's log).
    """

    _factory = _QuietFactory


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
            reactor, connectTimeout=timeout, pool=_QuietPool(reactor, persistent=False))
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
        raw = prefix.encode("utf-8")

        def found(answer: dict[str, Any]) -> list[tuple[str, bytes]]:
            return [(base64.b64decode(kv.get("key", "")).decode("utf-8", "replace"),
                     base64.b64decode(kv.get("value", "")))
                    for kv in answer.get("kvs", [])]
        return self.request("/v3/kv/range", {"key": b64(raw), "range_end": b64(prefix_end(raw))}
                            ).addCallback(found)


__all__ = ["EtcdClient", "EtcdError", "EtcdUnavailable", "LeaseNotFound", "b64", "prefix_end"]
