"""
Schemas end to end against the real daemon on loopback: C{rpcd schema}
(JSON, checked against OpenRPC's structure, and C{--go}, compiled into a Go
program that calls the daemon with the generated structs over gob and
C{net/rpc/jsonrpc}), C{GET /openrpc.json} and C{rpc.discover} with curl
(filtered by login as C{rpcd list} is), and C{rpcd stubs}: the module and
a program using it type-checked by mypy, then run against the daemon, and
the awaited classes called from Twisted.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from rpcd.client import connect
from tests.cli import rpcd
from tests.daemon import ROOT, Daemon, rpcd_command, run, shared_config, temp_dir
from tests.openrpc_meta import problems
from tests.test_http_e2e import config_text, curl, post, rpc
from tests.test_stubs import load, stubs_mypy_cache
from tests.tools import missing, require_tool

LOOPBACK = ("--listen", "tcp:0:interface=127.0.0.1")
SERVICES = """
[services.Arith]
[services.Cal]
[services.HelloService]
[services.KVStoreService]
require_login = true
[services.HelloWorldService]
class = "rpcd.examples.helloworld:HelloWorldService"
[services.HelloWorldService.options]
delay = 0.0
"""

PROGRAM = """\
from rpcd.client import BlockingClient

from rpcd_api import Args, BlockingServices, Result


def main(endpoint: str) -> None:
    with BlockingClient(endpoint) as client:
        api = BlockingServices(client)
        product: int = api.Arith.Multiply(Args(A=7, B=8))
        square: Result = api.Cal.Square(12)
        api.HelloService.Login("user:password")
        greeting: str = api.HelloService.Hello("stub")
        print(product, square.Ans, square == Result(Num=12, Ans=144), greeting)


if __name__ == "__main__":
    import sys
    main(sys.argv[1])
"""

WRONG_PROGRAM = """\
from rpcd.client import BlockingClient

from rpcd_api import BlockingServices


def main(client: BlockingClient) -> str:
    return BlockingServices(client).Arith.Multiply({"A": 7, "B": 8})
"""

GO_PROGRAM = """\
package main

import (
	"fmt"
	"net/rpc"
	"net/rpc/jsonrpc"
	"os"
)

func main() {
	gob, err := rpc.Dial("tcp", os.Args[1])
	if err != nil {
		panic(err)
	}
	var product int
	if err := gob.Call("Arith.Multiply", &Args{A: 7, B: 8}, &product); err != nil {
		panic(err)
	}
	var square Result
	if err := gob.Call("Cal.Square", 12, &square); err != nil {
		panic(err)
	}
	js, err := jsonrpc.Dial("tcp", os.Args[1])
	if err != nil {
		panic(err)
	}
	var viaJSON Result
	if err := js.Call("Cal.Square", 9, &viaJSON); err != nil {
		panic(err)
	}
	var document map[string]any
	if err := js.Call("rpc.discover", nil, &document); err != nil {
		panic(err)
	}
	fmt.Println(product, square.Num, square.Ans, viaJSON.Ans, document["openrpc"])
}
"""


def _names(document: dict[str, Any]) -> list[str]:
    return [m["name"] for m in document["methods"]]


class SchemaE2ETests(TestCase):
    """The document from the real daemon, through each entry point."""

    async def start(self) -> Daemon:
        return await Daemon.shared(self, "--config", shared_config(config_text("", SERVICES)), *LOOPBACK)

    async def rpcd(self, *args: str, cwd: str | None = None) -> str:
        code, out, err = await rpcd(self, *args, cwd=cwd)
        self.assertEqual(code, 0, err)
        return out

    async def test_schema_command(self) -> None:
        """rpcd schema prints a valid OpenRPC document without the login-gated service, the same over Go's jsonrpc."""
        daemon = await self.start()
        endpoint = f"tcp:127.0.0.1:{daemon.port}"
        document = json.loads(await self.rpcd("schema", endpoint))
        self.assertEqual(problems(document), [])
        names = _names(document)
        for name in ("Arith.Multiply", "Cal.Square", "HelloService.Login",
                     "HelloWorldService.ListHello", "Introspection.List"):
            self.assertIn(name, names)
        self.assertFalse([n for n in names if n.startswith(("KVStoreService.", "rpc."))], names)
        self.assertEqual(document["components"]["schemas"]["Args"]["properties"],
                         {"A": {"type": "integer"}, "B": {"type": "integer"}})
        over_json = json.loads(await self.rpcd("schema", "--codec", "jsonrpc", endpoint))
        self.assertEqual(_names(over_json), names)

    async def test_http(self) -> None:
        """GET /openrpc.json and rpc.discover over POST /rpc answer the document; a Basic login adds the gated service."""
        daemon = await self.start()
        base = f"http://127.0.0.1:{daemon.port}"
        served = json.loads(await curl(self, f"{base}/openrpc.json"))
        self.assertEqual(problems(served), [])
        self.assertIn("Arith.Multiply", _names(served))
        self.assertNotIn("KVStoreService.Get", _names(served))
        answer = json.loads(await curl(self, *post(rpc("rpc.discover")), f"{base}/rpc"))
        self.assertEqual(answer["result"], served)
        logged_in = json.loads(await curl(self, "-u", "user:password",
                                          *post(rpc("rpc.discover")), f"{base}/rpc"))
        self.assertIn("KVStoreService.Get", _names(logged_in["result"]))
        saved = Path(temp_dir(self), "discover.json")
        saved.write_text(json.dumps(logged_in))
        stub = await self.rpcd("stubs", "--document", str(saved), "-o", "-")
        self.assertIn("class KVStoreServiceClient:", stub)
        refused = await curl(self, "--write-out", "\n%{http_code}", "-X", "POST",
                             f"{base}/openrpc.json")
        self.assertTrue(refused.endswith("\n405"), refused)

    async def test_native_discover_after_login(self) -> None:
        """rpc.discover over rpcd's native protocol lists the gated service once the connection logged in."""
        daemon = await self.start()
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        before = await client.call("rpc.discover", timeout=10)
        await client.call("HelloService.Login", "user:password", timeout=10)
        after = await client.call("rpc.discover", timeout=10)
        self.assertNotIn("KVStoreService.Set", _names(before))
        self.assertIn("KVStoreService.Set", _names(after))
        self.assertEqual(problems(after), [])

    async def test_stubs_checked_and_run(self) -> None:
        """rpcd stubs writes a module that mypy --strict accepts with a program using it, which then calls the daemon; a wrong call fails mypy."""
        try:
            import mypy.api  # noqa: F401
        except ImportError:
            missing("mypy is not installed (pip install -e '.[test]' installs it)")
        daemon = await self.start()
        endpoint = f"tcp:127.0.0.1:{daemon.port}"
        directory = Path(temp_dir(self))
        code, out, err = await run(self, rpcd_command("stubs", endpoint, "-o", "rpcd_api.py"),
                                   cwd=str(directory))
        self.assertEqual(code, 0, err)
        self.assertRegex(err, r"wrote rpcd_api\.py: \d+ methods, \d+ types")
        (directory / "program.py").write_text(PROGRAM)
        (directory / "wrong.py").write_text(WRONG_PROGRAM)
        check = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                "--config-file", "", "--cache-dir", str(stubs_mypy_cache())]
        env = {"MYPYPATH": str(ROOT)}
        code, out, err = await run(self, [*check, "rpcd_api.py", "program.py"], env=env,
                                   cwd=str(directory))
        self.assertEqual(code, 0, out + err)
        code, out, err = await run(self, [*check, "rpcd_api.py", "wrong.py"], env=env,
                                   cwd=str(directory))
        self.assertEqual(code, 1, out + err)
        self.assertIn('Argument 1 to "Multiply" of "ArithBlockingClient" has incompatible type '
                      '"dict[str, int]"; expected "Args"', out)
        self.assertIn('Incompatible return value type (got "int", expected "str")', out)
        code, out, err = await run(self, [sys.executable, "program.py", endpoint], cwd=str(directory))
        self.assertEqual((code, out.split()[:3]), (0, ["56", "144", "True"]), err)
        self.assertIn("hello:stub", out)

    test_stubs_checked_and_run.timeout = 300  # type: ignore[attr-defined]  # trial reads it

    async def test_awaited_stubs(self) -> None:
        """The stub's awaited classes call the daemon from Twisted: a unary call, a typed server stream, a login and the gated service."""
        daemon = await self.start()
        endpoint = f"tcp:127.0.0.1:{daemon.port}"
        directory = temp_dir(self)
        await self.rpcd("stubs", endpoint, "-o", os.path.join(directory, "api.py"))
        stub = load(self, Path(directory, "api.py").read_text(), "rpcd_e2e_api")
        client = await connect(endpoint)
        self.addCleanup(client.close)
        api = stub.Services(client)
        self.assertEqual(await api.Arith.Multiply(stub.Args(A=6, B=7), timeout=10), 42)
        replies = [r async for r in api.HelloWorldService.ListHello(
            stub.HelloWorldRequest(greeting="hi"), timeout=10)]
        self.assertEqual([type(r).__name__ for r in replies], ["HelloWorldResponse"] * 3)
        self.assertTrue(all(r.reply for r in replies), replies)
        self.assertFalse(hasattr(api, "KVStoreService"))  # the stub was written before a login
        await api.HelloService.Login("user:password", timeout=10)
        after = await client.call("rpc.discover", timeout=10)
        self.assertIn("KVStoreService.Get", _names(after))

    async def test_go_structs(self) -> None:
        """rpcd schema --go writes Go types a Go program compiles and uses to call the daemon over gob and jsonrpc."""
        go = require_tool("go", "to compile the Go types rpcd schema --go prints")
        from tests.test_go_e2e import go_environment
        daemon = await self.start()
        address = f"127.0.0.1:{daemon.port}"
        directory = Path(temp_dir(self))
        types_source = await self.rpcd("schema", "--go", "--go-package", "main", f"tcp:{address}")
        self.assertIn("type Args struct {", types_source)
        (directory / "types.go").write_text(types_source)
        (directory / "main.go").write_text(GO_PROGRAM)
        (directory / "go.mod").write_text("module schemacheck\n\ngo 1.18\n")
        gofmt = require_tool("gofmt", "to check the layout of the Go types")
        code, out, err = await run(self, [gofmt, "-l", "types.go"], cwd=str(directory))
        self.assertEqual((code, out, err), (0, "", ""))
        code, out, err = await run(self, [go, "build", "-o", "schemacheck", "."],
                                   env=go_environment(), cwd=str(directory))
        self.assertEqual(code, 0, out + err)
        code, out, err = await run(self, [str(directory / "schemacheck"), address], cwd=str(directory))
        self.assertEqual((code, out.split()), (0, ["56", "12", "144", "81", "1.3.2"]), err)

    test_go_structs.timeout = 300  # type: ignore[attr-defined]  # trial reads it
