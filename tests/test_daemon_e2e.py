"""
End-to-end tests of the foundation: the real C{twistd -n rpcd} on loopback,
called with the client library, the C{rpcd} command and the blocking client.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
from pathlib import Path

from twisted.internet.defer import CancelledError, gatherResults
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from rpcd.client import connect
from rpcd.errors import DeadlineExceeded, NotFound, Unauthenticated, Unavailable, Unimplemented
from rpcd.config import DEFAULT_BACKLOG
from tests.cli import rpcd
from tests.daemon import Daemon, rpcd_command, run, run_twistd, temp_dir
from tests.tools import require_tool

LOOPBACK = ("--listen", "tcp:0:interface=127.0.0.1")



class DaemonTests(TestCase):
    """The daemon on its embedded default config, on a free port."""

    timeout = 60

    async def test_seed_services_with_client_library(self) -> None:
        """The client library calls every seed service on the real daemon."""
        daemon = await Daemon.shared(self, *LOOPBACK)
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        self.assertEqual(await client.Arith.Multiply(A=7, B=8), 56)
        self.assertEqual(await client.Cal.Square(12), {"Num": 12, "Ans": 144})
        self.assertEqual(await client.ServiceA.Add(x=10, y=50), 60)
        with self.assertRaises(Unauthenticated) as cm:
            await client.HelloService.Hello("x")
        self.assertEqual(cm.exception.message, "please login")
        await client.HelloService.Login("user:password")
        local = client.channel.transport.getHost()
        self.assertEqual(await client.HelloService.Hello("hi"),
                         f"hello:hi, from127.0.0.1:{local.port}")
        with self.assertRaises(Unimplemented):
            await client.call("Nope.Method", 1)
        self.assertEqual(await client.Arith.Multiply(A=2, B=3), 6)

    async def test_wrong_password_and_login_per_connection(self) -> None:
        """A wrong password fails; a login does not carry over to a new connection."""
        daemon = await Daemon.shared(self, *LOOPBACK)
        one = await connect(f"tcp:127.0.0.1:{daemon.port}")
        two = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(one.close)
        self.addCleanup(two.close)
        with self.assertRaises(Unauthenticated) as cm:
            await one.HelloService.Login("user:wrong")
        self.assertEqual(cm.exception.message, "auth failed")
        await one.HelloService.Login("user:password")
        await one.HelloService.Hello("a")
        with self.assertRaises(Unauthenticated):
            await two.HelloService.Hello("b")

    async def test_watch_beside_set_and_many_in_flight(self) -> None:
        """Many Watches and hundreds of calls share one connection; Set wakes the Watches."""
        daemon = await Daemon.shared(self, *LOOPBACK)
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        watches = [client.KVStoreService.Watch(30) for _ in range(20)]
        products = [client.Arith.Multiply(A=i, B=3) for i in range(500)]
        self.assertEqual(await gatherResults(products), [3 * i for i in range(500)])
        await client.KVStoreService.Set(["abc", "abc-value"])
        self.assertEqual(await gatherResults(watches), ["abc"] * 20)
        self.assertEqual(await client.KVStoreService.Get("abc"), "abc-value")
        with self.assertRaises(NotFound):
            await client.KVStoreService.Get("zzz")

    async def test_watch_timeout_cancel_and_set_from_another_connection(self) -> None:
        """On the real daemon, a short Watch times out and a cancelled one ends while a long one beside them waits for a Set on another connection."""
        daemon = await Daemon.shared(self, *LOOPBACK)
        one = await connect(f"tcp:127.0.0.1:{daemon.port}")
        two = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(one.close)
        self.addCleanup(two.close)
        waiting = one.KVStoreService.Watch(600)
        cancelled = one.KVStoreService.Watch(600)
        short = one.KVStoreService.Watch(1)
        cancelled.cancel()
        with self.assertRaises(CancelledError):
            await cancelled
        with self.assertRaises(DeadlineExceeded) as cm:
            await short
        self.assertEqual(cm.exception.message, "timeout")  # the store's own, not a deadline's
        self.assertFalse(waiting.called)
        await two.KVStoreService.Set(["watch-e2e", os.urandom(8).hex()])
        self.assertEqual(await waiting, "watch-e2e")

    async def test_timeout_and_lost_connection(self) -> None:
        """A client timeout fails clearly; stopping the daemon (twice: no grace) fails pending calls."""
        daemon = await Daemon.start(self, *LOOPBACK)
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        with self.assertRaises(DeadlineExceeded) as cm:
            await client.call("KVStoreService.Watch", 30, timeout=0.2)
        # The client's timer and the server's deadline (sent with the call)
        # race: either may fail the call first, each in its own words.
        self.assertRegex(cm.exception.message, r"^KVStoreService\.Watch did not (answer within "
                                               r"|finish within its deadline of )0\.2 s")
        pending = client.KVStoreService.Watch(30)
        await client.Arith.Multiply(A=1, B=1)
        self.assertEqual(await daemon.stop(at_once=True), 0)
        with self.assertRaises(Unavailable):
            await pending

    async def test_garbage_closes_only_that_connection(self) -> None:
        """Malformed and oversized frames close that connection with a logged reason; others are served."""
        daemon = await Daemon.shared(self, *LOOPBACK)
        mark = len(daemon.output)
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        for garbage in (b"\x00RPCD\x01\x00\x00" + struct.pack(">I", 64 * 1024 * 1024),
                        b"\x00RPCD\x01\x00\x00" + struct.pack(">I", 2) + b"\xc1\xc1"):
            with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as raw:
                raw.sendall(garbage)
                received = b""
                while chunk := raw.recv(65536):
                    received += chunk
            self.assertIn(b"protocol error", received)
        await daemon.wait_for_log(r"over the 4194304-byte limit", after=mark)
        await daemon.wait_for_log(r"not valid msgpack", after=mark)
        self.assertEqual(await client.Arith.Multiply(A=6, B=7), 42)
        self.assertNotIn("Traceback", daemon.output[mark:])


def _flood(port: int, count: int) -> list[object]:
    """
    Open C{count} connections at once, then make one Go jsonrpc call on each.

    @return: each call's result, in order.
    """
    sockets = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=120))
        for i, s in enumerate(sockets):
            s.sendall(json.dumps({"method": "Arith.Multiply", "params": [{"A": i, "B": 2}],
                                  "id": i}).encode() + b"\n")
        results = []
        for s in sockets:
            with s.makefile("rb") as replies:
                results.append(json.loads(replies.readline())["result"])
        return results
    finally:
        for s in sockets:
            s.close()


class BacklogTests(TestCase):
    """The daemon listens with a backlog that takes a connect flood."""

    timeout = 120

    async def test_listen_queue_length(self) -> None:
        """The listening socket's queue length is DEFAULT_BACKLOG by default and server.backlog when set."""
        ss = require_tool("ss", "to read a listening socket's queue length")
        path = Path(temp_dir(self)) / "rpcd.toml"
        path.write_text("[server]\nbacklog = 333\nlisten = ['tcp:0:interface=127.0.0.1']\n"
                        "[services.Arith]\n")
        for args, expected in [(LOOPBACK, DEFAULT_BACKLOG), (("--config", str(path)), 333)]:
            daemon = await Daemon.start(self, *args)
            code, out, err = await run(self, [ss, "-ltnH", f"sport = :{daemon.port}"])
            self.assertEqual(code, 0, err)
            # For a listening socket ss shows the backlog as Send-Q.
            state, recv_q, send_q, *_ = out.split()
            self.assertEqual((state, int(send_q)), ("LISTEN", expected), out)
            await daemon.stop()

    async def test_connect_flood_all_served(self) -> None:
        """500 connections opened at once are all accepted and each call on them answered."""
        daemon = await Daemon.shared(self, *LOOPBACK)
        mark = len(daemon.output)
        results = await deferToThread(_flood, daemon.port, 500)
        self.assertEqual(results, [2 * i for i in range(500)])
        self.assertNotIn("Traceback", daemon.output[mark:])
        self.assertNotIn("refusing connection", daemon.output[mark:])


class CommandTests(TestCase):
    """The rpcd command against the real daemon."""

    timeout = 60

    async def test_call_list_and_errors(self) -> None:
        """rpcd call prints JSON and exits 0; remote errors exit 1; rpcd list shows signatures."""
        daemon = await Daemon.shared(self, *LOOPBACK)
        endpoint = f"tcp:127.0.0.1:{daemon.port}"
        code, out, err = await run(self, rpcd_command("call", endpoint, "Arith.Multiply", '{"A": 7, "B": 8}'))
        self.assertEqual((code, out, err), (0, "56\n", ""))
        code, out, _ = await run(self, rpcd_command("call", endpoint, "Cal.Square", "12"))
        self.assertEqual((code, out), (0, '{"Num": 12, "Ans": 144}\n'))
        code, out, err = await run(self, rpcd_command("call", endpoint, "KVStoreService.Get", '"nope"'))
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, "rpcd: KVStoreService.Get failed: NOT_FOUND: not found\n")
        code, out, _ = await run(self, rpcd_command("list", endpoint))
        self.assertEqual(code, 0)
        self.assertIn("Arith.Multiply(args: Args) -> int  Return A times B.\n", out)
        self.assertIn("KVStoreService.Watch(timeoutSecond: int) -> str", out)

    async def test_usage_errors(self) -> None:
        """Bad JSON and an unreachable endpoint exit 2 with a message."""
        code, _, err = await rpcd(self, "call", "tcp:127.0.0.1:1", "A.B", "{bad")
        self.assertEqual(code, 2)
        self.assertIn("not valid JSON", err)
        code, _, err = await rpcd(self, "call", "tcp:127.0.0.1:1", "A.B", "1")
        self.assertEqual(code, 2)
        self.assertIn("cannot connect to tcp:127.0.0.1:1", err)

    async def test_blocking_client(self) -> None:
        """The blocking wrapper calls from a script with no reactor of its own."""
        daemon = await Daemon.shared(self, *LOOPBACK)
        script = (
            "import sys\n"
            "from rpcd.client import BlockingClient\n"
            "from rpcd.errors import NotFound\n"
            f"with BlockingClient('tcp:127.0.0.1:{daemon.port}') as c:\n"
            "    print(c.Arith.Multiply(A=7, B=8))\n"
            "    print(c.call('Cal.Square', 3))\n"
            "    try:\n"
            "        c.KVStoreService.Get('x')\n"
            "    except NotFound as e:\n"
            "        print('error', e.code, e.message)\n"
            "    try:\n"
            "        c.call(5)\n"
            "    except TypeError:\n"
            "        print('TypeError')\n"
            "    import threading\n"
            "    answers = []\n"
            "    def work(k):\n"
            "        for i in range(20):\n"
            "            answers.append(c.Arith.Multiply(A=k, B=i) == k * i)\n"
            "    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]\n"
            "    for t in threads: t.start()\n"
            "    for t in threads: t.join()\n"
            "    print(len(answers), all(answers))\n"
        )
        code, out, err = await run(self, [sys.executable, "-c", script])
        self.assertEqual((code, out), (0, "56\n{'Num': 3, 'Ans': 9}\nerror 5 not found\nTypeError\n"
                                          "160 True\n"), err)


class StartupTests(TestCase):
    """The daemon refuses to start half-configured."""

    timeout = 60

    async def test_bad_config_stops_startup(self) -> None:
        """An unknown key stops twistd with a message naming the key and the file."""
        directory = temp_dir(self)
        bad = Path(directory) / "bad.toml"
        bad.write_text("[limits]\nmax_frame = 5\n")
        code, out, err = await run_twistd(self, "-n", "--pidfile=", "rpcd", "--config", str(bad))
        self.assertNotEqual(code, 0)
        self.assertIn(f"{bad}: [limits] unknown key 'max_frame'", out + err)

    async def test_port_in_use_stops_startup(self) -> None:
        """A port already taken stops twistd with one line naming the endpoint and the OS's reason."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        code, out, err = await run_twistd(self, "-n", "--pidfile=", "rpcd", "--listen", endpoint)
        self.assertEqual(code, 1)
        self.assertIn(f"rpcd cannot listen on {endpoint!r}: [Errno 98] Address already in use", out)
        self.assertNotIn("Traceback", out + err)

    async def test_unix_path_too_long_stops_startup(self) -> None:
        """A Unix socket path past the OS's limit is reported as such, not as a traceback."""
        path = Path(temp_dir(self)) / ("s" * 120)
        code, out, err = await run_twistd(self, "-n", "--pidfile=", "rpcd", "--listen", f"unix:{path}")
        self.assertEqual(code, 1)
        self.assertIn(f"rpcd cannot listen on 'unix:{path}': AF_UNIX path too long", out)
        self.assertNotIn("Traceback", out + err)

    async def test_config_file_and_plugin_service(self) -> None:
        """A config file's services and options are served; a class path works beside plugins."""
        directory = temp_dir(self)
        path = Path(directory) / "rpcd.toml"
        path.write_text(
            '[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
            '[services.Arith]\n'
            '[services.Times]\nclass = "rpcd.examples.arith:Arith"\n')
        daemon = await Daemon.start(self, "--config", str(path))
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        self.assertEqual(await client.Times.Multiply(A=3, B=5), 15)
        self.assertEqual(await client.Arith.Multiply(A=3, B=6), 18)
        with self.assertRaises(Unimplemented):
            await client.Cal.Square(2)
