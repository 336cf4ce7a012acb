"""
End-to-end tests with real Go: stock Go programs call the real daemon as a
Go net/rpc server, and rpcd's client calls a real Go net/rpc server.

  - The seed documents' client programs, unchanged but for their port
    (C{tests/go/seeds}): each is built once with a second file that sets its
    C{seedPort} from C{RPCD_SEED_PORT} (L{SEED_PORT_GO}), and run with the
    port the OS gave the daemon, so no test needs the seeds' fixed ports
    (1234, 9000, 8080) free.
  - rpcd's own Go programs (C{tests/go/gobcalls}): sync and async calls, 200
    calls in flight, unknown names, Watch beside Set, login per connection,
    rich types echoed by C{tests.echoservice}.
  - A Go net/rpc server (C{tests/go/arithserver}) called by the client
    library (codecs C{gob} and C{gob-http}) and by C{rpcd call --codec gob}.
  - Hostile gob bytes on raw sockets.

Every Go program is built from source with C{go build} once, and kept in
L{tests.cache} by its sources' hash (stdlib only: nothing is downloaded).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from rpcd.client import connect
from rpcd.errors import DeadlineExceeded, RPCError, Unavailable, Unimplemented
from rpcd.server import SERVER_PROTOCOLS
from tests.cache import cached_build, tool_stamp
from tests.cli import rpcd
from tests.daemon import ROOT, Daemon, _Output, environment, run, shared_config
from tests.test_gobrpc import C2S
from tests.tools import require_tool

GO_SOURCES = ROOT / "tests" / "go"
LOOPBACK = ("--listen", "tcp:0:interface=127.0.0.1")

_built: dict[str, str] = {}



def go_environment() -> dict[str, str]:
    """
    @return: what C{go build} needs to work anywhere, as root in CI too: a
        writable build cache and GOPATH (kept across runs under the temporary
        directory unless the environment names its own), module mode on.
    """
    tmp = Path(tempfile.gettempdir())
    return {
        "GOCACHE": os.environ.get("GOCACHE") or str(tmp / "rpcd-tests-gocache"),
        "GOPATH": os.environ.get("GOPATH") or str(tmp / "rpcd-tests-gopath"),
        "GOFLAGS": "-mod=mod",
    }


SEED_PORT_GO = """\
package main

import "os"

// Written by the tests beside the seed's main.go, which stays as it is: the
// port the program dials is RPCD_SEED_PORT when set, so one build serves
// every port the OS gives a daemon.
func init() {
	if port := os.Getenv("RPCD_SEED_PORT"); port != "" {
		seedPort = port
	}
}
"""
"""A second file of a seed program's package (the seeds keep their port in
the variable C{seedPort}; their C{main.go} uses it only once C{main} runs,
after every C{init})."""


def seed_environment(port: int) -> dict[str, str]:
    """
    @param port: the port a seed program dials (or listens on: 0 for one the
        OS picks).
    @return: the environment variable L{SEED_PORT_GO} reads.
    """
    return {"RPCD_SEED_PORT": str(port)}


async def go_program(test: TestCase, name: str) -> str:
    """
    Build C{tests/go/NAME/main.go} once for all runs (L{tests.cache}); a seed
    program (C{seeds/...}) with L{SEED_PORT_GO} beside it, run with
    L{seed_environment}.

    @param test: the calling test (skipped when Go is missing).
    @param name: the program's directory under C{tests/go}.
    @return: the executable's path.
    """
    go = require_tool("go", "to build the Go programs that talk to rpcd")
    if name in _built:
        return _built[name]
    source = GO_SOURCES / name
    seed = name.startswith("seeds/")

    async def build(binary: str) -> None:
        files = ["main.go"]
        directory = str(source)
        if seed:
            directory = tempfile.mkdtemp(prefix="rpcd-seed-")
            test.addCleanup(shutil.rmtree, directory, True)
            shutil.copy(source / "main.go", directory)
            Path(directory, "seedport.go").write_text(SEED_PORT_GO)
            files.append("seedport.go")
        code, out, err = await run(test, [go, "build", "-o", binary, *files],
                                   env=go_environment(), cwd=directory)
        if code != 0:
            test.fail(f"go build in {source} failed (exit {code}):\n{out}{err}")

    # Kept across runs and trial -j workers, named by the sources' hash.
    inputs = [source, tool_stamp(go), go_environment()["GOFLAGS"], SEED_PORT_GO if seed else None]
    _built[name] = await cached_build(name, inputs, build)
    return _built[name]


def require_protocol(name: str, why: str) -> None:
    """
    Skip a test whose server half is another module that is not registered.

    @param name: a key of L{SERVER_PROTOCOLS}.
    @param why: what the test needs it for.
    """
    if name not in SERVER_PROTOCOLS:
        raise SkipTest(f"rpcd serves no {name!r} protocol yet (SERVER_PROTOCOLS): needed {why}")


def echo_config() -> str:
    """
    @return: the path of a config for L{Daemon.shared}: the shipped default
        plus the test-only C{Echo} service (L{tests.echoservice}).
    """
    default = (ROOT / "rpcd" / "default.toml").read_text()
    return shared_config(default + '\n[services.Echo]\nclass = "tests.echoservice:Echo"\n')


async def run_go(test: TestCase, name: str, *args: str,
                 seed_port: int | None = None) -> tuple[int | None, str, str]:
    """
    Build and run a Go program to completion.

    @param seed_port: for a seed program, the port it dials.
    @return: C{(exit code, stdout, stderr)}.
    """
    binary = await go_program(test, name)
    return await run(test, [binary, *args],
                     env=None if seed_port is None else seed_environment(seed_port))


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


class SeedProgramTests(TestCase):
    """The seed documents' Go clients, unchanged but for their port, against the daemon."""

    timeout = 120

    async def daemon(self) -> Daemon:
        require_tool("go", "to build the seed programs")
        return await Daemon.shared(self, *LOOPBACK)

    async def seed(self, name: str) -> tuple[int | None, str, str]:
        """Start the daemon, then run a seed program built for its port."""
        daemon = await self.daemon()
        return await run_go(self, f"seeds/{name}", seed_port=daemon.port)

    async def test_000_http_client(self) -> None:
        """Seed 000's client: Cal.Square over rpc.DialHTTP to localhost."""
        require_protocol("http", "for rpc.DialHTTP (CONNECT /_goRPC_)")
        code, out, err = await self.seed("000_client")
        self.assertEqual(code, 0, err)
        self.assertRegex(err, r"(?m) 12\^2 = 144$")

    async def test_000_http_async_client(self) -> None:
        """Seed 000's asynchronous client (client.Go, then <-Done) gets 12^2 = 144."""
        require_protocol("http", "for rpc.DialHTTP (CONNECT /_goRPC_)")
        code, out, err = await self.seed("000_client_async")
        self.assertEqual(code, 0, err)
        self.assertTrue(lines(err)[-1].endswith(" 12^2 = 144"), err)

    async def test_001_watch_beside_set(self) -> None:
        """Seed 001's Watch in a goroutine beside Set on one client prints the changed key."""
        daemon = await self.daemon()
        binary = await go_program(self, "seeds/001_kvstore_client")
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        # The seed races its own Set against its Watch goroutine: the Set may
        # arrive first.  So abc also changes while the program waits.
        running = Deferred.fromCoroutine(run(self, [binary], env=seed_environment(daemon.port)))
        n = 0
        while not running.called:
            n += 1
            await client.KVStoreService.Set(["abc", f"changed-{n}"])
            await deferLater(reactor, 0.2, lambda: None)
        code, out, err = await running
        self.assertEqual(code, 0, err)
        self.assertEqual(lines(out), ["watch: abc"])

    async def test_001_hello_needs_login(self) -> None:
        """Seed 001's asynchronous Hello without a Login fails with the seed's "please login"."""
        code, out, err = await self.seed("001_hello_client")
        self.assertEqual(code, 1)
        self.assertRegex(err, r"(?m) please login$")

    async def test_002_http_client(self) -> None:
        """Seed 002's HTTP client: ServiceA.Add sync and async over rpc.DialHTTP."""
        require_protocol("http", "for rpc.DialHTTP (CONNECT /_goRPC_)")
        code, out, err = await self.seed("002_http_client")
        self.assertEqual((code, lines(out)), (0, ["ServiceA.Add: 10+20=30", "<nil>", "30"]), err)

    async def test_002_tcp_client(self) -> None:
        """Seed 002's TCP (gob) client: ServiceA.Add sync and async."""
        code, out, err = await self.seed("002_tcp_client")
        self.assertEqual((code, lines(out)), (0, ["ServiceA.Add: 10+20=30", "<nil>", "30"]), err)

    async def test_002_json_client(self) -> None:
        """Seed 002's jsonrpc client: ServiceA.Add sync and async."""
        require_protocol("json", "for net/rpc/jsonrpc")
        code, out, err = await self.seed("002_json_client")
        self.assertEqual((code, lines(out)), (0, ["ServiceA.Add: 10+20=30", "<nil>", "30"]), err)

    async def test_004_client(self) -> None:
        """Seed 004's client: Arith.Multiply{7, 8} via rpc.Dial to localhost."""
        code, out, err = await self.seed("004_client")
        self.assertEqual((code, lines(out)), (0, ["Arith.Multiply: 56"]), err)


class GoClientTests(TestCase):
    """rpcd's own Go client programs (tests/go/gobcalls) against the daemon."""

    timeout = 120

    async def gobcalls(self, *args: str) -> list[str]:
        require_tool("go", "to build tests/go/gobcalls")
        daemon = await Daemon.shared(self, "--config", echo_config(), *LOOPBACK)
        mark = len(daemon.output)
        code, out, err = await run_go(self, "gobcalls", "-addr", f"127.0.0.1:{daemon.port}", *args)
        self.assertEqual(code, 0, out + err)
        self.assertNotIn("Traceback", daemon.output[mark:])
        return lines(out)

    BASIC = [
        "sync Arith.Multiply 56 <nil>",
        "async Cal.Square 12^2 = 144 <nil>",
        "ServiceA.Add 30 <nil>",
        "unknown service: rpc: can't find service Nope.Multiply",
        "unknown method: rpc: can't find method Arith.Nope",
        "ill-formed: rpc: service/method request ill-formed: Bad",
        "wrong argument type: gob: type mismatch: cannot decode string into Args",
        "service error: not found",
        "after errors Arith.Multiply 42 <nil>",
    ]

    async def test_basic(self) -> None:
        """Sync and async calls; unknown names get Go's exact errors and the connection goes on."""
        self.assertEqual(await self.gobcalls("basic"), self.BASIC)

    async def test_basic_over_http(self) -> None:
        """The same calls over rpc.DialHTTP (CONNECT /_goRPC_, then gob)."""
        require_protocol("http", "for rpc.DialHTTP (CONNECT /_goRPC_)")
        self.assertEqual(await self.gobcalls("-http", "basic"), self.BASIC)

    async def test_concurrent(self) -> None:
        """200 calls in flight on one connection (client.Go in goroutines) all get their replies."""
        self.assertEqual(await self.gobcalls("concurrent"), ["concurrent 200 calls, 0 bad"])

    async def test_concurrent_over_http(self) -> None:
        """200 calls in flight over rpc.DialHTTP."""
        require_protocol("http", "for rpc.DialHTTP (CONNECT /_goRPC_)")
        self.assertEqual(await self.gobcalls("-http", "concurrent"), ["concurrent 200 calls, 0 bad"])

    async def test_watch_beside_set(self) -> None:
        """A Watch in flight beside a Set on one client returns the key; an idle Watch times out."""
        self.assertEqual(await self.gobcalls("kv"), [
            "Set <nil>", "watch: abc <nil>", "Get abc-value-kv <nil>", "idle watch: timeout"])

    async def test_login_per_connection(self) -> None:
        """Login holds for its connection only; Hello names the caller's address."""
        out = await self.gobcalls("login")
        self.assertEqual(out[:3], ["one Hello before Login: please login",
                                   "one Login wrong: auth failed", "one Login: <nil>"])
        self.assertRegex(out[3], r"^one Hello: hello:a, from127\.0\.0\.1:\d+ <nil>$")
        self.assertEqual(out[4:], ["two Hello: please login"])

    async def test_rich_types_echoed(self) -> None:
        """Nested structs, slices, maps, []byte, uint, floats, bools and pointers come back equal."""
        self.assertEqual(await self.gobcalls("echo"), [
            "Echo.Plain rich equal=true <nil>",
            "Echo.Rich rich equal=true <nil>",
            'Echo.Plain string "héllo" <nil>',
            "Echo.Plain ints [1 -1 1099511627776] <nil>",
            "Echo.Plain map map[pi:3.25] <nil>",
            "Echo.Nothing <nil>",
            "Echo.Fail it broke",
        ])


class GoServerTests(TestCase):
    """rpcd's client (library and command) calling a Go net/rpc server."""

    timeout = 120

    async def go_server(self) -> dict[str, str]:
        """
        Start tests/go/arithserver.

        @return: C{{"gob": "127.0.0.1:PORT", "http": "127.0.0.1:PORT"}}.
        """
        binary = await go_program(self, "arithserver")
        output = _Output()
        process = reactor.spawnProcess(output, binary, [binary], env=environment())

        async def stop() -> None:
            if output.running:
                process.signalProcess(signal.SIGKILL)
            await output.ended
        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        pattern = re.compile(r"(?m)^http (\S+)$")
        await output.wait_for(pattern.search, "the Go server's ports", 30)
        return dict(re.findall(r"(?m)^(gob|http) (\S+)$", output.text))

    async def check_client(self, address: str, codec: str) -> None:
        client = await connect(f"tcp:{address}", codec=codec)
        self.addCleanup(client.close)
        self.assertEqual(await client.Arith.Multiply(A=7, B=8), 56)
        self.assertEqual(await client.call("Arith.Divide", {"a": 7, "b": 2}), {"Num": 3, "Ans": 1})
        self.assertIsNone(await client.call("Arith.Set", ("k", "v")))
        with self.assertRaises(RPCError) as cm:
            await client.call("Arith.Divide", {"A": 1, "B": 0})
        self.assertEqual(cm.exception.message, "divide by zero")
        with self.assertRaises(Unimplemented) as cm:
            await client.call("Arith.Nope", 1)
        self.assertEqual(cm.exception.message, "rpc: can't find method Arith.Nope")
        with self.assertRaises(RPCError) as cm:
            await client.call("Arith.Multiply", "seven")
        self.assertIn("gob", cm.exception.message)
        products = await gatherResults([client.Arith.Multiply(A=i, B=3) for i in range(200)])
        self.assertEqual(products, [3 * i for i in range(200)])
        # No cancel in net/rpc: the timed-out call's late reply is skipped.
        slow = client.call("Arith.Sleep", 300)
        with self.assertRaises(DeadlineExceeded):
            await client.call("Arith.Sleep", 500, timeout=0.1)
        self.assertEqual(await gatherResults([slow, client.call("Arith.Sleep", 600)]), [300, 600])
        self.assertEqual(await client.Arith.Multiply(A=2, B=3), 6)

    async def test_client_library_gob(self) -> None:
        """connect(codec="gob") calls a Go server: structs, errors, 200 concurrent calls, timeouts."""
        ports = await self.go_server()
        await self.check_client(ports["gob"], "gob")

    async def test_client_library_gob_http(self) -> None:
        """connect(codec="gob-http") does Go's CONNECT /_goRPC_ handshake, then the same."""
        ports = await self.go_server()
        await self.check_client(ports["http"], "gob-http")

    async def test_gob_http_to_a_plain_gob_port(self) -> None:
        """gob-http against a port that does not answer CONNECT fails to connect, clearly."""
        ports = await self.go_server()
        # Go's gob server reads the CONNECT line as the start of a gob message
        # and waits for the rest: the handshake's timeout is what ends it.
        with self.assertRaises(Unavailable) as raised:
            await connect(f"tcp:{ports['gob']}", codec="gob-http", connect_timeout=1)
        self.assertIn("does it speak this protocol?", str(raised.exception))

    async def test_rpcd_command(self) -> None:
        """rpcd call --codec gob / gob-http calls the Go server; a Go error exits 1 with its text."""
        ports = await self.go_server()
        for codec, address in (("gob", ports["gob"]), ("gob-http", ports["http"])):
            code, out, err = await rpcd(self,
                "call", "--codec", codec, f"tcp:{address}", "Arith.Multiply", '{"A": 7, "B": 8}')
            self.assertEqual((code, out.strip()), (0, "56"), err)
            code, out, err = await rpcd(self,
                "call", "--codec", codec, f"tcp:{address}", "Arith.Divide", '{"A": 7, "B": 0}')
            self.assertEqual(code, 1, out + err)
            self.assertIn("divide by zero", err)

    async def test_client_library_against_rpcd(self) -> None:
        """connect(codec="gob") also calls rpcd itself (dicts become structs for hinted methods)."""
        daemon = await Daemon.shared(self, *LOOPBACK)
        client = await connect(f"tcp:127.0.0.1:{daemon.port}", codec="gob")
        self.addCleanup(client.close)
        self.assertEqual(await client.Arith.Multiply(A=7, B=8), 56)
        self.assertEqual(await client.ServiceA.Add(x=10, y=50), 60)
        self.assertEqual(await client.Cal.Square(12), {"Num": 12, "Ans": 144})


class HostileGobTests(TestCase):
    """Random and mutated gob streams on raw sockets against the live daemon."""

    timeout = 180

    async def test_mutated_streams(self) -> None:
        """300 connections of mutated Go sessions: the daemon still answers and logs no traceback."""
        daemon = await Daemon.start(self, *LOOPBACK)
        port = daemon.port
        await deferToThread(_hostile_connections, port, 300, random.Random(20261123))
        client = await connect(f"tcp:127.0.0.1:{port}", codec="gob")
        self.addCleanup(client.close)
        self.assertEqual(await client.Arith.Multiply(A=6, B=7), 42)
        await daemon.wait_for_log(r"malformed gob stream", timeout=10)
        self.assertNotIn("Traceback", daemon.output)
        self.assertNotIn("Unhandled", daemon.output)


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """One random change of the kinds that break a gob stream's structure."""
    buf = bytearray(data)
    kind = rng.randrange(6)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(buf))
        if kind == 0:  # any byte
            buf[i] = rng.randrange(256)
        elif kind == 1:  # lengths, counts and deltas: small and huge
            buf[i] = rng.choice([0, 1, 0x7F, 0x80, 0xF8, 0xFC, 0xFE, 0xFF])
        elif kind == 2:  # type ids (64..80 on the wire as ff 80..ff a0)
            buf[i:i + 2] = bytes([0xFF, rng.randrange(0x80, 0xA4)])
        elif kind == 3:  # insert
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 4:  # delete
            del buf[i:i + rng.randint(1, 8)]
        else:  # truncate
            del buf[i:]
            break
        if not buf:
            buf = bytearray(b"\x01")
    return bytes(buf)


def _hostile_connections(port: int, count: int, rng: random.Random) -> None:
    """
    Send mutated copies of a Go client's session (and pure noise), each on its
    own connection, and read until the daemon closes it.  Runs in a thread.
    """
    for n in range(count):
        if n % 10 == 9:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
        else:
            data = _mutate(C2S, rng)
        if data[:1] == b"\x00":
            data = b"\x01" + data[1:]  # a zero byte first would be the native protocol
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            try:
                raw.sendall(data)
                raw.shutdown(socket.SHUT_WR)
                while raw.recv(65536):
                    pass
            except (ConnectionResetError, BrokenPipeError):
                pass

