"""
End-to-end HTTP safety against the real daemon on loopback: curl refused for
a foreign C{Host} or C{Origin}, one session per request on a kept-alive
connection and HTTP Basic logins, the filtered and switchable C{/debug/rpc}, the bound on pipelined
requests (RSS stays flat while a raw socket pipelines without reading),
half-close, and curl over HTTPS (ALPN) to C{rpcd-tls:} and C{mtls:} listeners.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from rpcd import certs
from rpcd.client import connect
from tests.cli import rpcd
from tests.daemon import Daemon, run, shared_config, temp_dir
from tests.tools import require_tool

LOOPBACK = ("--listen", "tcp:0:interface=127.0.0.1")
_SERVICES = "[services.Arith]\n[services.HelloService]\n[services.KVStoreService]\nrequire_login = true\n"


def config(test: TestCase, text: str, services: str = _SERVICES) -> str:
    """
    @return: the path of a config file with C{text}, the demo user and
        C{services}.
    """
    path = Path(temp_dir(test)) / "rpcd.toml"
    path.write_text(config_text(text, services))
    return str(path)


def config_text(text: str, services: str = _SERVICES) -> str:
    """
    @return: what L{config} writes (for L{shared_config}).
    """
    from rpcd.config import default_text
    user = next(line for line in default_text().splitlines() if line.startswith("user = "))
    return f"[server]\nlisten = []\n[auth.users]\n{user}\n{text}\n{services}"


async def curl(test: TestCase, *args: str) -> str:
    """
    @return: curl's output for the arguments (it must exit 0).
    """
    tool = require_tool("curl", "to call rpcd over HTTP")
    code, out, err = await run(test, [tool, "--silent", "--show-error", "--max-time", "20", *args])
    test.assertEqual(code, 0, err)
    return out


def post(body: object) -> list[str]:
    """curl arguments to POST a JSON-RPC 2.0 body."""
    return ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]


def rpc(method: str, *params: object, id: int = 1) -> dict[str, object]:
    """A JSON-RPC 2.0 call."""
    return {"jsonrpc": "2.0", "method": method, "params": list(params), "id": id}


class OriginTests(TestCase):
    """Host and Origin checks with curl."""

    async def test_host_and_origin(self) -> None:
        """A foreign Host gets 421 and a foreign Origin 403, each naming the key; allowed ones are served."""
        daemon = await Daemon.start(self, "--config", config(
            self, '[http]\nallowed_hosts = ["rpc.example"]\n'
                  'allowed_origins = ["https://app.example"]'), *LOOPBACK)
        url = f"http://127.0.0.1:{daemon.port}/rpc"
        status = ["--write-out", "\n%{http_code}"]
        refused = await curl(self, *status, "-H", "Host: evil.example", *post(rpc("Arith.Multiply", {"A": 2, "B": 3})), url)
        self.assertTrue(refused.endswith("\n421"), refused)
        self.assertIn("Host 'evil.example' is not a name of this daemon", refused)
        self.assertIn("[http] allowed_hosts", refused)
        forbidden = await curl(self, *status, "-H", "Origin: https://evil.example",
                               *post(rpc("Arith.Multiply", {"A": 2, "B": 3})), url)
        self.assertTrue(forbidden.endswith("\n403"), forbidden)
        self.assertIn("[http] allowed_origins", forbidden)
        for headers in (["-H", "Host: rpc.example:8080"], ["-H", "Origin: https://app.example"], []):
            served = await curl(self, *headers, *post(rpc("Arith.Multiply", {"A": 2, "B": 3})), url)
            self.assertEqual(json.loads(served)["result"], 6, headers)
        self.assertRegex(daemon.output, r"refused a request from 127\.0\.0\.1:\d+ for Host 'evil.example'")


class SessionTests(TestCase):
    """Each HTTP request is its own session."""

    async def test_login_per_request(self) -> None:
        """A login on a kept-alive connection does not carry over to the next request."""
        daemon = await Daemon.shared(self, "--config", shared_config(config_text("")), *LOOPBACK)
        url = f"http://127.0.0.1:{daemon.port}/rpc"
        out = await curl(self, "--write-out", "\n%{num_connects}\n",
                         *post(rpc("HelloService.Login", "user:password")), url, "--next",
                         "--write-out", "\n%{num_connects}\n", *post(rpc("HelloService.Hello", "x")), url)
        login, first_connects, hello, reused = out.strip().split("\n")
        self.assertEqual((json.loads(login)["result"], first_connects, reused), ("", "1", "0"))
        self.assertEqual(json.loads(hello)["error"]["message"], "please login")

    async def test_basic_auth(self) -> None:
        """curl -u logs its own request in (HelloService.Hello answers); a wrong password gets 401."""
        daemon = await Daemon.shared(self, "--config", shared_config(config_text("")), *LOOPBACK)
        url = f"http://127.0.0.1:{daemon.port}/rpc"
        hello = await curl(self, "-u", "user:password", *post(rpc("HelloService.Hello", "x")), url)
        self.assertRegex(json.loads(hello)["result"], r"^hello:x, from127\.0\.0\.1:\d+$")
        refused = await curl(self, "--include", "-u", "user:wrong",
                             *post(rpc("HelloService.Hello", "x")), url)
        self.assertRegex(refused, r"^HTTP/1\.1 401 Unauthorized\r\n")
        self.assertIn('WWW-Authenticate: Basic realm="rpcd"', refused)
        self.assertTrue(refused.endswith("401 auth failed\n"), refused)


class DebugPageTests(TestCase):
    """The debug page and Introspection.List show only what the caller may call."""

    async def test_filtered(self) -> None:
        """A service requiring a login is on neither the page nor `rpcd list` until logged in."""
        daemon = await Daemon.shared(self, "--config", shared_config(config_text("")), *LOOPBACK)
        page = await curl(self, f"http://127.0.0.1:{daemon.port}/debug/rpc")
        self.assertIn("Service Arith", page)
        self.assertNotIn("KVStoreService", page)
        code, out, err = await rpcd(self, "list", f"tcp:127.0.0.1:{daemon.port}")
        self.assertEqual(code, 0, err)
        self.assertIn("Arith.Multiply", out)
        self.assertNotIn("KVStoreService", out)
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        await client.call("HelloService.Login", "user:password")
        listed = {m["name"] for m in await client.call("Introspection.List", None)}
        self.assertIn("KVStoreService.Get", listed)

    async def test_switched_off(self) -> None:
        """With [http] debug_page = false, /debug/rpc is a 404."""
        daemon = await Daemon.start(self, "--config", config(self, "[http]\ndebug_page = false"),
                                    *LOOPBACK)
        out = await curl(self, "--write-out", "\n%{http_code}", f"http://127.0.0.1:{daemon.port}/debug/rpc")
        self.assertEqual(out, "404 page not found\n\n404")


def _pipeline(port: int, count: int) -> int:
    """
    Behind one call that stays pending, send C{count} pipelined calls
    without reading any answer, until the daemon stops reading.

    @return: how many requests were sent before a send blocked for 2 s (a
        loaded machine may make that sooner, which only weakens the check).
    """
    watch = json.dumps(rpc("KVStoreService.Watch", 3600, id=0)).encode()
    call = json.dumps(rpc("Arith.Multiply", {"A": 6, "B": 7})).encode()

    def request(body: bytes) -> bytes:
        return (b"POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)) + body

    one = request(call)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request(watch))
        sock.settimeout(2.0)
        sent = 0
        batch = one * 100
        try:
            while sent < count:
                sock.sendall(batch)
                sent += 100
        except socket.timeout:
            pass  # the daemon stopped reading: the bound holds
        return sent


class PipelineTests(TestCase):
    """The bound on pipelined requests, on the real daemon."""

    timeout = 120

    async def test_rss_bounded(self) -> None:
        """200k calls pipelined behind a pending one without reading: the daemon stops reading and its RSS stays flat."""
        daemon = await Daemon.start(self, "--config", config(
            self, "[http]\nmax_pipelined = 16", "[services.Arith]\n[services.KVStoreService]\n"),
            *LOOPBACK)
        before = daemon.rss_kib()
        sent = await deferToThread(_pipeline, daemon.port, 200_000)
        grown = daemon.rss_kib() - before
        self.assertLess(sent, 200_000, "the daemon read every request")
        self.assertLess(grown, 16 * 1024, f"RSS grew {grown} KiB")
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.assertEqual(await client.call("Arith.Multiply", {"A": 2, "B": 5}), 10)
        await client.close()
        # The pipelined connection still holds its hour-long Watch (the daemon
        # stopped reading before the FIN): a drain would wait for it.
        self.assertEqual(await daemon.stop(at_once=True), 0)

    async def test_half_close(self) -> None:
        """Requests sent before a FIN are answered, then the daemon closes."""
        daemon = await Daemon.shared(self, *LOOPBACK)

        def exchange() -> bytes:
            body = json.dumps(rpc("Arith.Multiply", {"A": 6, "B": 7})).encode()
            one = (b"POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body)) + body
            with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
                sock.sendall(one * 3)
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(20)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                return data

        data = await deferToThread(exchange)
        self.assertEqual(data.count(b'"result":42'), 3)


class ALPNTests(TestCase):
    """curl over HTTPS (offering ALPN) to rpcd's TLS listeners."""

    timeout = 60

    async def test_curl_https(self) -> None:
        """curl's defaults work on rpcd-tls: and mtls: (with a client certificate); the native client too."""
        require_tool("curl", "to call rpcd over HTTPS")
        pki = Path(temp_dir(self)) / "pki"
        certs.create_dev_pki(pki, clients=["alice"])

        def escape(path: Path) -> str:
            return str(path).replace(":", "\\:")

        tls = (f"rpcd-tls:0:interface=127.0.0.1:certKey={escape(pki / 'server.pem')}"
               f":privateKey={escape(pki / 'server.key')}")
        mtls = (f"mtls:0:interface=127.0.0.1:certKey={escape(pki / 'server.pem')}"
                f":privateKey={escape(pki / 'server.key')}:caCerts={escape(pki / 'ca.pem')}")
        daemon = await Daemon.start(self, "--listen", tls, "--listen", mtls, listeners=2)
        body = post(rpc("Arith.Multiply", {"A": 6, "B": 7}))
        verbose = await curl(self, "--verbose", "--stderr", "-", "--cacert", str(pki / "ca.pem"),
                             *body, f"https://localhost:{daemon.ports[0]}/rpc")
        self.assertRegex(verbose, r"ALPN.*http/1\.1")
        self.assertIn('"result":42', verbose)
        mutual = await curl(self, "--cacert", str(pki / "ca.pem"), "--cert", str(pki / "alice.pem"),
                            "--key", str(pki / "alice.key"), *body,
                            f"https://localhost:{daemon.ports[1]}/rpc")
        self.assertEqual(json.loads(mutual)["result"], 42)
        client = await connect(f"tls:host=localhost:port={daemon.ports[0]}:trustRoots={escape(pki)}")
        self.addCleanup(client.close)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 3, "B": 3}), 9)
