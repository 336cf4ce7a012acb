"""
Tests for L{rpcd.client.aio}, the asyncio client: its logic against a
server-side L{NativeConnection} through a fake transport (no sockets), and
end to end against the real daemon from a plain C{asyncio.run()} script.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase, TestCase

from rpcd.certs import create_dev_pki
from rpcd.client import aio
from rpcd.errors import (
    Cancelled,
    ConnectionLost,
    DeadlineExceeded,
    EncodeError,
    NotFound,
    RPCError,
    Unavailable,
)
from rpcd.wire.connection import (
    CALL,
    CANCEL,
    CREDIT,
    END,
    MESSAGE,
    PONG,
    RESULT,
    NativeConnection,
)
from tests.daemon import Daemon, run, temp_dir
from tests.tools import missing


class FakeTransport(asyncio.Transport):
    """Hands what the client writes to a server-side connection."""

    def __init__(self, server: FakeServer, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.server = server
        self.protocol = protocol
        self.closed = False

    def write(self, data: Any) -> None:
        self.server.events.extend(self.server.conn.receive_data(bytes(data)))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class FakeServer:
    """One connection's server side: its events, and replies sent back."""

    def __init__(self) -> None:
        self.conn = NativeConnection(client_side=False)
        self.events: list[Any] = []
        self.protocol: Any = None
        self.transport: FakeTransport | None = None

    def calls(self) -> list[Any]:
        return [e for e in self.events if e[0] == CALL]

    def reply(self) -> None:
        self.protocol.data_received(self.conn.data_to_send())


class FakeEndpoint:
    """An L{aio.Endpoint} stand-in: each open() makes a new L{FakeServer}."""

    def __init__(self, text: str = "fake:1", fail: Exception | None = None) -> None:
        self.text = text
        self.ssl = None
        self.connect_timeout = None
        self.servers: list[FakeServer] = []
        self.fail = fail
        self.preface = True

    async def open(self, loop: asyncio.AbstractEventLoop, factory: Any) -> Any:
        if self.fail is not None:
            raise self.fail
        server = FakeServer()
        self.servers.append(server)
        protocol = factory()
        transport = FakeTransport(server, protocol)
        server.protocol, server.transport = protocol, transport
        protocol.connection_made(transport)
        if self.preface:
            server.conn.initiate_connection()
            server.reply()
        return transport, protocol


def fake_client(endpoint: FakeEndpoint | None = None, **options: Any) -> aio.Client:
    client = aio.Client("tcp:127.0.0.1:1", **options)
    client.endpoint = endpoint or FakeEndpoint()  # type: ignore[assignment]
    return client


async def turn() -> None:
    """Let every ready callback of the loop run."""
    for _ in range(5):
        await asyncio.sleep(0)


class CallTests(SynchronousTestCase):
    """Unary calls through the sans-IO connection."""

    def test_result(self) -> None:
        """A call sends a CALL frame and returns the RESULT's value."""
        async def main() -> Any:
            client = fake_client()
            task = asyncio.ensure_future(client.call("Arith.Multiply", {"A": 7, "B": 8}))
            await turn()
            server = client.endpoint.servers[0]  # type: ignore[attr-defined]
            [call] = server.calls()
            self.assertEqual(call[2:4], ["Arith.Multiply", {"A": 7, "B": 8}])
            server.conn.send_result(call[1], 56)
            server.reply()
            return await task
        self.assertEqual(asyncio.run(main()), 56)

    def test_result_with_more_fields(self) -> None:
        """A RESULT carrying fields after its value (a later version's) answers the call."""
        async def main() -> Any:
            client = fake_client()
            task = asyncio.ensure_future(client.call("Arith.Multiply", {"A": 7, "B": 8}))
            await turn()
            server = client.endpoint.servers[0]  # type: ignore[attr-defined]
            [call] = server.calls()
            server.conn._queue([RESULT, call[1], 56, "a later field"])
            server.reply()
            return await asyncio.wait_for(task, 5)
        self.assertEqual(asyncio.run(main()), 56)

    def test_results_around_an_error(self) -> None:
        """In one read, results before and after an ERROR each answer their own call."""
        async def main() -> list[Any]:
            client = fake_client()
            tasks = [asyncio.ensure_future(client.call("A.B", n)) for n in range(3)]
            await turn()
            server = client.endpoint.servers[0]  # type: ignore[attr-defined]
            ids = [call[1] for call in server.calls()]
            server.conn.send_result(ids[0], "zero")
            server.conn.send_error(ids[1], 5, "no such thing")
            server.conn.send_result(ids[2], "two")
            server.reply()
            return await asyncio.gather(*tasks, return_exceptions=True)
        zero, error, two = asyncio.run(main())
        self.assertEqual((zero, two), ("zero", "two"))
        self.assertIsInstance(error, RPCError)
        self.assertIn("no such thing", str(error))

    def test_proxy(self) -> None:
        """client.Service.Method(**kwargs) calls Service.Method with a struct argument."""
        async def main() -> Any:
            client = fake_client()
            task = asyncio.ensure_future(client.Arith.Multiply(A=2, B=3))
            await turn()
            server = client.endpoint.servers[0]  # type: ignore[attr-defined]
            [call] = server.calls()
            server.conn.send_result(call[1], call[3])
            server.reply()
            return await task
        self.assertEqual(asyncio.run(main()), {"A": 2, "B": 3})

    def test_next_calls_one_write(self) -> None:
        """The calls of callers woken by one read go out in one write as soon as those callers ran."""
        async def main() -> None:
            client = fake_client()
            await client.connection()
            server = client.endpoint.servers[0]  # type: ignore[attr-defined]
            writes: list[bytes] = []
            write = server.transport.write

            def counted(data: Any) -> None:
                writes.append(bytes(data))
                write(data)
            server.transport.write = counted

            async def twice(n: int) -> Any:
                await client.call("Arith.Multiply", {"A": n, "B": 1})
                return await client.call("Arith.Multiply", {"A": n, "B": 2})
            tasks = [asyncio.ensure_future(twice(n)) for n in range(3)]
            await turn()
            self.assertEqual(len(writes), 1)  # the three first calls
            for call in server.calls():
                server.conn.send_result(call[1], call[3]["A"] * call[3]["B"])
            server.reply()
            # The callers run next, then the write: before this task's next turn.
            await asyncio.sleep(0)
            self.assertEqual(len(writes), 2)
            self.assertEqual([c[3] for c in server.calls()[3:]],
                             [{"A": n, "B": 2} for n in range(3)])
            for call in server.calls()[3:]:
                server.conn.send_result(call[1], call[3]["A"] * call[3]["B"])
            server.reply()
            self.assertEqual(await asyncio.gather(*tasks), [0, 2, 4])
        asyncio.run(main())

    def test_error(self) -> None:
        """An ERROR frame raises the RPCError subclass of its code, with its message."""
        async def main() -> None:
            client = fake_client()
            task = asyncio.ensure_future(client.call("KV.Get", "k"))
            await turn()
            server = client.endpoint.servers[0]  # type: ignore[attr-defined]
            server.conn.send_error(server.calls()[0][1], 5, "no key k")
            server.reply()
            with self.assertRaises(NotFound) as caught:
                await task
            self.assertEqual(str(caught.exception), "no key k")
        asyncio.run(main())

    def test_cancel(self) -> None:
        """Cancelling the awaiting task sends a CANCEL for the call."""
        async def main() -> None:
            client = fake_client()
            task = asyncio.ensure_future(client.call("KV.Watch", 30))
            await turn()
            task.cancel()
            with self.assertRaises(asyncio.CancelledError):
                await task
            server = client.endpoint.servers[0]  # type: ignore[attr-defined]
            call_id = server.calls()[0][1]
            self.assertIn([CANCEL, call_id], [list(e) for e in server.events])
        asyncio.run(main())

    def test_timeout(self) -> None:
        """A call past its timeout raises DeadlineExceeded, sends the timeout, and is cancelled."""
        async def main() -> None:
            client = fake_client()
            with self.assertRaises(DeadlineExceeded) as caught:
                await client.call("KV.Watch", 30, timeout=0.01)
            self.assertIn("KV.Watch did not answer within 0.01 s", str(caught.exception))
            server = client.endpoint.servers[0]  # type: ignore[attr-defined]
            [call] = server.calls()
            self.assertEqual(call[4].timeout, 0.01)
            self.assertIn([CANCEL, call[1]], [list(e) for e in server.events])
        asyncio.run(main())

    def test_bad_arguments(self) -> None:
        """A bad timeout or metadata raises before anything is sent."""
        async def main() -> None:
            client = fake_client()
            with self.assertRaises(ValueError):
                await client.call("A.B", timeout=-1)
            with self.assertRaises(TypeError):
                await client.call("A.B", metadata=[1])  # type: ignore[arg-type]
            with self.assertRaises(TypeError):
                await client.call(7)  # type: ignore[arg-type]
            self.assertEqual(client.endpoint.servers, [])  # type: ignore[attr-defined]
        asyncio.run(main())

    def test_unencodable(self) -> None:
        """An argument msgpack cannot encode raises a local EncodeError; nothing is sent."""
        async def main() -> None:
            client = fake_client()
            await client.connection()
            with self.assertRaises(EncodeError) as caught:
                await client.call("A.B", object())
            self.assertIn("cannot encode its argument", str(caught.exception))
            self.assertTrue(caught.exception.local)
            server = client.endpoint.servers[0]  # type: ignore[attr-defined]
            self.assertEqual(server.calls(), [])
        asyncio.run(main())

    def test_connection_lost(self) -> None:
        """A connection that closes fails its pending calls with ConnectionLost."""
        async def main() -> None:
            client = fake_client()
            task = asyncio.ensure_future(client.call("KV.Watch", 30))
            await turn()
            client.endpoint.servers[0].transport.close()  # type: ignore[attr-defined]
            with self.assertRaises(ConnectionLost) as caught:
                await task
            self.assertIn("lost before the call was answered", str(caught.exception))
        asyncio.run(main())

    def test_not_rpcd(self) -> None:
        """A server that answers with another protocol's bytes is named as such."""
        async def main() -> None:
            endpoint = FakeEndpoint()
            endpoint.preface = False
            client = fake_client(endpoint)
            task = asyncio.ensure_future(client.call("A.B"))
            await turn()
            endpoint.servers[0].protocol.data_received(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            with self.assertRaises(Unavailable) as caught:
                await task
            self.assertIn("does not speak rpcd's native protocol", str(caught.exception))
        asyncio.run(main())

    def test_fatal_goaway(self) -> None:
        """A GOAWAY with an error code fails the pending calls with its message."""
        async def main() -> None:
            client = fake_client()
            task = asyncio.ensure_future(client.call("KV.Watch", 30))
            await turn()
            server = client.endpoint.servers[0]  # type: ignore[attr-defined]
            server.conn.close(8, "too many calls")
            server.reply()
            with self.assertRaises(Unavailable) as caught:
                await task
            self.assertIn("too many calls", str(caught.exception))
        asyncio.run(main())

    def test_drain_redials(self) -> None:
        """After a graceful GOAWAY, a call the server did not run is sent on a new connection."""
        async def main() -> Any:
            client = fake_client()
            task = asyncio.ensure_future(client.call("Arith.Multiply", {"A": 1, "B": 2}))
            await turn()
            first = client.endpoint.servers[0]  # type: ignore[attr-defined]
            first.conn.drain(0, "restarting")
            first.reply()
            await turn()
            second = client.endpoint.servers[1]  # type: ignore[attr-defined]
            [call] = second.calls()
            second.conn.send_result(call[1], 2)
            second.reply()
            return await task
        self.assertEqual(asyncio.run(main()), 2)

    def test_answers_ping(self) -> None:
        """A server's PING is answered with a PONG of the same opaque."""
        async def main() -> None:
            client = fake_client()
            await client.connection()
            server = client.endpoint.servers[0]  # type: ignore[attr-defined]
            server.conn.send_ping(42)
            server.reply()
            self.assertIn((PONG, 42), [tuple(e) for e in server.events])
        asyncio.run(main())

    def test_new_loop(self) -> None:
        """A client used from a second asyncio.run() dials a new connection on that loop."""
        endpoint = FakeEndpoint()
        client = fake_client(endpoint)

        async def main() -> None:
            await client.connection()
        asyncio.run(main())
        asyncio.run(main())
        self.assertEqual(len(endpoint.servers), 2)

    def test_calls_on_a_new_loop(self) -> None:
        """Calls from a second asyncio.run() go on a new connection made on that loop."""
        endpoint = FakeEndpoint()
        client = fake_client(endpoint)

        async def main() -> Any:
            task = asyncio.ensure_future(client.call("A.B", 1))
            await turn()
            server = endpoint.servers[-1]
            [call] = server.calls()
            server.conn.send_result(call[1], len(endpoint.servers))
            server.reply()
            return await task
        self.assertEqual(asyncio.run(main()), 1)
        self.assertEqual(asyncio.run(main()), 2)

    def test_connect_fails(self) -> None:
        """A server that cannot be reached raises Unavailable naming the endpoint and why."""
        async def main() -> None:
            client = fake_client(FakeEndpoint("tcp:127.0.0.1:9", ConnectionRefusedError(
                111, "Connection refused")))
            with self.assertRaises(Unavailable) as caught:
                await client.call("A.B")
            self.assertIn("cannot connect to tcp:127.0.0.1:9", str(caught.exception))
            self.assertIn("Connection refused", str(caught.exception))
        asyncio.run(main())


class StreamTests(SynchronousTestCase):
    """Streams, with credit both ways."""

    def test_server_stream_credit(self) -> None:
        """Messages are read in order; credit goes back once half the window is taken."""
        async def main() -> None:
            client = fake_client()
            stream = client.stream("Counter.Count", 4, window=4)
            reader = asyncio.ensure_future(stream.__anext__())
            await turn()
            server = client.endpoint.servers[0]  # type: ignore[attr-defined]
            [call] = server.calls()
            self.assertTrue(call[4].stream)
            self.assertEqual(call[4].window, 4)
            for n in range(4):
                server.conn.send_message(call[1], n)
            server.reply()
            self.assertEqual(await reader, 0)
            self.assertNotIn(CREDIT, [e[0] for e in server.events])
            self.assertEqual(await stream.__anext__(), 1)
            self.assertIn((CREDIT, call[1], 2), [tuple(e) for e in server.events])
            server.conn.send_result(call[1], "done")
            server.reply()
            self.assertEqual([m async for m in stream], [2, 3])
            self.assertEqual(await stream.result(), "done")
        asyncio.run(main())

    def test_send_waits_for_credit(self) -> None:
        """send() waits until the server grants credit, then sends one MESSAGE per credit."""
        async def main() -> None:
            client = fake_client()
            stream = client.stream("Sum.Add")
            first = asyncio.ensure_future(stream.send(1))
            await turn()
            self.assertFalse(first.done())
            server = client.endpoint.servers[0]  # type: ignore[attr-defined]
            call_id = server.calls()[0][1]
            server.conn.grant_window(call_id, 1)
            server.reply()
            await first
            second = asyncio.ensure_future(stream.send(2))
            await turn()
            self.assertFalse(second.done())
            self.assertEqual([e[2] for e in server.events if e[0] == MESSAGE], [1])
            server.events.clear()
            server.conn.message_consumed(call_id)  # half of a window of 1: a CREDIT
            server.reply()
            await second
            await stream.close_send()
            self.assertEqual([tuple(e)[:3] if e[0] == MESSAGE else tuple(e)
                              for e in server.events], [(MESSAGE, call_id, 2), (END, call_id)])
        asyncio.run(main())

    def test_sends_of_one_turn_in_one_write(self) -> None:
        """The messages sent in one turn of the loop reach the socket in one write."""
        async def main() -> None:
            client = fake_client()
            stream = client.stream("Sum.Add")
            opening = asyncio.ensure_future(stream._open())
            await turn()
            await opening
            server = client.endpoint.servers[0]  # type: ignore[attr-defined]
            call_id = server.calls()[0][1]
            server.conn.grant_window(call_id, 8)
            server.reply()
            writes: list[bytes] = []
            transport = server.transport
            write = transport.write
            transport.write = lambda data: (writes.append(data), write(data))  # type: ignore
            for n in range(5):
                await stream.send(n)
            self.assertEqual(writes, [])
            await turn()
            self.assertEqual(len(writes), 1)
            self.assertEqual([e[2] for e in server.events if e[0] == MESSAGE], [0, 1, 2, 3, 4])
        asyncio.run(main())

    def test_cancel(self) -> None:
        """cancel() sends CANCEL; the reader then raises Cancelled."""
        async def main() -> None:
            client = fake_client()
            stream = client.stream("Counter.Count", 10)
            reader = asyncio.ensure_future(stream.__anext__())
            await turn()
            stream.cancel()
            with self.assertRaises(Cancelled):
                await reader
            server = client.endpoint.servers[0]  # type: ignore[attr-defined]
            self.assertIn([CANCEL, server.calls()[0][1]], [list(e) for e in server.events])
        asyncio.run(main())

    def test_error(self) -> None:
        """A stream's ERROR is raised by the reader after the messages before it."""
        async def main() -> None:
            client = fake_client()
            stream = client.stream("Counter.Count", 10)
            reader = asyncio.ensure_future(stream.__anext__())
            await turn()
            server = client.endpoint.servers[0]  # type: ignore[attr-defined]
            call_id = server.calls()[0][1]
            server.conn.send_message(call_id, "a")
            server.conn.send_error(call_id, 5, "gone")
            server.reply()
            self.assertEqual(await reader, "a")
            with self.assertRaises(NotFound):
                await stream.__anext__()
        asyncio.run(main())


class EndpointTests(SynchronousTestCase):
    """The endpoint strings the asyncio client takes."""

    def test_tcp(self) -> None:
        """tcp:HOST:PORT and its keyword form are read alike."""
        for text in ("tcp:127.0.0.1:1234", "tcp:host=127.0.0.1:port=1234"):
            endpoint = aio.Endpoint(text)
            self.assertEqual((endpoint.kind, endpoint.host, endpoint.port),
                             ("tcp", "127.0.0.1", 1234))

    def test_unix(self) -> None:
        """unix:PATH keeps escaped colons in the path."""
        endpoint = aio.Endpoint("unix:/run/a\\:b.sock")
        self.assertEqual((endpoint.kind, endpoint.path), ("unix", "/run/a:b.sock"))

    def test_bad(self) -> None:
        """A bad string names what is wrong."""
        for text, why in (("tcp:127.0.0.1", "needs a host and a port"),
                          ("tcp:127.0.0.1:99999", "needs a host and a port"),
                          ("ssl:a:1", "not 'ssl'"),
                          ("tcp:a:1:colour=red", "unknown option(s) colour"),
                          ("tls:a:1:trustRoots=/nonexistent", "neither a directory")):
            with self.assertRaises(ValueError) as caught:
                aio.Endpoint(text)
            self.assertIn(why, str(caught.exception))


class BalancedTests(SynchronousTestCase):
    """Round robin over several servers."""

    def test_skips_unreachable(self) -> None:
        """Calls go to the servers that are up; an unreachable one is skipped."""
        async def main() -> None:
            balanced = aio.BalancedClient(["tcp:127.0.0.1:1", "tcp:127.0.0.1:2"])
            down = FakeEndpoint("down", ConnectionRefusedError(111, "Connection refused"))
            up = FakeEndpoint("up")
            balanced.clients[0].endpoint = down  # type: ignore[assignment]
            balanced.clients[1].endpoint = up  # type: ignore[assignment]
            await balanced.ready()
            for n in range(3):
                task = asyncio.ensure_future(balanced.call("A.B", n))
                await turn()
                server = up.servers[0]
                call = server.calls()[-1]
                server.conn.send_result(call[1], n * 10)
                server.reply()
                self.assertEqual(await task, n * 10)
        asyncio.run(main())

    def test_none_reachable(self) -> None:
        """When no server can be reached, the error names each one."""
        async def main() -> None:
            balanced = aio.BalancedClient(["tcp:127.0.0.1:1", "tcp:127.0.0.1:2"])
            for i, client in enumerate(balanced.clients):
                client.endpoint = FakeEndpoint(f"e{i}", OSError(f"refused {i}"))  # type: ignore
            with self.assertRaises(Unavailable) as caught:
                await balanced.ready()
            self.assertIn("refused 0", str(caught.exception))
            self.assertIn("refused 1", str(caught.exception))
        asyncio.run(main())


SCRIPT = textwrap.dedent("""
    import asyncio, os, sys
    from rpcd.client import aio
    from rpcd.errors import DeadlineExceeded, Unimplemented

    async def session(client):
        out = [await client.call("Arith.Multiply", {"A": 7, "B": 8}),
               await client.Arith.Multiply(A=6, B=7)]
        stream = client.stream("TestService.StreamingOutputCall",
                               {"response_parameters": [{"size": 3}, {"size": 5}]})
        out.append([len(m["payload"]["body"]) async for m in stream])
        stream = client.stream("TestService.StreamingInputCall")
        for n in (1, 2, 3):
            await stream.send({"payload": {"body": bytes(n)}})
        await stream.close_send()
        out.append((await stream.result())["aggregated_payload_size"])
        try:
            await client.call("Nope.X")
        except Unimplemented:
            out.append("unimplemented")
        try:
            await client.call("KVStoreService.Watch", 30, timeout=0.05)
        except DeadlineExceeded:
            out.append("deadline")
        return out

    run = asyncio.run
    if sys.argv[2:] == ["uvloop"]:
        import uvloop
        run = uvloop.run
    client = aio.Client(sys.argv[1])
    print(run(session(client)), flush=True)
    print(run(session(client)), flush=True)   # a second event loop
    pid = os.fork()
    if pid == 0:
        print(run(session(client)), flush=True)   # the child of a fork
        os._exit(0)
    os.waitpid(pid, 0)
    print(run(session(client)), flush=True)   # the parent, after the child
""")

EXPECTED = "[56, 42, [3, 5], 6, 'unimplemented', 'deadline']"


class EndToEndTests(TestCase):
    """The asyncio client from a plain asyncio script against the real daemon."""

    async def run_script(self, endpoint: str, *options: str) -> None:
        script = Path(temp_dir(self)) / "aio_script.py"
        script.write_text(SCRIPT)
        code, out, err = await run(self, [sys.executable, str(script), endpoint, *options])
        self.assertEqual((code, err), (0, ""), out)
        self.assertEqual(out.splitlines(), [EXPECTED] * 4)

    async def test_tcp(self) -> None:
        """Calls, both stream kinds, errors and deadlines work over TCP, across loops and a fork."""
        daemon = await Daemon.start(self, "--listen", "tcp:0:interface=127.0.0.1", "--service",
                                    "TestService", "--service", "KVStoreService",
                                    "--service", "Arith")
        await self.run_script(f"tcp:127.0.0.1:{daemon.port}")

    async def test_uvloop(self) -> None:
        """The same on uvloop's event loop, whose transports are not asyncio.Transports."""
        try:
            import uvloop  # noqa: F401
        except ImportError:
            missing("uvloop is not installed (pip install uvloop)")
        daemon = await Daemon.start(self, "--listen", "tcp:0:interface=127.0.0.1", "--service",
                                    "TestService", "--service", "KVStoreService",
                                    "--service", "Arith")
        await self.run_script(f"tcp:127.0.0.1:{daemon.port}", "uvloop")

    async def test_tls(self) -> None:
        """The same over TLS, the server's certificate checked against the test CA."""
        pki = Path(temp_dir(self)) / "pki"
        files = create_dev_pki(pki)
        daemon = await Daemon.start(
            self, "--listen", f"rpcd-tls:0:interface=127.0.0.1:certKey={files['server.pem']}"
                              f":privateKey={files['server.key']}",
            "--service", "TestService", "--service", "KVStoreService", "--service", "Arith")
        await self.run_script(f"tls:host=localhost:port={daemon.port}:trustRoots={pki}")
