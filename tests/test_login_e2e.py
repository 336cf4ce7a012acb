"""
End-to-end tests of login throttling: the real C{twistd -n rpcd} on
loopback, with a user whose hash has a cheap scrypt cost, attacked with
concurrent wrong logins over one connection and over many, guesses between
valid logins, and malformed credentials over native, gob, Go's jsonrpc and
JSON-RPC 2.0 over HTTP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.trial.unittest import TestCase

from rpcd.auth import hash_password
from rpcd.client import Client, connect
from rpcd.errors import RPCError, ResourceExhausted, Unauthenticated
from tests.daemon import Daemon, temp_dir

_CONFIG = """\
[server]
listen = ["tcp:0:interface=127.0.0.1"]

[auth]
max_failed_logins = {per_host}
max_failed_logins_per_user = {per_user}
failed_login_window = 3600.0

[auth.users]
user = "{user}"
other = "{other}"

[services.HelloService]
"""

IN_FLIGHT = ("a login is already being checked on this connection; "
             "wait for its answer before sending another")
HOST_LIMITED = "too many failed logins from 127.0.0.1; try again in "


async def outcomes(calls: list[Deferred[Any]]) -> list[Any]:
    """
    @param calls: call Deferreds.
    @return: each one's result or exception, in order, once all have ended.
    """
    results = await DeferredList(calls, consumeErrors=True)
    return [value if ok else value.value for ok, value in results]


class LoginThrottleTests(TestCase):
    """Throttled logins on the real daemon."""

    timeout = 120

    async def start(self, per_host: int = 5, per_user: int = 5) -> Daemon:
        """
        Start a daemon whose users are "user" (password "s3cret") and
        "other" (password "0ther"), with cheap hashes.
        """
        cheap = {"n": 2**10, "r": 8, "p": 1}
        config = Path(temp_dir(self)) / "rpcd.toml"
        config.write_text(_CONFIG.format(per_host=per_host, per_user=per_user,
                                         user=hash_password("s3cret", **cheap),
                                         other=hash_password("0ther", **cheap)))
        return await Daemon.start(self, "--config", str(config))

    async def client(self, daemon: Daemon, codec: str = "native") -> Client:
        """
        @return: a client connected to the daemon, closed after the test.
        """
        client = await connect(f"tcp:127.0.0.1:{daemon.port}", codec=codec)
        self.addCleanup(client.close)
        return client

    def assert_clean(self, daemon: Daemon) -> None:
        """
        The daemon logged no traceback and nothing critical.
        """
        self.assertNotIn("Traceback", daemon.output)
        self.assertNotIn("#critical", daemon.output)
        self.assertNotIn("Unhandled", daemon.output)

    async def test_concurrent_on_one_connection(self) -> None:
        """
        400 concurrent wrong logins on one connection: at most 5 are
        checked (one at a time), every other one is refused at once, and
        the daemon logs exactly the checked ones.
        """
        daemon = await self.start()
        client = await self.client(daemon)
        results = await outcomes([client.call("HelloService.Login", f"user:guess{n}")
                                  for n in range(400)])
        failed = [e for e in results if isinstance(e, Unauthenticated)]
        refused = [e for e in results if isinstance(e, ResourceExhausted)]
        self.assertEqual(len(failed) + len(refused), 400)
        self.assertTrue(1 <= len(failed) <= 5, len(failed))
        self.assertEqual({e.message for e in failed}, {"auth failed"})
        for e in refused:
            self.assertTrue(e.message == IN_FLIGHT or e.message.startswith(HOST_LIMITED), e.message)
        self.assertIn(IN_FLIGHT, {e.message for e in refused})
        await daemon.stop()  # its whole log read: the lines may come after the answers
        self.assertEqual(daemon.count_log(r"failed login for 'user'"), len(failed))
        self.assert_clean(daemon)

    async def test_concurrent_on_many_connections(self) -> None:
        """
        A wrong login on each of 30 connections at once: exactly 5 are
        checked and fail, the other 25 are refused as too many from the
        host, and then so is the right password.
        """
        daemon = await self.start()
        clients = [await self.client(daemon) for _ in range(30)]
        results = await outcomes([c.call("HelloService.Login", "user:guess") for c in clients])
        failed = [e for e in results if isinstance(e, Unauthenticated)]
        refused = [e for e in results if isinstance(e, ResourceExhausted)]
        self.assertEqual((len(failed), len(refused)), (5, 25))
        for e in refused:
            self.assertTrue(e.message.startswith(HOST_LIMITED), e.message)
        with self.assertRaises(ResourceExhausted):
            await clients[0].call("HelloService.Login", "user:s3cret")
        await daemon.stop()  # its whole log read: the lines may come after the answers
        self.assertEqual(daemon.count_log(r"failed login for 'user'"), 5)
        self.assert_clean(daemon)

    async def test_success_does_not_reset(self) -> None:
        """
        Failures are counted per host and user and per host; valid logins
        between guesses clear neither the host's count nor the other
        users'.
        """
        daemon = await self.start(per_host=6, per_user=2)
        client = await self.client(daemon)

        async def login(text: str) -> str:
            try:
                return await client.call("HelloService.Login", text)
            except RPCError as e:
                return e.message

        self.assertEqual([await login("other:guess1"), await login("other:guess2")],
                         ["auth failed", "auth failed"])
        self.assertTrue((await login("other:0ther")).startswith(
            "too many failed logins for 'other' from 127.0.0.1; try again in "))
        self.assertEqual(await login("user:s3cret"), "")
        self.assertEqual([await login(f"nobody{n}:guess") for n in range(3)], ["auth failed"] * 3)
        self.assertEqual(await login("user:s3cret"), "")
        self.assertEqual(await login("nobody9:guess"), "auth failed")
        self.assertTrue((await login("user:s3cret")).startswith(HOST_LIMITED))
        self.assertTrue((await login("other:0ther")).startswith(HOST_LIMITED))
        await daemon.stop()  # its whole log read: the lines may come after the answers
        self.assertEqual(daemon.count_log(r"logged in as 'user'"), 2)

    async def test_malformed_credentials(self) -> None:
        """
        Malformed credentials over every protocol fail as logins that say
        what is wrong, count against the host, and log no traceback.
        """
        daemon = await self.start(per_host=5)
        native = await self.client(daemon)
        gob = await self.client(daemon, "gob")
        jsonrpc = await self.client(daemon, "jsonrpc")
        http = await self.client(daemon, "jsonrpc2")
        cases = [
            (native, "user:" + "x" * 100_000, "auth failed: the password is longer than 1024 characters"),
            (gob, "u" * 5000 + ":x", "auth failed: the user name is longer than 256 characters"),
            (jsonrpc, "user:\ud800", "auth failed: the password is not valid Unicode"),
            (http, "us\udc00er:x", "auth failed: the user name is not valid Unicode"),
            (native, "user", 'auth failed: send "user:password"'),
        ]
        for client, request, words in cases:
            with self.assertRaises(RPCError) as cm:
                await client.call("HelloService.Login", request)
            self.assertIn(words, cm.exception.message)
        with self.assertRaises(RPCError) as limited:
            await native.call("HelloService.Login", "user:s3cret")
        self.assertTrue(limited.exception.message.startswith(HOST_LIMITED), limited.exception.message)
        await daemon.stop()  # its whole log read: the lines may come after the answers
        self.assertEqual(daemon.count_log(r"refused a malformed login from 127\.0\.0\.1:"), 5)
        self.assertEqual(daemon.count_log(r"failed login for"), 0)
        self.assert_clean(daemon)
