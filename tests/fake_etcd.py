"""
An in-memory etcd v3 JSON gateway as an L{IAgent}: leases that expire on a
C{Clock}, keys on them, and the gateway's answers and error bodies, for
testing L{rpcd.etcd} and L{rpcd.discovery} without sockets.

    clock = Clock()
    etcd = FakeEtcd(clock)
    client = EtcdClient("http://etcd:2379", reactor=clock, agent=etcd)
    etcd.down = True        # requests fail with "connection refused"
    etcd.restart()          # every lease and key is lost
    etcd.cut_watches()      # every watch stream breaks
    etcd.compact()          # history before the current revision is gone
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer


class _Collect:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


@implementer(IResponse)
class FakeResponse:
    """A complete response whose body is delivered at once."""

    version = (b"HTTP", 1, 1)
    request = None
    previousResponse = None

    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self.phrase = b"OK" if code == 200 else b"Error"
        self.headers = Headers({"content-type": ["application/json"]})
        self.length = len(body)
        self.body = body

    def deliverBody(self, protocol: Any) -> None:
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))

    def setPreviousResponse(self, response: Any) -> None:
        pass


class _StreamTransport:
    """What a streamed body's protocol sees as its transport."""

    def __init__(self, response: StreamResponse) -> None:
        self.response = response

    def stopProducing(self) -> None:
        self.response.end(Failure(ResponseFailed([Failure(ConnectionRefusedError("stopped"))])))

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


@implementer(IResponse)
class StreamResponse(FakeResponse):
    """A response whose body goes on: a watch's stream of lines."""

    def __init__(self) -> None:
        super().__init__(200, b"")
        self.length = None  # type: ignore[assignment]
        self.protocol: Any = None
        self.lines: list[bytes] = []
        self.ended = False

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(_StreamTransport(self))
        lines, self.lines = self.lines, []
        for line in lines:
            protocol.dataReceived(line)
        if self.ended:
            protocol.connectionLost(Failure(ResponseDone()))

    def send(self, message: dict[str, Any]) -> None:
        """Send one line of the body."""
        line = json.dumps(message).encode() + b"\n"
        if self.protocol is None:
            self.lines.append(line)
        elif not self.ended:
            self.protocol.dataReceived(line)

    def end(self, reason: Failure | None = None) -> None:
        """End the body (well, or with C{reason})."""
        if self.ended:
            return
        self.ended = True
        if self.protocol is not None:
            self.protocol.connectionLost(reason or Failure(ResponseDone()))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@implementer(IAgent)
class FakeEtcd:
    """
    The etcd gateway in memory.

    @ivar keys: key to C{(value, lease)}.
    @ivar leases: lease id to its expiry time on the clock.
    @ivar requests: every request as C{(path, JSON body)}.
    @ivar down: when true, requests fail as if the port were closed.
    @ivar hold: when true, requests never get an answer (until cancelled).
    @ivar min_ttl: granted TTLs are at least this.
    """

    def __init__(self, clock: Clock, min_ttl: int = 2) -> None:
        self.clock = clock
        self.keys: dict[bytes, tuple[bytes, int]] = {}
        self.leases: dict[int, float] = {}
        self.ttls: dict[int, int] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.down = False
        self.hold = False
        self.min_ttl = min_ttl
        self.next_lease = 0x6B4C0001
        self.revision = 1
        self.history: list[tuple[int, bytes, bytes | None]] = []
        self.compacted = 0
        self.watches: list[tuple[bytes, bytes, StreamResponse]] = []

    def cut_watches(self) -> None:
        """Break every watch stream, as a lost connection does."""
        watches, self.watches = self.watches, []
        for _, _, response in watches:
            response.end(Failure(ResponseFailed([Failure(ConnectionRefusedError("cut"))])))

    def compact(self) -> None:
        """Forget the history before the current revision."""
        self.compacted = self.revision
        self.history = [h for h in self.history if h[0] >= self.compacted]

    def _changed(self, key: bytes, value: bytes | None) -> None:
        self.revision += 1
        self.history.append((self.revision, key, value))
        for start, end, response in list(self.watches):
            if start <= key < end:
                response.send({"result": {"header": self._header(),
                                          "events": [self._event(self.revision, key, value)]}})

    def _event(self, revision: int, key: bytes, value: bytes | None) -> dict[str, Any]:
        kv = {"key": _b64(key), "mod_revision": str(revision)}
        if value is None:
            return {"type": "DELETE", "kv": kv}
        kv["value"] = _b64(value)
        return {"kv": kv}

    def restart(self) -> None:
        """Lose every lease and key, as an etcd with a wiped data dir."""
        self.keys.clear()
        self.leases.clear()
        self.revision = 1
        self.history.clear()
        self.compacted = 0

    def paths(self) -> list[str]:
        """
        @return: the paths requested so far, in order.
        """
        return [path for path, _ in self.requests]

    def values(self, prefix: bytes = b"") -> dict[str, dict[str, Any]]:
        """
        @return: the live keys starting with C{prefix}, with their JSON values.
        """
        self._expire()
        return {k.decode(): json.loads(v) for k, (v, _) in sorted(self.keys.items())
                if k.startswith(prefix)}

    def _expire(self) -> None:
        now = self.clock.seconds()
        for lease, expiry in list(self.leases.items()):
            if expiry <= now:
                self._drop(lease)

    def _drop(self, lease: int) -> None:
        del self.leases[lease]
        for key, (_, on) in list(self.keys.items()):
            if on == lease:
                del self.keys[key]
                self._changed(key, None)

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None) -> Deferred[IResponse]:
        assert method == b"POST", method
        assert headers is not None and headers.getRawHeaders("content-type") == ["application/json"]
        collected = _Collect()
        assert bodyProducer is not None
        bodyProducer.startProducing(collected)
        assert bodyProducer.length == len(collected.data)
        path = "/" + uri.decode().split("://", 1)[1].split("/", 1)[1]
        body = json.loads(collected.data)
        self.requests.append((path, body))
        if self.down:
            return fail(ConnectionRefusedError("111: Connection refused."))
        if self.hold:
            return Deferred()
        self._expire()
        if path == "/v3/watch":
            return succeed(self._watch(body["create_request"]))
        code, answer = self._answer(path, body)
        return succeed(FakeResponse(code, json.dumps(answer).encode() + b"\n"))

    def _watch(self, create: dict[str, Any]) -> StreamResponse:
        response = StreamResponse()
        start, end = base64.b64decode(create["key"]), base64.b64decode(create["range_end"])
        since = int(create.get("start_revision", 0)) or self.revision + 1
        response.send({"result": {"header": self._header(), "created": True}})
        if since < self.compacted:
            response.send({"result": {"header": self._header(), "canceled": True,
                                      "compact_revision": str(self.compacted)}})
            response.end()
            return response
        events = [self._event(revision, key, value) for revision, key, value in self.history
                  if revision >= since and start <= key < end]
        if events:
            response.send({"result": {"header": self._header(), "events": events}})
        self.watches.append((start, end, response))
        return response

    def _header(self) -> dict[str, Any]:
        return {"cluster_id": "1", "member_id": "2", "revision": str(self.revision), "raft_term": "2"}

    def _answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        not_found = (404, {"error": "etcdserver: requested lease not found",
                           "message": "etcdserver: requested lease not found", "code": 5})
        if path == "/v3/lease/grant":
            lease, self.next_lease = self.next_lease, self.next_lease + 1
            ttl = max(int(body["TTL"]), self.min_ttl)
            self.leases[lease] = self.clock.seconds() + ttl
            self.ttls[lease] = ttl
            return 200, {"header": self._header(), "ID": str(lease), "TTL": str(ttl)}
        if path == "/v3/lease/keepalive":
            lease = int(body["ID"])
            if lease not in self.leases:
                return 200, {"result": {"header": self._header(), "ID": str(lease)}}
            self.leases[lease] = self.clock.seconds() + self.ttls[lease]
            return 200, {"result": {"header": self._header(), "ID": str(lease),
                                    "TTL": str(self.ttls[lease])}}
        if path == "/v3/lease/revoke":
            lease = int(body["ID"])
            if lease not in self.leases:
                return not_found
            self._drop(lease)
            return 200, {"header": self._header()}
        if path == "/v3/kv/put":
            lease = int(body.get("lease", 0))
            if lease and lease not in self.leases:
                return not_found
            key, value = base64.b64decode(body["key"]), base64.b64decode(body["value"])
            self.keys[key] = (value, lease)
            self._changed(key, value)
            return 200, {"header": self._header()}
        if path == "/v3/kv/range":
            start, end = base64.b64decode(body["key"]), base64.b64decode(body["range_end"])
            kvs = [{"key": _b64(k), "value": _b64(v), "lease": str(lease)}
                   for k, (v, lease) in sorted(self.keys.items()) if start <= k < end]
            answer: dict[str, Any] = {"header": self._header()}
            if kvs:
                answer.update(kvs=kvs, count=str(len(kvs)))
            return 200, answer
        return 404, {"error": "Not Found", "message": "Not Found", "code": 5}
