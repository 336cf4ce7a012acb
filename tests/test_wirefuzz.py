"""
Hostile bytes for the C{json} and C{http} server protocols, without
sockets: random and mutated input, split anywhere, must end in answers or a
clean close, never in an exception or a logged failure.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from rpcd.server import Limits
from tests.jsonservices import connect_protocol, make_server

JSON_SAMPLES = [
    b'{"id": 0, "params": [{"x":10, "y":50}], "method": "ServiceA.Add"}',
    b'{"jsonrpc":"2.0","method":"Math.subtract","params":{"minuend":42,"subtrahend":23},"id":3}',
    b'[{"jsonrpc":"2.0","method":"Math.sum","params":[1,2,4],"id":"1"},'
    b'{"jsonrpc":"2.0","method":"Math.notify_hello","params":[7]},{"foo":"boo"}]',
    b'{"method":"Odd.Bytes","params":[null],"id":1.0}',
    b'{"jsonrpc":"2.0","method":"Odd.NaN","id":null}',
]
HTTP_SAMPLES = [
    b"POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 61\r\n\r\n"
    b'{"jsonrpc":"2.0","method":"Math.subtract","params":[42,23],"id":1}',
    b"GET /debug/rpc HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /_goRPC_ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST /rpc HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\n\r\n[]",
    b"POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    b'\r\n1f;x=y\r\n{"jsonrpc":"2.0","method":"Math\r\n23\r\n.subtract","params":[42,23],"id":1}'
    b"\r\n0\r\nX-T: 1\r\n\r\n",
]
NASTY = [b"\x00", b"\r", b"\n", b"{", b"}", b"[", b"]", b'"', b"\\", b"NaN", b"Infinity", b"1e999",
         b"\xff", b"\xc3", b"\r\n\r\n", b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n",
         b'"jsonrpc":"2.0",', b'"id":', b"CONNECT /_goRPC_ HTTP/1.0\n\n"]


@st.composite
def mutated(draw: st.DrawFn, samples: list[bytes]) -> bytes:
    """A sample (or several) with random edits: flips, insertions, deletions, cuts."""
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(samples), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.integers(0, 3))
        if kind == 0 and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif kind == 1:
            data[pos:pos] = draw(st.sampled_from(NASTY))
        elif kind == 2:
            del data[pos:pos + draw(st.integers(1, 16))]
        else:
            data[pos:pos] = draw(st.binary(max_size=20))
    return bytes(data)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split data at the given offsets."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


class FuzzTests(SynchronousTestCase):
    """Random and mutated input never makes the protocols raise or log a failure."""

    def feed(self, prefix: bytes, data: bytes, cuts: list[int]) -> bytes:
        server, _, odd = make_server(limits=Limits(max_frame_bytes=4096))
        protocol, transport = connect_protocol(server)
        with capturedLogs() as events:
            for chunk in chunks(prefix + data, cuts):
                protocol.dataReceived(chunk)
            for d in list(odd.waiting.values()):
                d.callback(1)
            protocol.connectionLost(Exception("done"))  # type: ignore[arg-type]
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(failures, [], [e["log_failure"].getTraceback() for e in failures])
        return transport.value()

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(mutated(JSON_SAMPLES), st.binary(max_size=300)),
           st.lists(st.integers(0, 10_000), max_size=8))
    def test_json(self, data: bytes, cuts: list[int]) -> None:
        """The json protocol answers with newline-separated JSON values, or closes."""
        out = self.feed(b"{", data, cuts) if data[:1] not in (b"{", b"[") else self.feed(b"", data, cuts)
        for line in out.split(b"\n"):
            if line:
                json.loads(line)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(mutated(HTTP_SAMPLES), st.binary(max_size=300)),
           st.lists(st.integers(0, 10_000), max_size=8))
    def test_http(self, data: bytes, cuts: list[int]) -> None:
        """The http protocol answers with HTTP responses, or closes."""
        prefix = b"" if data.startswith((b"GET ", b"POST ", b"CONNECT ")) else b"POST "
        out = self.feed(prefix, data, cuts)
        if out:
            self.assertTrue(out.startswith(b"HTTP/1."), out[:80])
