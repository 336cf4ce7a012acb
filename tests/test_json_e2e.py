"""
End-to-end tests of JSON and HTTP: the real C{twistd -n rpcd} on loopback,
called by curl (JSON-RPC 2.0 over HTTP, /debug/rpc), seed 002's Python socket
client run verbatim, stock Go programs (C{jsonrpc.Dial} against rpcd, and a
C{jsonrpc.ServeConn} server that rpcd's client and the C{rpcd} command
call), every protocol on one port, and a flood of hostile bytes.
"""

from __future__ import annotations

import json
import random
import select
import socket
import sys
import time
from pathlib import Path
from typing import BinaryIO

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from rpcd.client import connect
from rpcd.errors import Code, RPCError
from tests.cache import cached_build, tool_stamp
from tests.cli import rpcd
from tests.daemon import Daemon, environment, run
from tests.tools import require_tool

HERE = Path(__file__).resolve().parent
SEED_CLIENT = HERE / "seeds" / "client_002.py"
GO_CLIENT = HERE / "go" / "jsonclient"
GO_SERVER = HERE / "go" / "jsonserver"
LOOPBACK = ("--listen", "tcp:0:interface=127.0.0.1")
GO_ENV = {"GOFLAGS": "-mod=mod", "GOPROXY": "off", "CGO_ENABLED": "0"}



_built: dict[str, str] = {}


async def build_go(test: TestCase, source: Path) -> str:
    """
    Build a Go program once for all runs (L{tests.cache}).

    @param test: the test (skipped without Go).
    @param source: the directory of its main package.
    @return: the executable's path.
    """
    go = require_tool("go", f"to build {source.name}, a stock Go net/rpc/jsonrpc program")
    if source.name not in _built:
        async def build(binary: str) -> None:
            code, out, err = await run(test, [go, "build", "-o", binary, "."], cwd=str(source),
                                       env=GO_ENV)
            test.assertEqual(code, 0, f"go build {source.name} failed: {out}{err}")

        _built[source.name] = await cached_build(source.name, [source, tool_stamp(go), GO_ENV], build)
    return _built[source.name]


async def curl(test: TestCase, *args: str) -> str:
    """
    Run curl with the arguments and return its output.
    """
    tool = require_tool("curl", "to call JSON-RPC 2.0 over HTTP")
    code, out, err = await run(test, [tool, "--silent", "--show-error", "--max-time", "20", *args])
    test.assertEqual(code, 0, err)
    return out


def post_args(url: str, body: str) -> list[str]:
    """curl arguments to POST a JSON body."""
    return ["-H", "Content-Type: application/json", "--data-binary", body, url]


class _GoServer(ProcessProtocol):
    """The Go jsonrpc server process: fires C{listening} with its address."""

    def __init__(self) -> None:
        self.listening: Deferred[str] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.out = b""

    def outReceived(self, data: bytes) -> None:
        self.out += data
        for line in self.out.decode().splitlines():
            if line.startswith("listening ") and not self.listening.called:
                self.listening.callback(line.split()[1])

    def processEnded(self, reason: Failure) -> None:
        if not self.listening.called:
            self.listening.errback(AssertionError(f"the Go server exited: {self.out!r}"))
        self.ended.callback(None)

    def stop(self) -> Deferred[None]:
        """Kill the server; the Deferred fires once it has exited."""
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
        return self.ended


# Runs a seed's Python client unchanged, its socket.create_connection
# redirected from the seed's port (argv[1]) to the daemon's (argv[2]), so that
# the test needs no fixed port free.
_REDIRECTED_SEED = (
    "import runpy, socket, sys\n"
    "seed_port, port, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]\n"
    "create_connection = socket.create_connection\n"
    "def redirected(address, *args, **kwargs):\n"
    "    host, number = address[:2]\n"
    "    return create_connection((host, port if number == seed_port else number), *args, **kwargs)\n"
    "socket.create_connection = redirected\n"
    "sys.argv = [path]\n"
    "runpy.run_path(path, run_name='__main__')\n"
)


class HTTPTests(TestCase):
    """curl against POST /rpc and GET /debug/rpc."""

    timeout = 120

    async def test_curl_json_rpc(self) -> None:
        """Single, batch, notification and error requests over HTTP, then the debug page."""
        daemon = await Daemon.start(self, *LOOPBACK)
        url = f"http://127.0.0.1:{daemon.port}/rpc"
        single = json.loads(await curl(self, *post_args(
            url, '{"jsonrpc":"2.0","method":"Arith.Multiply","params":{"A":7,"B":8},"id":1}')))
        self.assertEqual(single, {"jsonrpc": "2.0", "result": 56, "id": 1})
        batch = json.loads(await curl(self, *post_args(
            url, '[{"jsonrpc":"2.0","method":"Cal.Square","params":[12],"id":"a"},'
                 '{"jsonrpc":"2.0","method":"ServiceA.Add","params":[{"x":10,"y":50}],"id":"b"},'
                 '{"jsonrpc":"2.0","method":"Cal.Square","params":[1]}]')))
        self.assertEqual(batch, [{"jsonrpc": "2.0", "result": {"Num": 12, "Ans": 144}, "id": "a"},
                                 {"jsonrpc": "2.0", "result": 60, "id": "b"}])
        notification = await curl(self, "--include", *post_args(
            url, '{"jsonrpc":"2.0","method":"Cal.Square","params":[2]}'))
        self.assertTrue(notification.startswith("HTTP/1.1 204 No Content\r\n"), notification)
        errors = json.loads(await curl(self, *post_args(
            url, '[{"jsonrpc":"2.0","method":"Nope.Method","id":1},'
                 '{"jsonrpc":"2.0","method":"Cal.Square","params":["x"],"id":2},'
                 '{"jsonrpc":"2.0","method":"HelloService.Hello","params":["x"],"id":3},'
                 '{"jsonrpc":"2.0","method":1,"id":4}]')))
        self.assertEqual([(e["id"], e["error"]["code"]) for e in errors],
                         [(1, -32601), (2, -32602), (3, -32016), (4, -32600)])
        self.assertEqual(errors[2]["error"]["message"], "please login")
        parse = json.loads(await curl(self, *post_args(url, '{"jsonrpc":"2.0","id":1,"x":NaN}')))
        self.assertEqual(parse["error"]["code"], -32700)
        page = await curl(self, f"http://127.0.0.1:{daemon.port}/debug/rpc")
        self.assertIn("Service Cal", page)
        self.assertRegex(page, r"Cal\.Square\(num: int\) -&gt; Result</code></td><td align=center>4</td>")
        self.assertIn("Service KVStoreService", page)
        status = await curl(self, "--output", "/dev/null", "--write-out", "%{http_code}",
                            f"http://127.0.0.1:{daemon.port}/nothing")
        self.assertEqual(status, "404")
        self.assertNotIn("Traceback", daemon.output)


class ChunkedHTTPTests(TestCase):
    """POST /rpc with a Transfer-Encoding: chunked body, from curl and from a raw socket."""

    timeout = 120

    async def test_curl_chunked(self) -> None:
        """curl sends a 200 KB call chunked after 100 Continue; the daemon decodes all of it."""
        tool = require_tool("curl", "to send a chunked JSON-RPC 2.0 request")
        daemon = await Daemon.shared(self, *LOOPBACK)
        mark = len(daemon.output)
        url = f"http://127.0.0.1:{daemon.port}/rpc"
        value = "chunked " * 25000
        call = json.dumps({"jsonrpc": "2.0", "method": "KVStoreService.Set",
                           "params": [["big", value]], "id": 1})
        code, out, err = await run(self, [
            tool, "--verbose", "--silent", "--show-error", "--max-time", "20",
            "-H", "Content-Type: application/json", "-H", "Transfer-Encoding: chunked",
            "-H", "Expect: 100-continue", "--data-binary", "@-", url], stdin=call.encode())
        self.assertEqual(code, 0, err)
        self.assertIn("> Transfer-Encoding: chunked", err)
        request_head = err.partition("\n< ")[0]  # curl's verbose lines before the first answer
        self.assertNotIn("Content-Length", request_head)
        self.assertIn("< HTTP/1.1 100 Continue", err)
        self.assertEqual(json.loads(out), {"jsonrpc": "2.0", "result": None, "id": 1})
        stored = json.loads(await curl(self, *post_args(
            url, '{"jsonrpc":"2.0","method":"KVStoreService.Get","params":["big"],"id":2}')))
        self.assertEqual(stored["result"], value)
        self.assertNotIn("Traceback", daemon.output[mark:])

    async def test_raw_socket_chunked(self) -> None:
        """A hand-written chunked request in several writes, then a pipelined one, are both answered."""
        daemon = await Daemon.shared(self, *LOOPBACK)
        mark = len(daemon.output)
        first, second = await deferToThread(_raw_chunked_calls, daemon.port)
        self.assertEqual(first, (200, {"jsonrpc": "2.0", "result": 42, "id": 1}))
        self.assertEqual(second, (200, {"jsonrpc": "2.0", "result": {"Num": 12, "Ans": 144}, "id": 2}))
        self.assertNotIn("Traceback", daemon.output[mark:])


# A chunked JSON-RPC call, head and body, as the writes that send it.
_CHUNKED_WRITES = [
    b"POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
    b"11\r\n{\"jsonrpc\":\"2.0\",",
    b"\r\n22;note=\"second chunk\"\r\n\"method\":\"Arith.Multip",
    b"ly\",\"params\"\r\n1",
    b"6\r\n:{\"A\":6,\"B\":7},\"id\":1}\r\n0\r\nX-Trailer: ignored\r\n",
    b"\r\n",
]
# A second chunked call, pipelined on the same connection, which it closes.
_CHUNKED_SECOND = (
    b"POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    b"3c\r\n{\"jsonrpc\":\"2.0\",\"method\":\"Cal.Square\",\"params\":[12],\"id\":2}\r\n0\r\n\r\n"
)


def _raw_chunked_calls(port: int) -> tuple[tuple[int, object], tuple[int, object]]:
    """
    Send L{_CHUNKED_WRITES} one write at a time, the body only after the
    daemon's 100 Continue, then L{_CHUNKED_SECOND} before reading the first
    answer (pipelined).

    @return: C{(status, decoded JSON body)} of each answer.
    """
    with socket.create_connection(("127.0.0.1", port), 10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        replies = s.makefile("rb")
        s.sendall(_CHUNKED_WRITES[0])
        interim = _read_response(replies)
        if interim[0] != 100:
            raise AssertionError(f"expected 100 Continue, got {interim!r}")
        for data in _CHUNKED_WRITES[1:]:
            s.sendall(data)
        s.sendall(_CHUNKED_SECOND)
        first = _read_response(replies)
        second = _read_response(replies)
        if replies.read() != b"":
            raise AssertionError("bytes after the last answer")
    return ((first[0], json.loads(first[1])), (second[0], json.loads(second[1])))


def _read_response(replies: BinaryIO) -> tuple[int, bytes]:
    """
    Read one response with a Content-Length body (or none) from a socket file.

    @return: its status and body.
    """
    status = int(replies.readline().split()[1])
    length = 0
    while (line := replies.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, replies.read(length)


class SeedClientTests(TestCase):
    """Seed 002's Python socket client, unchanged (its port redirected to the daemon's)."""

    timeout = 60

    async def test_seed_002_python_client(self) -> None:
        """The seed's raw socket client prints Go's answer, decoded by Python."""
        daemon = await Daemon.shared(self, *LOOPBACK)
        mark = len(daemon.output)
        code, out, err = await run(self, [sys.executable, "-c", _REDIRECTED_SEED, "9000",
                                          str(daemon.port), str(SEED_CLIENT)])
        self.assertEqual((code, out), (0, "{'id': 0, 'result': 60, 'error': None}\n"), err)
        self.assertNotIn("Traceback", daemon.output[mark:])


class GoTests(TestCase):
    """Stock Go net/rpc/jsonrpc programs."""

    timeout = 600

    async def test_go_jsonrpc_dial(self) -> None:
        """jsonrpc.Dial: sync, async, 100 concurrent calls, a nil reply, unknown methods, then more."""
        client = await build_go(self, GO_CLIENT)
        daemon = await Daemon.shared(self, *LOOPBACK)
        code, out, err = await run(self, [client, f"127.0.0.1:{daemon.port}"])
        self.assertEqual(code, 0, err)
        self.assertEqual(out.splitlines(), [
            "sync 60",
            "async 56",
            "concurrent 100/100",
            "set ok",
            "unknown rpc: can't find service Nope.Method",
            "unknown rpc: can't find method ServiceA.Nope",
            "after 3",
        ])

    async def go_server(self) -> str:
        binary = await build_go(self, GO_SERVER)
        protocol = _GoServer()
        reactor.spawnProcess(protocol, binary, [binary], env=environment())
        self.addCleanup(protocol.stop)
        return await protocol.listening

    async def test_rpcd_client_calls_go_server(self) -> None:
        """rpcd's jsonrpc codec calls a stock jsonrpc.ServeConn server: results and Go's errors."""
        address = await self.go_server()
        client = await connect(f"tcp:{address}", codec="jsonrpc")
        self.addCleanup(client.close)
        sums = [client.ServiceA.Add(X=i, Y=1) for i in range(50)]
        self.assertEqual([await d for d in sums], [i + 1 for i in range(50)])
        self.assertEqual(await client.ServiceA.Pair(X=3, Y=4),
                         {"Sum": 7, "Product": 12, "Tag": "<go>"})
        with self.assertRaises(RPCError) as cm:
            await client.ServiceA.Fail(X=3, Y=4)
        self.assertEqual((cm.exception.code, cm.exception.message), (Code.UNKNOWN, "no luck: 3"))
        with self.assertRaises(RPCError) as cm:
            await client.call("Nope.Method", 1)
        self.assertEqual(cm.exception.message, "rpc: can't find service Nope.Method")
        self.assertEqual(await client.ServiceA.Add(X=1, Y=2), 3)

    async def test_rpcd_command_calls_go_server(self) -> None:
        """rpcd call --codec jsonrpc prints a Go server's result, and exits 1 with its error."""
        address = await self.go_server()
        code, out, err = await rpcd(self, "call", "--codec", "jsonrpc", f"tcp:{address}",
                                    "ServiceA.Add", '{"X": 20, "Y": 22}')
        self.assertEqual((code, out.strip()), (0, "42"), err)
        code, out, err = await rpcd(self, "call", "--codec", "jsonrpc", f"tcp:{address}",
                                    "ServiceA.Fail", '{"X": 5}')
        self.assertEqual(code, 1)
        self.assertIn("no luck: 5", err)


class OnePortTests(TestCase):
    """Every protocol on one port at once."""

    timeout = 120

    async def test_all_protocols_on_one_port(self) -> None:
        """Native, jsonrpc, jsonrpc2, gob-http, curl and the seed's raw JSON share one port."""
        daemon = await Daemon.shared(self, *LOOPBACK)
        endpoint = f"tcp:127.0.0.1:{daemon.port}"
        clients = {}
        for codec in ("native", "jsonrpc", "jsonrpc2", "gob-http"):
            clients[codec] = await connect(endpoint, codec=codec)
            self.addCleanup(clients[codec].close)
        calls = {codec: [client.call("Cal.Square", i) for i in range(20)]
                 for codec, client in clients.items()}
        page = Deferred.fromCoroutine(curl(self, f"http://127.0.0.1:{daemon.port}/debug/rpc"))
        rpc = Deferred.fromCoroutine(curl(self, *post_args(
            f"http://127.0.0.1:{daemon.port}/rpc",
            '{"jsonrpc":"2.0","method":"Cal.Square","params":[9],"id":1}')))
        raw = deferToThread(_raw_json_call, daemon.port,
                            b'{"id": 0, "params": [{"x":10, "y":50}], "method": "ServiceA.Add"}')
        for codec, ds in calls.items():
            self.assertEqual([(await d)["Ans"] for d in ds], [i * i for i in range(20)], codec)
        self.assertEqual(json.loads(await rpc)["result"]["Ans"], 81)
        self.assertIn("Service Cal", await page)
        self.assertEqual(await raw, b'{"id":0,"result":60,"error":null}\n')
        for codec, client in clients.items():
            self.assertEqual(await client.Arith.Multiply(A=6, B=7), 42, codec)


def _raw_json_call(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(request)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


# Valid inputs the hostile test mutates.
_SAMPLES = [
    b'{"id": 0, "params": [{"x":10, "y":50}], "method": "ServiceA.Add"}',
    b'{"jsonrpc":"2.0","method":"Cal.Square","params":[12],"id":1}',
    b'[{"jsonrpc":"2.0","method":"Cal.Square","params":[1],"id":"a"},'
    b'{"jsonrpc":"2.0","method":"Arith.Multiply","params":{"A":1,"B":2}}]',
    b'POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n'
    b'{"jsonrpc":"2.0","method":"Cal.Square","params":[12],"id":1}',
    b"GET /debug/rpc HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"CONNECT /_goRPC_ HTTP/1.0\n\n",
    b"GET /_goRPC_ HTTP/1.0\r\n\r\n",
]
_NASTY = [b"\x00", b"\r", b"\n", b"{", b"}", b"[", b"]", b'"', b"\\", b"NaN", b"-Infinity",
          b"1e400", b"\xff", b"\xc3", b"\r\n\r\n", b"Content-Length: 99999999999\r\n",
          b"Transfer-Encoding: chunked\r\n", b":", b",", b'"id":', b"9" * 50]


def hostile_inputs(count: int, seed: int = 20261123) -> list[bytes]:
    """
    Random and mutated JSON and HTTP inputs, the same for a given seed.

    @param count: how many.
    @return: the inputs, each at most a few KiB.
    """
    rng = random.Random(seed)
    out = []
    for i in range(count):
        if i % 5 == 0:
            start = rng.choice([b"{", b"[", b"POST ", b"GET ", b"CONNECT ", b" \n{"])
            out.append(start + rng.randbytes(rng.randrange(0, 2000)))
            continue
        data = bytearray(rng.choice(_SAMPLES) * rng.choice([1, 1, 2, 3]))
        for _ in range(rng.randrange(1, 8)):
            kind = rng.randrange(5)
            pos = rng.randrange(len(data) + 1)
            if kind == 0 and data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
            elif kind == 1:
                data[pos:pos] = rng.choice(_NASTY)
            elif kind == 2:
                del data[pos:pos + rng.randrange(1, 20)]
            elif kind == 3:
                data = data[:pos]
            else:
                data[pos:pos] = data[:rng.randrange(len(data) + 1)]
        out.append(bytes(data) or b"{")
    return out


def _flood(port: int, inputs: list[bytes], batch: int = 300, wait: float = 1.0) -> int:
    """
    Send each input on its own connection, in batches of connections open
    at once; read what comes back until the server closes or C{wait}
    seconds pass, then close.  (Inputs that stop mid-message keep their
    connection open for the whole C{wait}: every batch costs that long.)

    @return: how many connections the server closed itself.
    """
    closed_by_server = 0
    for start in range(0, len(inputs), batch):
        socks = []
        for data in inputs[start:start + batch]:
            s = socket.create_connection(("127.0.0.1", port), 5)
            try:
                s.sendall(data)
            except OSError:
                pass
            s.setblocking(False)
            socks.append(s)
        open_socks = set(socks)
        deadline = _now() + wait
        while open_socks and _now() < deadline:
            readable, _, _ = select.select(list(open_socks), [], [], max(0.0, deadline - _now()))
            for s in readable:
                try:
                    chunk = s.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    open_socks.discard(s)
                    closed_by_server += 1
        for s in socks:
            s.close()
    return closed_by_server


def _now() -> float:
    return time.monotonic()


class HostileTests(TestCase):
    """The daemon under random and mutated JSON and HTTP bytes."""

    timeout = 180

    async def test_hostile_inputs(self) -> None:
        """300 hostile connections leave the daemon answering normally, with no traceback logged."""
        daemon = await Daemon.start(self, *LOOPBACK)
        inputs = hostile_inputs(300)
        closed = await deferToThread(_flood, daemon.port, inputs)
        self.assertGreater(closed, 50)
        for codec in ("native", "jsonrpc", "jsonrpc2"):
            client = await connect(f"tcp:127.0.0.1:{daemon.port}", codec=codec)
            self.assertEqual(await client.Arith.Multiply(A=6, B=7), 42, codec)
            await client.close()
        reply = json.loads(await curl(self, *post_args(
            f"http://127.0.0.1:{daemon.port}/rpc",
            '{"jsonrpc":"2.0","method":"Cal.Square","params":[3],"id":1}')))
        self.assertEqual(reply["result"]["Ans"], 9)
        self.assertTrue(daemon.running)
        for bad in ("Traceback", "Unhandled Error", "Unhandled error"):
            self.assertNotIn(bad, daemon.output)

