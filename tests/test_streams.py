"""
Tests for streaming calls in the native protocol, without sockets: gRPC's
interop cases against L{rpcd.examples.interop.TestService}, credit windows,
protocol errors, cancellation, deadlines and lost connections.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Coroutine

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase

from rpcd.client_streams import ClientStream
from rpcd.context import CallContext
from rpcd.errors import (
    Cancelled,
    Code,
    DeadlineExceeded,
    InvalidArgument,
    RPCError,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)
from rpcd.examples.interop import TestService
from rpcd.examples.kvstore import KVStoreService
from rpcd.server import Limits
from rpcd.service import exposed
from rpcd.testing import MemoryConnection
from rpcd.wire.flow import ReceiveWindow
from rpcd.wire.frames import CALL, MESSAGE, encode_frame

SPECIAL_MESSAGE = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"
REQUEST_SIZES = (27182, 8, 1828, 45904)
RESPONSE_SIZES = (31415, 9, 2653, 58979)


def payload(size: int) -> dict[str, bytes]:
    return {"body": bytes(size)}


class Probe:
    """A service whose streams tell the test what they did."""

    def __init__(self) -> None:
        self.yielded = 0
        self.closed = 0
        self.remaining: list[float | None] = []
        self.release: Deferred[None] = Deferred()
        self.taken: list[int] = []

    @exposed
    async def Count(self, n: int) -> AsyncIterator[int]:
        try:
            for i in range(n):
                self.yielded += 1
                yield i
        finally:
            self.closed += 1

    @exposed
    async def Sleepy(self, ctx: CallContext) -> AsyncIterator[int]:
        self.remaining.append(ctx.time_remaining())
        try:
            yield 1
            await deferLater(ctx.clock, 3600)
            yield 2
        finally:
            self.closed += 1

    @exposed
    async def Hold(self, numbers: AsyncIterator[int]) -> int:
        await self.release
        async for n in numbers:
            self.taken.append(n)
        return len(self.taken)

    @exposed
    async def Sum(self, numbers: AsyncIterator[int]) -> int:
        return sum([n async for n in numbers])

    @exposed
    def Squares(self, n: int) -> list[int]:
        return [i * i for i in range(n)]


class StreamTestCase(SynchronousTestCase):
    """Helpers: a client and server connected in memory."""

    def connect(self, *services: Any, limits: Limits = Limits()) -> MemoryConnection:
        conn = MemoryConnection([TestService, *services], limits=limits)
        # Pumping also runs what is due on the shared clock (the server's
        # per-turn write of stream frames).
        return conn

    def drive(self, conn: MemoryConnection, coroutine: Coroutine[Any, Any, Any]) -> Deferred[Any]:
        d = Deferred.fromCoroutine(coroutine)
        conn.flush()
        return d

    def running(self, conn: MemoryConnection) -> dict[Any, Any]:
        return conn.server_protocol.inner.dispatcher.running


async def collect(stream: ClientStream) -> list[Any]:
    return [message async for message in stream]


class InteropTests(StreamTestCase):
    """gRPC's interop cases, adapted."""

    def test_empty_stream(self) -> None:
        """A full-duplex stream half-closed at once ends well with no messages."""
        conn = self.connect()
        stream = conn.client.stream("TestService.FullDuplexCall")
        stream.close_send()
        d = self.drive(conn, collect(stream))
        self.assertEqual(self.successResultOf(d), [])
        self.assertIsNone(self.successResultOf(stream.result()))

    def test_client_streaming(self) -> None:
        """Four payloads in; the server answers with their total size."""
        conn = self.connect()
        stream = conn.client.stream("TestService.StreamingInputCall")

        async def send() -> Any:
            for size in REQUEST_SIZES:
                await stream.send({"payload": payload(size)})
            stream.close_send()
            return await stream.result()
        d = self.drive(conn, send())
        self.assertEqual(self.successResultOf(d), {"aggregated_payload_size": 74922})

    def test_server_streaming(self) -> None:
        """Four payloads out, of the sizes asked for, in order."""
        conn = self.connect()
        stream = conn.client.stream("TestService.StreamingOutputCall", {
            "response_parameters": [{"size": size} for size in RESPONSE_SIZES]})
        d = self.drive(conn, collect(stream))
        sizes = [len(m["payload"]["body"]) for m in self.successResultOf(d)]
        self.assertEqual(sizes, list(RESPONSE_SIZES))

    def test_ping_pong(self) -> None:
        """Four request/response pairs in lockstep: each answer comes before the next request."""
        conn = self.connect()
        stream = conn.client.stream("TestService.FullDuplexCall")
        events: list[str] = []

        async def ping_pong() -> None:
            messages = stream.__aiter__()
            for request, response in zip(REQUEST_SIZES, RESPONSE_SIZES):
                await stream.send({"payload": payload(request),
                                   "response_parameters": [{"size": response}]})
                events.append(f"sent {request}")
                message = await messages.__anext__()
                events.append(f"got {len(message['payload']['body'])}")
            stream.close_send()
            self.assertEqual(await collect(stream), [])
        d = self.drive(conn, ping_pong())
        self.successResultOf(d)
        self.assertEqual(events, [f"{kind} {n}" for pair in zip(REQUEST_SIZES, RESPONSE_SIZES)
                                  for kind, n in zip(("sent", "got"), pair)])

    def test_cancel_after_begin(self) -> None:
        """A client stream cancelled before any message fails with CANCELLED, and its handler ends."""
        conn = self.connect()
        stream = conn.client.stream("TestService.StreamingInputCall")
        conn.flush()
        self.assertEqual(len(self.running(conn)), 1)
        stream.cancel()
        conn.flush()
        self.failureResultOf(stream.result(), Cancelled)
        self.assertEqual(self.running(conn), {})

    def test_cancel_after_first_response(self) -> None:
        """A full-duplex stream cancelled after its first answer fails with CANCELLED."""
        conn = self.connect()
        stream = conn.client.stream("TestService.FullDuplexCall")

        async def first() -> Any:
            await stream.send({"payload": payload(27182), "response_parameters": [{"size": 31415}]})
            return await stream.__anext__()
        d = self.drive(conn, first())
        self.assertEqual(len(self.successResultOf(d)["payload"]["body"]), 31415)
        stream.cancel()
        conn.flush()
        self.failureResultOf(stream.result(), Cancelled)
        self.failureResultOf(stream.__anext__(), Cancelled)
        self.assertEqual(self.running(conn), {})

    def test_timeout_on_sleeping_server(self) -> None:
        """A 1 ms deadline on a stream whose server waits fails with DEADLINE_EXCEEDED on both sides."""
        conn = self.connect()
        stream = conn.client.stream("TestService.FullDuplexCall", timeout=0.001)
        sent = stream.send({"payload": payload(27182)})
        result = stream.result()
        conn.flush()
        self.assertNoResult(result)
        self.successResultOf(sent)
        conn.clock.advance(0.002)
        conn.flush()
        self.failureResultOf(result, DeadlineExceeded)
        self.assertEqual(self.running(conn), {})

    def test_status_code_and_message(self) -> None:
        """A requested status comes back with its code and message, unary and streaming."""
        self.check_status("test status message")

    def test_special_status_message(self) -> None:
        """Whitespace, BMP and non-BMP characters in a status message survive exactly."""
        self.check_status(SPECIAL_MESSAGE)

    def check_status(self, message: str) -> None:
        conn = self.connect()
        status = {"code": 2, "message": message}
        d = conn.client.call("TestService.UnaryCall", {"response_status": status})
        stream = conn.client.stream("TestService.FullDuplexCall")
        stream.send({"response_status": status})
        stream.close_send()
        conn.flush()
        for error in (self.failureResultOf(d, RPCError).value,
                      self.failureResultOf(stream.result(), RPCError).value):
            self.assertEqual((error.code, error.message), (2, message))

    def test_large_unary(self) -> None:
        """271828 bytes in, 314159 bytes out."""
        conn = self.connect()
        d = conn.client.call("TestService.UnaryCall",
                             {"response_size": 314159, "payload": payload(271828)})
        conn.flush()
        self.assertEqual(self.successResultOf(d), {"payload": payload(314159)})

    def test_large_unary_1000_in_parallel(self) -> None:
        """1000 large unary calls in flight at once on one connection all succeed."""
        conn = self.connect()
        calls = [conn.client.call("TestService.UnaryCall",
                                  {"response_size": 314159, "payload": payload(271828)})
                 for _ in range(1000)]
        conn.flush()
        sizes = {len(self.successResultOf(d)["payload"]["body"]) for d in calls}
        self.assertEqual(sizes, {314159})

    def test_unimplemented_method_and_service(self) -> None:
        """A stream to an unknown method or service fails with UNIMPLEMENTED, naming it."""
        conn = self.connect()
        method = conn.client.stream("TestService.UnimplementedCall")
        service = conn.client.stream("UnimplementedService.UnimplementedCall")
        unary = conn.client.call("TestService.UnimplementedCall")
        conn.flush()
        self.assertIn("can't find method TestService.UnimplementedCall",
                      self.failureResultOf(method.result(), Unimplemented).value.message)
        self.assertIn("can't find service UnimplementedService",
                      self.failureResultOf(service.result(), Unimplemented).value.message)
        self.failureResultOf(unary, Unimplemented)


class FlowControlTests(StreamTestCase):
    """Credit windows and the transport's producer machinery."""

    def test_server_stops_at_window(self) -> None:
        """A generator is not advanced beyond the client's window until the client takes messages."""
        probe = Probe()
        conn = self.connect(probe)
        stream = conn.client.stream("Probe.Count", 100, window=4)
        conn.flush()
        self.assertEqual(probe.yielded, 4)
        d = self.drive(conn, _take(stream, 2))
        self.assertEqual(self.successResultOf(d), [0, 1])
        self.assertEqual(probe.yielded, 6)
        d = self.drive(conn, collect(stream))
        self.assertEqual(self.successResultOf(d), list(range(2, 100)))
        self.assertEqual((probe.yielded, probe.closed), (100, 1))

    def test_iteration_wakes_once_per_read(self) -> None:
        """A waiting iteration resumes after the read, with that read's other messages queued."""
        conn = self.connect()
        stream = conn.client.stream("TestService.StreamingOutputCall", {
            "response_parameters": [{"size": 1}, {"size": 2}, {"size": 3}]})
        seen: list[Any] = []

        def first(message: Any) -> None:
            following = stream.__anext__()
            seen.append((len(message["payload"]["body"]), following.called))
        stream.__anext__().addCallback(first)
        conn.flush()
        self.assertEqual(seen, [(1, True)])

    def test_send_waits_for_credit(self) -> None:
        """A client's send beyond the server's grant waits until the handler takes messages."""
        probe = Probe()
        conn = self.connect(probe)
        stream = conn.client.stream("Probe.Hold")
        conn.flush()
        sends = [stream.send(i) for i in range(300)]
        conn.flush()
        self.assertTrue(all(d.called for d in sends[:256]))
        self.assertFalse(any(d.called for d in sends[256:]))
        stream.close_send()
        probe.release.callback(None)
        conn.flush()
        self.assertTrue(all(d.called for d in sends))
        self.assertEqual(self.successResultOf(stream.result()), 300)
        self.assertEqual(probe.taken, list(range(300)))

    def test_message_beyond_credit_is_goaway(self) -> None:
        """A client that sends beyond its credit gets GOAWAY and its connection is closed."""
        conn = self.connect(Probe())
        stream = conn.client.stream("Probe.Sleepy")
        conn.flush()
        conn.channel.transport.write(encode_frame([MESSAGE, stream.call_id, 1]))
        pending = conn.client.call("Probe.Squares", 3)
        conn.flush()
        error = self.failureResultOf(pending, Unavailable).value
        self.assertIn("beyond the granted credit", error.message)
        self.assertIsNotNone(conn.channel.lost_reason)

    def test_server_beyond_window_closes_client(self) -> None:
        """A server that sends beyond the client's window is a protocol error for the client."""
        conn = self.connect(Probe())
        stream = conn.client.stream("Probe.Count", 0, window=1)
        conn.channel.dataReceived(encode_frame([MESSAGE, stream.call_id, 1]) * 2)
        conn.flush()
        self.failureResultOf(stream.result(), Unavailable)
        self.assertIsNotNone(conn.channel.lost_reason)

    def test_receive_window_batches_credit(self) -> None:
        """Credit goes back half a window at a time."""
        window = ReceiveWindow(8, 8)
        granted = [window.consumed() for _ in range(8)]
        self.assertEqual(granted, [0, 0, 0, 4, 0, 0, 0, 4])

    def test_transport_pause_stops_generator(self) -> None:
        """While the transport is paused a new stream's CALL is held (its generator does not start); on resume it runs to the end."""
        probe = Probe()
        conn = self.connect(probe)
        stream = conn.client.stream("Probe.Count", 0)
        conn.flush()
        streams = conn.server_protocol.inner._streams
        streams.pauseProducing()
        stream = conn.client.stream("Probe.Count", 10)
        conn.flush()
        self.assertEqual(probe.yielded, 0)
        streams.resumeProducing()
        d = self.drive(conn, collect(stream))
        self.assertEqual(self.successResultOf(d), list(range(10)))

    def test_pauses_reach_the_read_throttle(self) -> None:
        """The server's read throttle still hears pauses and resumes once streams take the producer slot."""
        conn = self.connect(Probe())
        throttle = conn.server_protocol.throttle
        conn.client.stream("Probe.Count", 0)
        conn.flush()
        streams = conn.server_protocol.inner._streams
        self.assertIs(conn.server_protocol.transport.producer, streams)
        streams.pauseProducing()
        self.assertTrue(throttle.paused)
        streams.resumeProducing()
        self.assertFalse(throttle.paused)

    def test_consumer_pauses_stream(self) -> None:
        """A consumer that pauses the stream stops the server's generator at the window."""
        probe = Probe()
        conn = self.connect(probe)
        consumer = _Consumer()
        stream = conn.client.stream("Probe.Count", 100, window=10)
        done = stream.deliver_to(consumer)
        consumer.producer.pauseProducing()
        conn.flush()
        self.assertEqual((len(consumer.written), probe.yielded), (0, 10))
        consumer.producer.resumeProducing()
        conn.flush()
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(consumer.written, list(range(100)))
        self.assertIsNone(consumer.producer)


class EndingTests(StreamTestCase):
    """How streams end: cancel, deadline, lost connection, limits, errors."""

    def test_cancel_runs_finally(self) -> None:
        """Cancelling a server stream closes its generator, so its finally block runs."""
        probe = Probe()
        conn = self.connect(probe)
        stream = conn.client.stream("Probe.Count", 1000, window=2)
        conn.flush()
        self.assertEqual(probe.closed, 0)
        stream.cancel()
        conn.flush()
        self.assertEqual((probe.closed, probe.yielded), (1, 2))
        self.assertEqual(self.running(conn), {})

    def test_deadline(self) -> None:
        """The handler sees its time left; at the deadline it is stopped and the client gets DEADLINE_EXCEEDED."""
        probe = Probe()
        conn = self.connect(probe)
        stream = conn.client.stream("Probe.Sleepy", timeout=5)
        conn.flush()
        self.assertEqual(probe.remaining, [5.0])
        self.assertEqual(self.successResultOf(stream.__anext__()), 1)
        conn.clock.advance(5)
        conn.flush()
        self.failureResultOf(stream.result(), DeadlineExceeded)
        self.assertEqual(probe.closed, 1)
        self.assertEqual(self.running(conn), {})

    def test_connection_loss_stops_handler(self) -> None:
        """When the connection drops, a streaming handler is cancelled and its finally block runs."""
        probe = Probe()
        conn = self.connect(probe)
        stream = conn.client.stream("Probe.Sleepy")
        conn.flush()
        conn.disconnect()
        self.assertEqual(probe.closed, 1)
        self.failureResultOf(stream.result(), Unavailable)

    def test_streams_count_against_max_calls(self) -> None:
        """Open streams count as running calls: past the limit a stream fails with RESOURCE_EXHAUSTED."""
        conn = self.connect(Probe(), limits=Limits(max_calls_per_connection=2))
        streams = [conn.client.stream("Probe.Sleepy") for _ in range(3)]
        conn.flush()
        self.assertNoResult(streams[0].result())
        self.assertNoResult(streams[1].result())
        self.failureResultOf(streams[2].result(), ResourceExhausted)

    def test_unary_call_to_stream_method(self) -> None:
        """A unary call to a streaming method fails with FAILED_PRECONDITION saying to open a stream."""
        conn = self.connect()
        d = conn.client.call("TestService.StreamingOutputCall", {})
        conn.flush()
        error = self.failureResultOf(d, RPCError).value
        self.assertEqual(error.code, Code.FAILED_PRECONDITION)
        self.assertIn("server-streaming method", error.message)

    def test_unary_method_as_stream(self) -> None:
        """A unary method opened as a stream ends with its result and no messages."""
        conn = self.connect(Probe())
        stream = conn.client.stream("Probe.Squares", 3)
        d = self.drive(conn, collect(stream))
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(self.successResultOf(stream.result()), [0, 1, 4])

    def test_bad_message_is_invalid_argument(self) -> None:
        """A client message that does not fit the annotation fails the stream with INVALID_ARGUMENT."""
        conn = self.connect(Probe())
        stream = conn.client.stream("Probe.Sum")
        conn.flush()
        stream.send(1)
        stream.send("two")
        stream.close_send()
        conn.flush()
        self.assertIn("message", self.failureResultOf(stream.result(), InvalidArgument).value.message)

    def test_sync_iterable_and_client_sum(self) -> None:
        """A client stream's handler sees every message and its return value ends the stream."""
        conn = self.connect(Probe())
        stream = conn.client.stream("Probe.Sum")
        conn.flush()
        for n in range(10):
            stream.send(n)
        stream.close_send()
        conn.flush()
        self.assertEqual(self.successResultOf(stream.result()), 45)

    def test_send_after_end_fails(self) -> None:
        """Sending after close_send, or after the stream ended, fails."""
        conn = self.connect(Probe())
        stream = conn.client.stream("Probe.Sum")
        conn.flush()
        stream.close_send()
        self.failureResultOf(stream.send(1), RPCError)
        conn.flush()
        self.assertEqual(self.successResultOf(stream.result()), 0)
        self.failureResultOf(stream.send(1), RPCError)

    def test_bad_window_option(self) -> None:
        """A CALL with a window that is not a positive integer fails with INVALID_ARGUMENT."""
        conn = self.connect(Probe())
        call_id = 99
        done: Deferred[Any] = Deferred()
        conn.channel.pending[call_id] = done
        conn.channel.transport.write(encode_frame([CALL, call_id, "Probe.Count", 1,
                                                   {"stream": True, "window": 0}]))
        conn.flush()
        self.assertIn("window", self.failureResultOf(done, InvalidArgument).value.message)


class WatchPrefixTests(StreamTestCase):
    """KVStoreService.WatchPrefix."""

    def test_changes_under_prefix(self) -> None:
        """Every change under the prefix is streamed in order; others are not; cancel removes the watcher."""
        store = KVStoreService()
        conn = self.connect(store)
        stream = conn.client.stream("KVStoreService.WatchPrefix", "app/")
        conn.flush()
        for key, value in [("app/a", "1"), ("other", "2"), ("app/b", "3"), ("app/a", "1"),
                           ("app/a", "4")]:
            conn.client.call("KVStoreService.Set", [key, value])
        conn.flush()
        d = self.drive(conn, _take(stream, 3))
        self.assertEqual(self.successResultOf(d), [["app/a", "1"], ["app/b", "3"], ["app/a", "4"]])
        self.assertEqual(len(store.prefix_watchers), 1)
        stream.cancel()
        conn.flush()
        self.assertEqual(store.prefix_watchers, set())

    def test_slow_reader_overflow(self) -> None:
        """A watch that falls more than its backlog behind fails with RESOURCE_EXHAUSTED."""
        store = KVStoreService(max_watch_backlog=2)
        conn = self.connect(store)
        stream = conn.client.stream("KVStoreService.WatchPrefix", "", window=1)
        conn.flush()
        for n in range(5):
            store.Set((f"k{n}", "v"))
        d = self.drive(conn, collect(stream))
        self.failureResultOf(d, ResourceExhausted)


async def _take(stream: ClientStream, n: int) -> list[Any]:
    messages = stream.__aiter__()
    return [await messages.__anext__() for _ in range(n)]


class _Consumer:
    """An IConsumer that records what it is given."""

    def __init__(self) -> None:
        self.written: list[Any] = []
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: Any) -> None:
        self.written.append(data)
