"""
Tests that per-connection and per-process tables do not grow with calls and
streams that were cancelled or timed out (handlers that swallow their
cancellation included), that a stream's unawaited sends log nothing when it
ends, and that the gob server's type cache lets specs go.
"""

from __future__ import annotations

import gc
from typing import AsyncIterator

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from rpcd.errors import Cancelled, DeadlineExceeded
from rpcd.service import ServiceRegistry, exposed
from rpcd.testing import MemoryConnection
from rpcd.wire import gobserver

COUNT = 300


class Stubborn:
    """Handlers that swallow their cancellation."""

    @exposed
    async def Swallow(self, n: int) -> int:
        """Wait forever; answer -1 when cancelled."""
        try:
            await Deferred()
        except CancelledError:
            return -1
        return n

    @exposed
    async def Chatter(self, n: int) -> AsyncIterator[int]:
        """Send one message, then wait forever; end quietly when cancelled."""
        yield n
        try:
            await Deferred()
        except CancelledError:
            return

    @exposed
    async def Ignore(self, values: AsyncIterator[int]) -> int:
        """Read nothing, wait forever."""
        await Deferred()
        return 0

    @exposed
    async def Drain(self, values: AsyncIterator[int]) -> int:
        """Take messages until cancelled, then answer how many."""
        taken = 0
        try:
            async for _ in values:
                taken += 1
        except CancelledError:
            pass
        return taken


class TableTests(SynchronousTestCase):
    """Tables counted after many cancelled and timed-out calls and streams."""

    def assert_empty(self, conn: MemoryConnection) -> None:
        dispatcher = conn.server_protocol.inner.dispatcher
        streams = conn.server_protocol.inner._streams
        client_streams = conn.channel.streams
        self.assertEqual(
            (len(dispatcher.running), len(dispatcher._cancelled), len(conn.channel.pending),
             len(streams.streams) if streams is not None else 0,
             len(client_streams.streams) if client_streams is not None else 0),
            (0, 0, 0, 0, 0))

    def test_timed_out_calls(self) -> None:
        """Calls whose deadline passed, on handlers that swallow the cancellation, leave no entry on either side."""
        conn = MemoryConnection([Stubborn])
        calls = [conn.client.call("Stubborn.Swallow", n, timeout=1) for n in range(COUNT)]
        conn.flush()
        conn.clock.advance(1)
        conn.flush()
        for d in calls:
            self.failureResultOf(d, DeadlineExceeded)
        self.assert_empty(conn)

    def test_cancelled_calls(self) -> None:
        """Calls the client cancelled, on handlers that swallow the cancellation, leave no entry on either side."""
        conn = MemoryConnection([Stubborn])
        calls = [conn.client.call("Stubborn.Swallow", n) for n in range(COUNT)]
        conn.flush()
        for d in calls:
            d.cancel()
        conn.flush()
        for d in calls:
            self.failureResultOf(d, CancelledError)
        self.assert_empty(conn)

    def test_cancelled_and_timed_out_streams(self) -> None:
        """Server and client streams cancelled or timed out, on handlers that swallow the cancellation, leave no entry on either side."""
        conn = MemoryConnection([Stubborn])
        cancelled = []
        for n in range(COUNT):
            cancelled.append(conn.client.stream("Stubborn.Chatter", n))
            drain = conn.client.stream("Stubborn.Drain")
            drain.send(n)
            cancelled.append(drain)
        expiring = [conn.client.stream("Stubborn.Chatter", n, timeout=1) for n in range(COUNT)]
        conn.flush()
        for stream in cancelled:
            stream.cancel()
        conn.clock.advance(1)
        conn.flush()
        for stream in cancelled:
            self.failureResultOf(stream.result(), Cancelled)
        for stream in expiring:
            self.failureResultOf(stream.result(), DeadlineExceeded)
        self.assert_empty(conn)


class UnawaitedSendTests(SynchronousTestCase):
    """A client stream's sends that nobody awaits."""

    def test_no_unhandled_error_log(self) -> None:
        """Sends still waiting for credit when the stream is cancelled log no "Unhandled error in Deferred", and one awaited later still fails."""
        conn = MemoryConnection([Stubborn])
        stream = conn.client.stream("Stubborn.Ignore")
        sends = [stream.send(n) for n in range(1000)]
        conn.flush()
        stream.cancel()
        conn.flush()
        last = sends.pop()
        del sends, stream
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])
        self.failureResultOf(last, Cancelled)


class GobTypeCacheTests(SynchronousTestCase):
    """The gob server's cache of method types."""

    def test_specs_are_not_kept_alive(self) -> None:
        """The cache entry of a method spec goes when the spec does."""
        gc.collect()
        before = len(gobserver._TYPES)

        def one() -> None:
            class Fresh:
                @exposed
                def Get(self, n: int) -> int:
                    return n
            registry = ServiceRegistry()
            registry.add(Fresh)
            spec = registry.method_spec("Fresh.Get")
            assert spec is not None
            self.assertIs(gobserver.method_types(spec), gobserver.method_types(spec))
        for _ in range(50):
            one()
        gc.collect()
        self.assertEqual(len(gobserver._TYPES), before)

    def test_cached_types(self) -> None:
        """A live spec's types are worked out once."""
        registry = ServiceRegistry()
        registry.add(Stubborn)
        spec = registry.method_spec("Stubborn.Swallow")
        assert spec is not None
        types = gobserver.method_types(spec)
        self.assertIs(gobserver.method_types(spec), types)
        self.assertIs(types.spec(), spec)
