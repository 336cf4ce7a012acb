"""
Tests for how a gRPC server stream's messages are handed to h2: gathered
while the handler yields without waiting, sent before it waits.
"""

from __future__ import annotations

from typing import Any

from h2.events import DataReceived
from twisted.trial.unittest import SynchronousTestCase

from rpcd.examples.protos import hello_world_pb2 as hello
from rpcd.wire import grpccall
from tests.grpcservices import pb
from tests.test_grpcwire import H2Pair


class CountingPair(H2Pair):
    """An L{H2Pair} that counts the DATA frames the client receives."""

    frames = 0

    def _event(self, event: Any) -> None:
        if isinstance(event, DataReceived):
            self.frames += 1
        super()._event(event)


class CoalesceTests(SynchronousTestCase):
    """Server-stream messages and DATA frames."""

    def test_messages_share_frames(self) -> None:
        """Fifty small messages yielded without waiting arrive whole, in fewer DATA frames than messages."""
        pair = CountingPair()
        sid = pair.open("/rpcdtest.Probe/Count")
        pair.send(sid, pb.Req(count=50, blob=b"x" * 10), end=True)
        reply = pair.replies[sid]
        self.assertEqual([pb.Rep.FromString(m).n for m in reply.messages()], list(range(50)))
        self.assertEqual(reply.status, 0)
        self.assertLess(pair.frames, 50)

    def test_frames_bounded(self) -> None:
        """Gathered messages go to h2 once they reach COALESCE bytes: large streams still arrive whole, in several frames."""
        pair = CountingPair()
        sid = pair.open("/rpcdtest.Probe/Count")
        pair.send(sid, pb.Req(count=40, blob=b"x" * 1000), end=True)
        reply = pair.replies[sid]
        self.assertEqual(len(reply.messages()), 40)
        self.assertGreaterEqual(pair.frames, 40 * 1000 // grpccall.COALESCE)

    def test_sent_before_waiting(self) -> None:
        """A message yielded before the handler waits (the seed's ListHello sleeps a second) reaches the caller during the wait."""
        pair = H2Pair()
        sid = pair.open("/helloworld.HelloWorldService/ListHello")
        pair.send(sid, hello.HelloWorldRequest(greeting="x"), end=True)
        self.assertEqual([hello.HelloWorldResponse.FromString(m).reply
                          for m in pair.replies[sid].messages()], ["ListHello Reply x 1"])
        pair.clock.advance(1)
        pair.pump()
        self.assertEqual(len(pair.replies[sid].messages()), 2)
