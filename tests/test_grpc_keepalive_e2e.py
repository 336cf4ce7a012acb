"""
End-to-end keepalive on gRPC connections: the real daemon sends HTTP/2
PINGs on a connection quiet while a call runs; grpcio's client answers them
and its call runs on, and a raw HTTP/2 peer that stops answering is
disconnected, with the reason logged.  Every wait is on a call's outcome, a
closed connection or the daemon's log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from h2.config import H2Configuration
from h2.connection import H2Connection
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from tests.daemon import ROOT, Daemon, temp_dir
from tests.grpcservices import pb as probe_pb2
from tests.test_grpc_e2e import in_thread, stubs
from tests.test_limits_e2e import bounded

CONFIG = """
[server]
listen = ["tcp:0:interface=127.0.0.1"]
[limits]
keepalive_interval = 0.5
keepalive_timeout = 1.0
[services.Probe]
class = "tests.grpcservices:Probe"
"""


class _Silent(Protocol):
    """An HTTP/2 client that starts one call, then never reads or answers again."""

    def __init__(self) -> None:
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        h2.initiate_connection()
        stream = h2.get_next_available_stream_id()
        h2.send_headers(stream, [(b":method", b"POST"), (b":scheme", b"http"),
                                 (b":path", b"/rpcdtest.Probe/Wait"),
                                 (b":authority", b"localhost"),
                                 (b"content-type", b"application/grpc"), (b"te", b"trailers")])
        h2.send_data(stream, b"\x00\x00\x00\x00\x00", end_stream=True)  # an empty Req
        self.transport.write(h2.data_to_send())
        self.transport.pauseProducing()  # reads nothing: its PING ACKs never come

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(None)


class GrpcKeepaliveTests(TestCase):
    """HTTP/2 PINGs from the daemon on quiet gRPC connections."""

    timeout = 60

    async def start(self) -> Daemon:
        path = Path(temp_dir(self)) / "rpcd.toml"
        path.write_text(CONFIG)
        return await Daemon.start(self, "--config", str(path))

    async def test_grpcio_answers_pings(self) -> None:
        """A grpcio call quiet for many keepalive intervals is not cut off: grpcio ACKs the PINGs and the call ends by its own deadline."""
        daemon = await self.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{daemon.port}")
        self.addCleanup(channel.close)
        probe = stubs(self, ROOT / "tests" / "grpc_probe.proto", probe_pb2,
                      "grpc_probe_pb2").ProbeStub(channel)
        try:
            # Six keepalive intervals; unanswered PINGs would close the
            # connection (UNAVAILABLE) at 1.5 s, half the deadline.
            await in_thread(probe.Wait, probe_pb2.Req(text="quiet"), timeout=3)
        except grpc.RpcError as e:
            self.assertEqual(e.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        else:
            self.fail("Probe.Wait returned")
        self.assertNotIn("no answer to a PING", daemon.output)

    async def test_silent_peer_closed(self) -> None:
        """An HTTP/2 peer with a call running that stops answering is closed after keepalive_interval + keepalive_timeout, the reason logged."""
        daemon = await self.start()
        mark = len(daemon.output)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port, timeout=10)
        peer = await connectProtocol(endpoint, _Silent())
        await daemon.wait_for_log(r"Probe\.Wait waiting", after=mark, timeout=30)
        await daemon.wait_for_log(r"no answer to a PING within 1 s", after=mark, timeout=30)
        peer.transport.resumeProducing()  # reading again, it finds the connection gone
        await bounded(peer.closed, 30)
        await daemon.wait_for_log(r"Probe\.Wait saw its cancellation", after=mark, timeout=30)
