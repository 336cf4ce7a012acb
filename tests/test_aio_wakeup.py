"""
Tests for how L{rpcd.client.aio} wakes a task awaiting a call: a result read
from the socket runs the awaiting task's step at once, in that read, instead
of through C{loop.call_soon}.  Each test checks one of asyncio's promises the
shortcut must keep (the running task, its context, cancellation, timeouts,
errors, the futures' helpers, a connection closed in the middle of a read),
through the fake transport of L{tests.test_aio}, and end to end against the
real daemon.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import textwrap
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase, TestCase

from rpcd.client import aio
from rpcd.errors import ConnectionLost
from rpcd.wire.connection import CALL, CANCEL, RESULT, NativeConnection
from tests.daemon import Daemon, run, temp_dir
from tests.test_aio import FakeServer, fake_client, turn
from tests.tools import missing

_var: contextvars.ContextVar[Any] = contextvars.ContextVar("_var", default="unset")


async def connected() -> tuple[aio.Client, FakeServer, list[Any]]:
    """
    @return: a client connected to a fake server, and the list the loop's
        exception handler appends what it is given to.
    """
    loop = asyncio.get_running_loop()
    errors: list[Any] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    client = fake_client()
    await client.connection()
    return client, client.endpoint.servers[0], errors  # type: ignore[attr-defined]


def answer(server: FakeServer, value: Any = None) -> None:
    """
    Queue a result for every call the server has not answered yet: its
    argument times ten, or C{value}.
    """
    answered = server.__dict__.setdefault("answered", set())
    for call in server.calls():
        if call[1] not in answered:
            answered.add(call[1])
            server.conn.send_result(call[1], call[3] * 10 if value is None else value)


async def read_from_loop(server: FakeServer, after: Any = None) -> None:
    """
    Deliver what the server queued from a callback of the loop, as a socket
    read arrives (outside any task), then C{after()} in the same callback;
    return once that callback has run.
    """
    loop = asyncio.get_running_loop()
    ran = loop.create_future()

    def read() -> None:
        try:
            server.reply()
            if after is not None:
                after()
        finally:
            ran.set_result(None)
    loop.call_soon(read)
    await ran


class DirectWakeupTests(SynchronousTestCase):
    """A result read outside any task runs the awaiting task's step at once."""

    def test_tasks_run_in_the_read(self) -> None:
        """The tasks a read answers run, in the order of the results, before the read returns."""
        async def main() -> list[Any]:
            client, server, errors = await connected()
            log: list[Any] = []

            async def caller(n: int) -> None:
                log.append(("woken", n, await client.call("A.B", n)))
            tasks = [asyncio.ensure_future(caller(n)) for n in range(3)]
            await turn()
            answer(server)
            await read_from_loop(server, lambda: log.append("read returned"))
            await asyncio.gather(*tasks)
            self.assertEqual(errors, [])
            return log
        self.assertEqual(asyncio.run(main()), [("woken", 0, 0), ("woken", 1, 10),
                                               ("woken", 2, 20), "read returned"])

    def test_result_with_more_fields(self) -> None:
        """A RESULT that is not plain (a later version's extra field) also runs its task in the read."""
        async def main() -> list[Any]:
            client, server, _ = await connected()
            log: list[Any] = []

            async def caller() -> None:
                log.append(await client.call("A.B", 1))
            task = asyncio.ensure_future(caller())
            await turn()
            [call] = server.calls()
            server.conn._queue([RESULT, call[1], 56, "a later field"])
            await read_from_loop(server, lambda: log.append("read returned"))
            await task
            return log
        self.assertEqual(asyncio.run(main()), [56, "read returned"])

    def test_current_task(self) -> None:
        """Inside the step a result runs, asyncio.current_task() is the awaiting task; after it, none."""
        async def main() -> list[bool]:
            client, server, _ = await connected()
            seen: list[bool] = []

            async def caller() -> None:
                me = asyncio.current_task()
                await client.call("A.B", 1)
                seen.append(asyncio.current_task() is me and me is not None)
            tasks = [asyncio.ensure_future(caller()) for _ in range(2)]
            await turn()
            answer(server)
            await read_from_loop(server, lambda: seen.append(asyncio.current_task() is None))
            await asyncio.gather(*tasks)
            return seen
        self.assertEqual(asyncio.run(main()), [True, True, True])

    def test_context(self) -> None:
        """Each task resumes in its own context, and what it sets there stays there."""
        async def main() -> list[Any]:
            client, server, _ = await connected()
            seen: list[Any] = []

            async def caller(n: int) -> None:
                _var.set(n)
                await client.call("A.B", n)
                seen.append(_var.get())
                _var.set("changed by the task")
            tasks = [asyncio.ensure_future(caller(n)) for n in range(2)]
            await turn()
            answer(server)
            await read_from_loop(server, lambda: seen.append(_var.get()))
            await asyncio.gather(*tasks)
            return seen
        self.assertEqual(asyncio.run(main()), [0, 1, "unset"])

    def test_next_calls_in_the_reads_write(self) -> None:
        """The calls the woken tasks make go out in one write, before the read returns."""
        async def main() -> None:
            client, server, _ = await connected()
            writes: list[bytes] = []
            assert server.transport is not None
            write = server.transport.write

            def counted(data: Any) -> None:
                writes.append(bytes(data))
                write(data)
            server.transport.write = counted  # type: ignore[method-assign]

            async def twice(n: int) -> Any:
                await client.call("A.B", n)
                return await client.call("A.B", n + 100)
            tasks = [asyncio.ensure_future(twice(n)) for n in range(3)]
            await turn()
            self.assertEqual(len(writes), 1)
            answer(server)
            counts: list[int] = []
            await read_from_loop(server, lambda: counts.append(len(writes)))
            self.assertEqual(counts, [2])
            self.assertEqual([c[3] for c in server.calls()[3:]], [100, 101, 102])
            answer(server)
            await read_from_loop(server)
            self.assertEqual(await asyncio.gather(*tasks), [1000, 1010, 1020])
        asyncio.run(main())

    def test_inside_a_task_scheduled(self) -> None:
        """A read delivered inside a task schedules the woken tasks, which run after it."""
        async def main() -> list[Any]:
            client, server, _ = await connected()
            log: list[Any] = []

            async def caller() -> None:
                log.append(await client.call("A.B", 1))
            task = asyncio.ensure_future(caller())
            await turn()
            answer(server)
            server.reply()  # in this task
            log.append("read returned")
            await task
            return log
        self.assertEqual(asyncio.run(main()), ["read returned", 10])

    def test_debug_loop_scheduled(self) -> None:
        """On a loop in debug mode the woken tasks run as callbacks of their own, after the read (so a slow one is named in asyncio's warning)."""
        async def main() -> list[Any]:
            client, server, _ = await connected()
            log: list[Any] = []

            async def caller() -> None:
                log.append(await client.call("A.B", 1))
            task = asyncio.ensure_future(caller())
            await turn()
            answer(server)
            await read_from_loop(server, lambda: log.append("read returned"))
            await task
            return log
        self.assertEqual(asyncio.run(main(), debug=True), ["read returned", 10])

    def test_task_raises(self) -> None:
        """A woken task that raises fails alone: the read goes on to the next result."""
        async def main() -> None:
            client, server, errors = await connected()

            async def failing() -> None:
                await client.call("A.B", 1)
                raise ValueError("the caller's own bug")
            tasks = [asyncio.ensure_future(failing()),
                     asyncio.ensure_future(client.call("A.B", 2))]
            await turn()
            answer(server)
            await read_from_loop(server)
            first, second = await asyncio.gather(*tasks, return_exceptions=True)
            self.assertIsInstance(first, ValueError)
            self.assertEqual(second, 20)
            self.assertEqual(errors, [])
        asyncio.run(main())

    def test_context_entered(self) -> None:
        """A read that runs in the awaiting task's own context wakes it through the loop instead."""
        async def main() -> list[Any]:
            client, server, errors = await connected()
            loop = asyncio.get_running_loop()
            log: list[Any] = []
            context = contextvars.copy_context()

            async def caller() -> None:
                log.append(await client.call("A.B", 1))
            loop.create_task(caller(), context=context)
            await turn()
            answer(server)
            ran = loop.create_future()

            def read() -> None:
                server.reply()
                log.append("read returned")
                ran.set_result(None)
            loop.call_soon(context.run, read)
            await ran
            await turn()
            self.assertEqual(errors, [])
            return log
        # Not asyncio.run: a task left waiting would hang its shutdown.
        loop = asyncio.new_event_loop()
        try:
            self.assertEqual(loop.run_until_complete(main()), ["read returned", 10])
        finally:
            loop.close()

    def test_task_interrupted(self) -> None:
        """A woken task raising KeyboardInterrupt ends the read with it, after the rest are answered."""
        async def main() -> None:
            client, server, _ = await connected()

            async def interrupted() -> None:
                await client.call("A.B", 1)
                raise KeyboardInterrupt()
            first = asyncio.ensure_future(interrupted())
            second = asyncio.ensure_future(client.call("A.B", 2))
            await turn()
            answer(server)
            caught: list[BaseException] = []

            def read() -> None:
                try:
                    server.reply()
                except KeyboardInterrupt as e:
                    caught.append(e)
            asyncio.get_running_loop().call_soon(read)
            self.assertEqual(await second, 20)
            self.assertEqual(len(caught), 1)
            self.assertIsInstance(first.exception(), KeyboardInterrupt)
        asyncio.run(main())

    def test_task_cancels_another(self) -> None:
        """A woken task may cancel another of the same read: that one is cancelled, nothing logged."""
        async def main() -> None:
            client, server, errors = await connected()

            async def canceller() -> Any:
                value = await client.call("A.B", 1)
                second.cancel()
                return value
            first = asyncio.ensure_future(canceller())
            second = asyncio.ensure_future(client.call("A.B", 2))
            await turn()
            second_id = server.calls()[1][1]
            answer(server)
            await read_from_loop(server)
            self.assertEqual(await first, 10)
            with self.assertRaises(asyncio.CancelledError):
                await second
            await turn()
            # Its result had come: nothing to cancel on the server.
            self.assertNotIn([CANCEL, second_id], [list(e) for e in server.events])
            self.assertEqual(errors, [])
        asyncio.run(main())

    def test_cancelled_before_the_read(self) -> None:
        """A task cancelled before its result is read raises CancelledError; the result is dropped."""
        async def main() -> None:
            client, server, errors = await connected()
            task = asyncio.ensure_future(client.call("A.B", 1))
            other = asyncio.ensure_future(client.call("A.B", 2))
            await turn()
            answer(server)
            task.cancel()
            await read_from_loop(server)
            with self.assertRaises(asyncio.CancelledError):
                await task
            self.assertEqual(await other, 20)
            self.assertEqual(errors, [])
        asyncio.run(main())

    def test_task_closes_the_connection(self) -> None:
        """A woken task that closes the client fails the read's other calls with ConnectionLost."""
        async def main() -> None:
            client, server, errors = await connected()
            assert server.transport is not None
            transport = server.transport

            def close_now() -> None:  # a transport that reports the loss at once
                if not transport.closed:
                    transport.closed = True
                    transport.protocol.connection_lost(None)
            transport.close = close_now  # type: ignore[method-assign]

            async def closer() -> Any:
                value = await client.call("A.B", 1)
                await client.close()
                return value
            tasks = [asyncio.ensure_future(closer()),
                     asyncio.ensure_future(client.call("A.B", 2)),
                     asyncio.ensure_future(client.call("A.B", 3))]
            await turn()
            answer(server)
            await read_from_loop(server)
            first, *rest = await asyncio.gather(*tasks, return_exceptions=True)
            self.assertEqual(first, 10)
            self.assertEqual([type(e) for e in rest], [ConnectionLost, ConnectionLost])
            self.assertEqual(errors, [])
        asyncio.run(main())

    def test_read_reentered_by_close(self) -> None:
        """A woken task closing a transport that hands over what it still holds at once (asyncio's TLS transport does) gets that read after the one it is in: a stream's messages keep their order."""
        async def main() -> list[Any]:
            client, server, errors = await connected()
            assert server.transport is not None
            transport = server.transport
            held: list[bytes] = []
            close = transport.close

            def close_reading() -> None:  # as asyncio's TLS transport: a last read, then close
                while held:
                    transport.protocol.data_received(held.pop(0))
                close()
            transport.close = close_reading  # type: ignore[method-assign]
            stream = client.stream("Counter.Count", 10)
            got: list[Any] = []

            async def consume() -> None:
                async for message in stream:
                    got.append(message)
            consumer = asyncio.ensure_future(consume())
            await turn()

            async def closer() -> None:
                await client.call("A.B", 1)
                await client.close()
            task = asyncio.ensure_future(closer())
            await turn()
            stream_id, call_id = (call[1] for call in server.calls())
            server.conn.send_result(call_id, 10)
            server.conn.send_message(stream_id, "a")
            first = server.conn.data_to_send()
            server.conn.send_message(stream_id, "b")
            held.append(server.conn.data_to_send())
            loop = asyncio.get_running_loop()
            loop.call_soon(transport.protocol.data_received, first)
            await task
            with self.assertRaises(ConnectionLost):
                await consumer
            self.assertEqual(errors, [])
            return got
        self.assertEqual(asyncio.run(main()), ["a", "b"])

    def test_futures_helpers(self) -> None:
        """wait_for, shield, wait, gather and timeout() around calls answered in a read."""
        async def main() -> list[Any]:
            client, server, errors = await connected()

            async def with_timeout() -> Any:
                async with asyncio.timeout(60):
                    return await client.call("A.B", 5)
            waited = asyncio.ensure_future(asyncio.wait([asyncio.ensure_future(
                client.call("A.B", 3))]))
            tasks = [asyncio.ensure_future(asyncio.wait_for(client.call("A.B", 1), 60)),
                     asyncio.ensure_future(asyncio.shield(client.call("A.B", 2))),
                     asyncio.ensure_future(asyncio.gather(client.call("A.B", 4),
                                                          with_timeout())),
                     asyncio.ensure_future(client.call("A.B", 6, timeout=60))]
            await turn()
            answer(server)
            await read_from_loop(server)
            done, _ = await waited
            self.assertEqual(errors, [])
            return [await t for t in tasks] + [t.result() for t in done]
        self.assertEqual(asyncio.run(main()), [10, 20, [40, 50], 60, 30])

    def test_wait_for_timeout(self) -> None:
        """A wait_for that times out cancels the call on the server; a later result is dropped."""
        async def main() -> None:
            client, server, errors = await connected()
            with self.assertRaises(TimeoutError):
                await asyncio.wait_for(client.call("KV.Watch", 1), 0.01)
            [call] = server.calls()
            self.assertIn([CANCEL, call[1]], [list(e) for e in server.events])
            answer(server)
            await read_from_loop(server)
            self.assertEqual(errors, [])
        asyncio.run(main())


class _Answering(asyncio.Protocol):
    """A native server that answers every call with its argument times ten."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.conn = NativeConnection(client_side=False)
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if event[0] == CALL:
                self.conn.send_result(event[1], event[3] * 10)
        self.transport.write(self.conn.data_to_send())


class UvloopInterruptTests(SynchronousTestCase):
    """On uvloop, a woken task's SystemExit leaves the loop as it would from a callback of its own."""

    def test_system_exit(self) -> None:
        """A task woken in a read on uvloop that raises SystemExit stops the loop with it, with no fatal transport error reported and the connection left open."""
        try:
            import uvloop
        except ImportError:
            missing("uvloop is not installed (pip install uvloop)")
        loop = uvloop.new_event_loop()
        self.addCleanup(loop.close)
        errors: list[Any] = []
        loop.set_exception_handler(lambda _, context: errors.append(context))
        held: list[Any] = []

        async def main() -> None:
            server = await loop.create_server(_Answering, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            client = await aio.connect(f"tcp:127.0.0.1:{port}")
            held.extend([server, client])

            async def exits() -> None:
                await client.call("A.B", 1)
                raise SystemExit(3)
            await asyncio.ensure_future(exits())

        with self.assertRaises(SystemExit):
            loop.run_until_complete(main())
        server, client = held
        connection = client._current
        assert connection is not None
        self.assertEqual((errors, connection.lost), ([], None))
        # The connection still works once the loop runs again.
        self.assertEqual(loop.run_until_complete(client.call("A.B", 4)), 40)
        loop.run_until_complete(client.close())
        server.close()
        loop.run_until_complete(server.wait_closed())


SCRIPT = textwrap.dedent("""
    import asyncio, contextvars, sys
    from rpcd.client import aio
    from rpcd.errors import ConnectionLost

    var = contextvars.ContextVar("var")

    def in_the_read():
        frame = sys._getframe()
        while frame is not None and frame.f_code.co_name != "data_received":
            frame = frame.f_back
        return frame is not None

    async def caller(client, k, bad):
        me = asyncio.current_task()
        for i in range(50):
            var.set((k, i))
            value = await client.call("Arith.Multiply", {"A": k, "B": i})
            if (value != k * i or asyncio.current_task() is not me or var.get() != (k, i)
                    or not in_the_read()):
                bad.append((k, i, value))

    async def main():
        errors = []
        asyncio.get_running_loop().set_exception_handler(lambda _, c: errors.append(c))
        client = await aio.connect(sys.argv[1])
        bad = []
        await asyncio.gather(*(caller(client, k, bad) for k in range(64)))
        watch = asyncio.ensure_future(client.call("KVStoreService.Watch", 30))
        for _ in range(2):  # the task sends its call, the turn's write goes out
            await asyncio.sleep(0)
        watch.cancel()
        try:
            await watch
        except asyncio.CancelledError:
            pass
        after = await client.call("Arith.Multiply", {"A": 6, "B": 7})
        # A task woken by its result closes the client while others wait.
        async def closer():
            value = await client.call("Arith.Multiply", {"A": 2, "B": 3})
            await client.close()
            return value
        outcomes = await asyncio.gather(
            closer(), *(client.call("KVStoreService.Watch", 30) for _ in range(3)),
            return_exceptions=True)
        lost = sum(isinstance(o, ConnectionLost) for o in outcomes[1:])
        return [len(bad), watch.cancelled(), after, outcomes[0], lost, len(errors)]

    run = asyncio.run
    if sys.argv[2:] == ["uvloop"]:
        import uvloop
        run = uvloop.run
    print(run(main()), flush=True)
""")


class CanaryTests(SynchronousTestCase):
    """The private names of asyncio the direct wakeup reads are there."""

    def test_private_names(self) -> None:
        """This Python's Future has _callbacks and its Task _fut_waiter (else every result would wake through the loop)."""
        self.assertTrue(aio._CAN_WAKE)
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        future = loop.create_future()
        future.add_done_callback(print)
        self.assertEqual([callback for callback, _ in future._callbacks], [print])


class EndToEndTests(TestCase):
    """Direct wakeups against the real daemon over loopback."""

    async def run_script(self, *options: str) -> None:
        daemon = await Daemon.start(self, "--listen", "tcp:0:interface=127.0.0.1", "--service",
                                    "KVStoreService", "--service", "Arith")
        script = Path(temp_dir(self)) / "aio_wakeup.py"
        script.write_text(SCRIPT)
        code, out, err = await run(self, [sys.executable, str(script),
                                          f"tcp:127.0.0.1:{daemon.port}", *options])
        self.assertEqual((code, err), (0, ""), out)
        self.assertEqual(out.strip(), "[0, True, 42, 6, 3, 0]")

    async def test_many_tasks(self) -> None:
        """64 tasks, each resumed in the read, see their own result, task and context; cancel and close work."""
        await self.run_script()

    async def test_many_tasks_uvloop(self) -> None:
        """The same on uvloop's event loop, whose futures are asyncio's too."""
        try:
            import uvloop  # noqa: F401
        except ImportError:
            missing("uvloop is not installed (pip install uvloop)")
        await self.run_script("uvloop")
