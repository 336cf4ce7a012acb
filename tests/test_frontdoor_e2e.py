"""
End-to-end tests of the front door, through each entry point with real
processes over loopback: a script calling C{rpcd.serve}, a user's package
loaded by C{twistd -n rpcd} from the working directory or
C{server.pythonpath}, config errors through the real twistd, Ctrl-C on
C{rpcd stream}, C{rpcd.daemon.embed.start} in a test, and a reverse connection
served to seed 001's Go caller.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from rpcd.daemon import embed
from rpcd.client import connect
from rpcd.examples.arith import Arith
from tests.cli import rpcd
from tests.daemon import (
    LISTENING,
    Daemon,
    _Output,
    _Split,
    environment,
    rpcd_command,
    run_twistd,
    temp_dir,
)

SCRIPT = '''
from twisted.internet.defer import Deferred

import rpcd
from rpcd.core.service import exposed


class Ticks:
    @exposed
    def Triple(self, n: int) -> int:
        return 3 * n

    @exposed
    async def Follow(self, start: int):
        yield start
        await Deferred()  # open until the caller goes


rpcd.serve([Ticks()], listen=["tcp:0:interface=127.0.0.1"], shutdown_grace=5)
print("serve returned", flush=True)
'''

PACKAGE = {
    "__init__.py": "",
    "mult.py": ("from rpcd.core.service import exposed\n\n\n"
                "class Mult:\n"
                "    def __init__(self, factor: int = 2) -> None:\n"
                "        self.factor = factor\n\n"
                "    @exposed\n"
                "    def Times(self, n: int) -> int:\n"
                "        return self.factor * n\n"),
}


def write_package(where: Path, name: str = "userpkg") -> None:
    """
    Write a user's package (C{NAME.mult:Mult}) into a directory.
    """
    (where / name).mkdir(parents=True)
    for file, text in PACKAGE.items():
        (where / name / file).write_text(text)


class _Lines(_Split):
    """A process whose standard output can be waited on, line by line."""

    def __init__(self) -> None:
        super().__init__()
        self.first_line: Deferred[str] = Deferred()

    def outReceived(self, data: bytes) -> None:
        super().outReceived(data)
        if b"\n" in self.out and not self.first_line.called:
            self.first_line.callback(self.out.decode().splitlines()[0])


def spawn(test: TestCase, argv: list[str], cwd: str | None = None,
          env: dict[str, str] | None = None) -> _Lines:
    """
    Start a program; it is killed in the test's cleanup if still running.

    @param env: extra environment variables.

    @return: its protocol (C{out}, C{err}, C{first_line}, C{ended}).
    """
    protocol = _Lines()
    process = reactor.spawnProcess(protocol, argv[0], argv, env={**environment(), **(env or {})},
                                   path=cwd or temp_dir(test))

    async def kill() -> None:
        if not protocol.ended.called:
            process.signalProcess("KILL")
            await protocol.ended
    test.addCleanup(kill)
    return protocol


async def rpcd_ok(test: TestCase, *args: str) -> str:
    """
    Run the rpcd command, which must succeed.

    @return: its standard output.
    """
    code, out, err = await rpcd(test, *args)
    test.assertEqual((code, err), (0, ""), out)
    return out


class ServeScriptTests(TestCase):
    """A script calling rpcd.serve, run as a program and called by the rpcd command."""

    timeout = 120

    async def start_script(self) -> Daemon:
        path = Path(temp_dir(self)) / "ticks.py"
        path.write_text(SCRIPT)
        output = _Output()
        argv = [sys.executable, str(path)]
        process = reactor.spawnProcess(output, sys.executable, argv, env=environment(),
                                       path=str(path.parent))
        script = Daemon(process, output)
        self.addCleanup(script.stop)
        found = await output.wait_for(lambda text: LISTENING.search(text), "the script listened", 60)
        script.ports.append(int(found.group(2)))
        return script

    async def test_serve_call_and_ctrl_c(self) -> None:
        """The script serves its object until Ctrl-C, which drains, returns from serve() and exits 0."""
        script = await self.start_script()
        endpoint = f"tcp:127.0.0.1:{script.port}"
        self.assertEqual(await rpcd_ok(self, "call", endpoint, "Ticks.Triple", "14"), "42\n")
        listing = await rpcd_ok(self, "list", endpoint)
        self.assertIn("Ticks.Follow(start: int) -> stream\n", listing)
        ended = script.output_protocol.ended
        script.process.signalProcess("INT")
        self.assertEqual(await ended, 0)
        self.assertIn("drained in", script.output)
        self.assertIn("serve returned", script.output)

    async def test_ctrl_c_on_stream_exits_130(self) -> None:
        """SIGINT to rpcd stream while a message has come exits 130 and prints nothing on stderr."""
        script = await self.start_script()
        stream = spawn(self, rpcd_command("stream", f"tcp:127.0.0.1:{script.port}", "Ticks.Follow", "7"))
        self.assertEqual(await stream.first_line, "7")
        stream.transport.signalProcess("INT")
        self.assertEqual(await stream.ended, 130)
        self.assertEqual((stream.out, stream.err), (b"7\n", b""))
        # Follow never ends, and the daemon keeps answering a connection its
        # peer half-closed: a drain would wait for it.
        await script.stop(at_once=True)

    async def test_local_encoding_error(self) -> None:
        """rpcd call --codec gob with an empty list fails locally, saying so, exit 2."""
        script = await self.start_script()
        code, out, err = await rpcd(self,
            "call", "--codec", "gob", f"tcp:127.0.0.1:{script.port}", "Ticks.Triple", "[]")
        self.assertEqual((code, out), (2, ""))
        self.assertIn("the gob codec cannot encode its argument", err)
        self.assertIn("nothing was sent", err)
        self.assertNotIn("UNKNOWN", err)


class EmbedStartTests(TestCase):
    """rpcd.daemon.embed.start in a test, with the real reactor."""

    async def test_start_gives_the_port(self) -> None:
        """start() listens on a free loopback port, serves the objects there, and stops."""
        running = await embed.start([Arith()])
        self.addCleanup(running.stop)
        self.assertEqual(running.endpoint, f"tcp:127.0.0.1:{running.port}")
        self.assertNotEqual(running.port, 0)
        client = await connect(running.endpoint)
        try:
            self.assertEqual(await client.Arith.Multiply(A=6, B=7), 42)
        finally:
            await client.close()


    async def test_start_cannot_listen(self) -> None:
        """start() on a port in use fails its Deferred with CannotListenError, not SystemExit."""
        from twisted.internet.error import CannotListenError
        running = await embed.start([Arith()])
        self.addCleanup(running.stop)
        with self.assertRaises(CannotListenError):
            await embed.start([Arith()], [f"tcp:{running.port}:interface=127.0.0.1"])


class UserPackageTests(TestCase):
    """A user's module:Class in the working directory or server.pythonpath, under twistd."""

    timeout = 120

    async def test_package_in_working_directory(self) -> None:
        """twistd -n rpcd run beside the user's package imports it, with its options."""
        cwd = Path(temp_dir(self))
        write_package(cwd)
        (cwd / "rpcd.toml").write_text(
            "[server]\nlisten = ['tcp:0:interface=127.0.0.1']\n"
            "[services.Mult]\nclass = 'userpkg.mult:Mult'\n"
            "[services.Mult.options]\nfactor = 5\n")
        daemon = await Daemon.start(self, "--config", "rpcd.toml", cwd=str(cwd))
        out = await rpcd_ok(self, "call", f"tcp:127.0.0.1:{daemon.port}", "Mult.Times", "3")
        self.assertEqual(out, "15\n")

    async def test_package_on_pythonpath(self) -> None:
        """A package under server.pythonpath, relative to the config file, is imported from elsewhere."""
        base = Path(temp_dir(self))
        write_package(base / "src", "otherpkg")
        (base / "etc").mkdir()
        (base / "etc" / "rpcd.toml").write_text(
            "[server]\nlisten = ['tcp:0:interface=127.0.0.1']\npythonpath = ['../src']\n"
            "[services.Mult]\nclass = 'otherpkg.mult:Mult'\n")
        daemon = await Daemon.start(self, "--config", str(base / "etc" / "rpcd.toml"))
        out = await rpcd_ok(self, "call", f"tcp:127.0.0.1:{daemon.port}", "Mult.Times", "4")
        self.assertEqual(out, "8\n")


class ConfigErrorTests(TestCase):
    """Config errors through the real twistd: one line naming the file and the key, exit 2."""

    timeout = 60

    async def twistd_fails(self, toml: str) -> str:
        path = Path(temp_dir(self)) / "bad.toml"
        path.write_text(toml)
        code, out, err = await run_twistd(self, "-n", "--pidfile=", "rpcd", "--config", str(path))
        self.assertEqual((code, out), (2, ""), err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith(f"rpcd: {path}: "), err)
        return err

    async def test_unknown_key(self) -> None:
        """An unknown key is one line with the file and the key, and no usage text."""
        err = await self.twistd_fails("[limits]\nmax_frame = 1\n")
        self.assertIn("[limits] unknown key 'max_frame'", err)

    async def test_bad_service_option(self) -> None:
        """A service's option its constructor rejects names the file, the service and the option."""
        err = await self.twistd_fails(
            "[server]\nlisten = ['tcp:0:interface=127.0.0.1']\n"
            "[services.Arith]\nclass = 'rpcd.examples.arith:Arith'\n"
            "[services.Arith.options]\ntabel = 1\n")
        self.assertIn("services.Arith.options: ", err)
        self.assertIn("'tabel'", err)

    async def test_bad_listen_option(self) -> None:
        """A malformed --listen is one line naming the option, exit 2."""
        code, out, err = await run_twistd(self, "-n", "--pidfile=", "rpcd", "--listen", "nope")
        self.assertEqual((code, out, err.count("\n")), (2, "", 1), err)
        self.assertIn("rpcd: --listen", err)


class ReverseGoCallerTests(TestCase):
    """The README's reverse connection serves seed 001's Go caller as written."""

    timeout = 180

    async def test_seed_001_reverse_caller(self) -> None:
        """The daemon dials the Go caller, tells gob from its first bytes, and answers its Hello."""
        from tests.test_go_e2e import go_program, seed_environment
        binary = await go_program(self, "seeds/001_reverse_caller")
        caller = spawn(self, [binary], env=seed_environment(0))
        line = await caller.first_line
        port = int(re.search(r":(\d+)$", line).group(1))
        config = Path(temp_dir(self)) / "rpcd.toml"
        config.write_text(f"[server]\nlisten = []\nconnect = ['tcp:127.0.0.1:{port}']\n\n"
                          "[services.HelloService.options]\nrequire_login = false\n")
        await Daemon.start(self, "--config", str(config), listeners=0)
        code = await caller.ended
        self.assertEqual(code, 0, caller.err)
        reply = caller.out.decode().splitlines()[1]
        self.assertTrue(reply.startswith("hello:hello, from127.0.0.1:"), reply)
