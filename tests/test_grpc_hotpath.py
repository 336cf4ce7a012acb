"""
Tests for the gRPC server's hot path for unary calls: once a unary method
with no context, guard or interceptors has been called on a connection, its
later calls go through the dispatcher's hot-path call (no Deferred for a
plain result), and a one-frame reply goes straight to h2's C{send_data}.
"""

from __future__ import annotations

from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from twisted.trial.unittest import SynchronousTestCase

from rpcd.errors import Code
from rpcd.examples.protos import hello_world_pb2 as hello
from tests.grpcservices import pb
from tests.test_grpcwire import H2Pair

HELLO = "/helloworld.HelloWorldService/SayHelloWorld"


def _hello(pair: H2Pair) -> list[str]:
    """
    @return: the replies of one SayHelloWorld call.
    """
    reply = pair.call(HELLO, hello.HelloWorldRequest(greeting="x"))
    assert reply.status == 0, reply.trailers
    return [hello.HelloWorldResponse.FromString(m).reply for m in reply.messages()]


class HotPathTests(SynchronousTestCase):
    """Unary calls after the first on a connection."""

    def test_later_calls_answer_the_same(self) -> None:
        """The first call of a plain unary method enables its hot path, and the calls after it get the same reply."""
        pair = H2Pair()
        first = _hello(pair)
        self.assertIn("HelloWorldService.SayHelloWorld", pair.protocol.unary_calls)
        self.assertEqual([_hello(pair) for _ in range(3)], [first] * 3)
        self.assertEqual(first, ["Hello World !!"])
        self.assertEqual(pair.protocol.calls, {})

    def test_context_methods_stay_off(self) -> None:
        """A method taking a context is never on the hot path, so its reply metadata still comes back on later calls."""
        pair = H2Pair()
        for _ in range(2):
            reply = pair.call("/rpcdtest.Probe/Echo", pb.Req(text="hi"),
                              headers=[("x-echo", "back")])
            self.assertEqual(reply.headers["x-echo"], "back")
        self.assertNotIn("Probe.Echo", pair.protocol.unary_calls)

    def test_coroutine_result(self) -> None:
        """A coroutine method on the hot path answers when it ends."""
        pair = H2Pair()
        for text in ("one", "two"):
            reply = pair.call("/rpcdtest.Probe/Wait", pb.Req(text=text))
            self.assertEqual(reply.trailers, {})
            pair.probe.waiting.pop().callback(None)
            pair.pump()
            self.assertEqual([pb.Rep.FromString(m).text for m in reply.messages()], ["woke"])
            self.assertEqual(reply.status, 0)
        self.assertIn("Probe.Wait", pair.protocol.unary_calls)

    def test_deadline(self) -> None:
        """grpc-timeout still cancels a handler on the hot path with DEADLINE_EXCEEDED."""
        pair = H2Pair()
        pair.call("/rpcdtest.Probe/Wait", pb.Req())
        pair.probe.waiting.pop().callback(None)
        pair.pump()
        reply = pair.call("/rpcdtest.Probe/Wait", pb.Req(), headers=[("grpc-timeout", "500m")])
        pair.clock.advance(0.5)
        pair.pump()
        self.assertEqual(reply.status, Code.DEADLINE_EXCEEDED)
        self.assertEqual(pair.probe.cancelled, 1)
        self.assertEqual(pair.protocol.dispatcher.running, {})  # type: ignore[union-attr]

    def test_reset_cancels(self) -> None:
        """RST_STREAM still cancels a handler on the hot path."""
        pair = H2Pair()
        pair.call("/rpcdtest.Probe/Wait", pb.Req())
        pair.probe.waiting.pop().callback(None)
        sid = pair.open("/rpcdtest.Probe/Wait")
        pair.send(sid, pb.Req(), end=True)
        pair.client.reset_stream(sid, ErrorCodes.CANCEL)
        pair.pump()
        self.assertEqual(pair.probe.cancelled, 1)
        self.assertFalse(pair.protocol.busy())

    def test_refused_call(self) -> None:
        """A call the hot path refuses (too many running) ends with that status; the connection goes on."""
        pair = H2Pair()
        pair.call("/rpcdtest.Probe/Wait", pb.Req())
        pair.probe.waiting.pop().callback(None)
        dispatcher = pair.protocol.dispatcher
        assert dispatcher is not None
        dispatcher.max_running = 1
        running = pair.call("/rpcdtest.Probe/Wait", pb.Req())
        refused = pair.call("/rpcdtest.Probe/Wait", pb.Req())
        self.assertEqual(refused.status, Code.RESOURCE_EXHAUSTED)
        pair.probe.waiting.pop().callback(None)
        pair.pump()
        self.assertEqual(running.status, 0)

    def test_failing_handler(self) -> None:
        """A handler on the hot path failing with an unexpected error ends its call with UNKNOWN, logged."""
        pair = H2Pair()
        pair.call("/rpcdtest.Probe/Wait", pb.Req())
        pair.probe.waiting.pop().callback(None)
        reply = pair.call("/rpcdtest.Probe/Wait", pb.Req())
        pair.probe.waiting.pop().errback(ZeroDivisionError("boom"))
        pair.pump()
        self.assertEqual(reply.status, Code.UNKNOWN)
        self.assertIn("ZeroDivisionError", reply.headers["grpc-message"])  # trailers only
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_reply_waits_for_the_window(self) -> None:
        """A caller whose window is closed gets the reply and trailers once it opens the window."""
        pair = H2Pair(auto_ack=False)
        _hello(pair)
        pair.client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 0})
        pair.pump()
        sid = pair.open(HELLO)
        pair.send(sid, hello.HelloWorldRequest(greeting="x"), end=True)
        reply = pair.replies[sid]
        self.assertEqual(reply.headers[":status"], "200")
        self.assertEqual((reply.data, reply.trailers), (b"", {}))
        pair.client.increment_flow_control_window(4, sid)
        pair.pump()
        self.assertEqual((len(reply.data), reply.trailers), (4, {}))
        pair.client.increment_flow_control_window(1000, sid)
        pair.pump()
        self.assertEqual([hello.HelloWorldResponse.FromString(m).reply for m in reply.messages()],
                         ["Hello World !!"])
        self.assertEqual(reply.status, 0)
