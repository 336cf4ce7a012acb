"""
End-to-end tests of rpcd's gRPC client (codec C{grpc}) against a real
grpcio server process (L{tests.grpcio_echo_server}, serving
C{tests/protos/echo.proto}) on loopback: the four call kinds, deadlines,
cancellation, metadata, status details, large messages, gzip, mutual TLS,
and the C{rpcd call} / C{rpcd stream} commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

from rpcd import certs
from rpcd.client import Client, connect
from rpcd.errors import Cancelled, Code, ConnectionLost, DeadlineExceeded, NotFound, RPCError
from tests.cli import rpcd
from tests.daemon import ROOT, _Output, rpcd_command, run, temp_dir
from tests.gogrpc import shared_listening, start_listening
from tests.test_tls_e2e import _escape

ECHO_PROTO = str(ROOT / "tests" / "protos" / "echo.proto")
SERVER = str(ROOT / "tests" / "grpcio_echo_server.py")


class GRPCIOServerTests(TestCase):
    """rpcd's gRPC client against grpcio's server."""

    timeout = 60

    async def server(self, *args: str) -> tuple[int, _Output]:
        return await start_listening(self, [sys.executable, SERVER, *args])

    async def shared_server(self, *args: str) -> tuple[int, _Output, int]:
        """
        The grpcio server, shared by the tests that only call it
        (L{tests.gogrpc.shared_listening}).

        @return: its port, its output, and the test's mark in the output.
        """
        return await shared_listening(self, [sys.executable, SERVER, *args])

    async def client(self, *args: str) -> Client:
        port, _, _ = await self.shared_server(*args)
        client = await connect(f"tcp:127.0.0.1:{port}", codec="grpc", proto=ECHO_PROTO)
        self.addCleanup(client.close)
        return client

    async def test_unary(self) -> None:
        """A unary call sends its request and metadata and gets the reply as a dict; many run at once."""
        client = await self.client()
        reply = await client.call("Echo.Unary", {"text": "hi"}, metadata={"x-user": "alice"},
                                  timeout=20)
        self.assertEqual(reply["text"], "hi")
        self.assertEqual(reply["metadata"]["x-user"], "alice")
        self.assertGreater(reply["timeRemaining"], 0)
        self.assertLessEqual(reply["timeRemaining"], 20)
        self.assertEqual(await client.Echo.Unary(text="proxy"),
                         {"text": "proxy", "metadata": {"user-agent": reply["metadata"]["user-agent"]}})
        replies = await gatherResults([client.call("rpcdtest.Echo.Unary", {"text": str(i)})
                                       for i in range(200)])
        self.assertEqual([r["text"] for r in replies], [str(i) for i in range(200)])

    async def test_error_status(self) -> None:
        """A failed call raises the RPCError of its code with grpc-message (non-ASCII too) and the status details."""
        client = await self.client()
        with self.assertRaises(NotFound) as cm:
            await client.call("Echo.Unary", {"text": "héllo 100%", "failCode": 5,
                                             "payload": "AAEC"})
        self.assertEqual(cm.exception.message, "failed: héllo 100%")
        self.assertEqual(cm.exception.details["grpc-status-details-bin"], b"\x00\x01\x02")
        with self.assertRaises(RPCError) as cm2:
            await client.call("Echo.Unary", {"failCode": 10})
        self.assertEqual(cm2.exception.code, Code.ABORTED)
        self.assertEqual(await client.Echo.Unary(text="after"), {"text": "after", "metadata": {
            "user-agent": (await client.Echo.Unary())["metadata"]["user-agent"]}})

    async def test_deadline(self) -> None:
        """A call past its timeout fails DEADLINE_EXCEEDED and the server sees it cancelled."""
        port, output, mark = await self.shared_server()
        client = await connect(f"tcp:127.0.0.1:{port}", codec="grpc", proto=ECHO_PROTO)
        self.addCleanup(client.close)
        with self.assertRaises(DeadlineExceeded):
            await client.call("Echo.Unary", {"text": "slow", "sleep": 30}, timeout=0.5)
        await output.wait_for(lambda text: "cancelled slow" in text[mark:] or None,
                              "the server's cancellation", 30)
        self.assertEqual((await client.Echo.Unary(text="next"))["text"], "next")

    async def test_cancel(self) -> None:
        """Cancelling a call's Deferred resets its stream: the server sees the cancellation."""
        port, output, mark = await self.shared_server()
        client = await connect(f"tcp:127.0.0.1:{port}", codec="grpc", proto=ECHO_PROTO)
        self.addCleanup(client.close)
        d = client.call("Echo.Unary", {"text": "dropped", "sleep": 30})
        reactor.callLater(0.2, d.cancel)
        with self.assertRaises(Exception):
            await d
        await output.wait_for(lambda text: "cancelled dropped" in text[mark:] or None,
                              "the server's cancellation", 30)

    async def test_trailing_metadata(self) -> None:
        """A stream exposes the response's headers and trailing metadata, -bin keys as bytes."""
        client = await self.client()
        stream = client.stream("Echo.Unary", {"text": "t"},
                               metadata={"x-trailer": "back", "x-trailer-bin": b"\x00\xff"})
        self.assertEqual(await stream.result(), {"text": "t", "metadata": {
            "x-trailer": "back", "user-agent": (await client.Echo.Unary())["metadata"]["user-agent"]}})
        self.assertEqual(stream.trailers, {"x-trailer": "back", "x-trailer-bin": b"\x00\xff"})
        self.assertIsNotNone(stream.headers)

    async def test_server_stream(self) -> None:
        """A server stream delivers every message in order, then ends; an error after messages fails it."""
        client = await self.client()
        stream = client.stream("Echo.Count", {"text": "n", "count": 2000})
        got = [m.get("index", 0) async for m in stream]
        self.assertEqual(got, list(range(2000)))
        self.assertIsNone(await stream.result())
        failing = client.stream("Echo.Count", {"count": 3, "failCode": 9})
        seen = []
        with self.assertRaises(RPCError) as cm:
            async for m in failing:
                seen.append(m.get("index", 0))
        self.assertEqual((seen, cm.exception.code), ([0, 1, 2], Code.FAILED_PRECONDITION))

    async def test_client_stream(self) -> None:
        """A client stream sends its requests, half-closes, and gets the one response from result()."""
        client = await self.client()
        stream = client.stream("Echo.Collect")
        for text in ("a", "b", "c"):
            await stream.send({"text": text})
        stream.close_send()
        self.assertEqual(await stream.result(), {"text": "a,b,c", "index": 3})

    async def test_bidi(self) -> None:
        """A bidirectional stream answers each message as it is sent (ping-pong)."""
        client = await self.client()
        stream = client.stream("Echo.Chat", timeout=20)
        answers = []
        for text in ("one", "two", "three"):
            await stream.send({"text": text})
            answers.append((await stream.__anext__())["text"])
        stream.close_send()
        self.assertEqual(answers, ["ONE", "TWO", "THREE"])
        self.assertEqual([m async for m in stream], [])
        self.assertIsNone(await stream.result())

    async def test_stream_cancel(self) -> None:
        """Cancelling a stream fails it with CANCELLED; the connection goes on."""
        client = await self.client()
        stream = client.stream("Echo.Chat")
        await stream.send({"text": "x"})
        self.assertEqual((await stream.__anext__())["text"], "X")
        stream.cancel()
        with self.assertRaises(Cancelled):
            await stream.result()
        self.assertEqual((await client.Echo.Unary(text="ok"))["text"], "ok")

    async def test_large_messages(self) -> None:
        """3 MiB requests and replies cross HTTP/2 flow control; a reply over 4 MiB fails RESOURCE_EXHAUSTED."""
        client = await self.client()
        big = "QUJD" * (3 * 1024 * 1024 // 3)
        reply = await client.call("Echo.Unary", {"payload": big, "count": 3 * 1024 * 1024})
        self.assertEqual(len(reply["payload"]), 4 * 1024 * 1024)
        with self.assertRaises(RPCError) as cm:
            await client.call("Echo.Unary", {"count": 5 * 1024 * 1024})
        self.assertEqual(cm.exception.code, Code.RESOURCE_EXHAUSTED)
        self.assertIn("limit is 4194304", cm.exception.message)
        self.assertEqual((await client.Echo.Unary(text="small"))["text"], "small")

    async def test_gzip(self) -> None:
        """Replies the server compresses with gzip are decompressed."""
        client = await self.client("--gzip")
        reply = await client.call("Echo.Unary", {"text": "zipped", "count": 100000})
        self.assertEqual((reply["text"], len(reply["payload"])), ("zipped", 133336))
        stream = client.stream("Echo.Count", {"count": 50})
        self.assertEqual(len([m async for m in stream]), 50)

    async def test_mutual_tls(self) -> None:
        """Over mutual TLS (ALPN h2) with a tls: endpoint string; without a client certificate the connection fails."""
        directory = Path(temp_dir(self))
        pki = certs.create_dev_pki(directory)
        port, _ = await self.server("--tls", str(pki["server.pem"]), str(pki["server.key"]),
                                    str(pki["ca.pem"]))
        base = f"tls:host=localhost:port={port}:trustRoots={_escape(str(pki['ca.pem']))}"
        client = await connect(f"{base}:certificate={_escape(str(pki['client.pem']))}"
                               f":privateKey={_escape(str(pki['client.key']))}",
                               codec="grpc", proto=ECHO_PROTO)
        self.addCleanup(client.close)
        self.assertEqual((await client.Echo.Unary(text="secure"))["text"], "secure")
        # TLS 1.3: the client's handshake is done before the server refuses
        # it; connect() waits for the server's HTTP/2 SETTINGS, which never come.
        with self.assertRaises(ConnectionLost) as cm:
            await connect(base, codec="grpc", proto=ECHO_PROTO)
        self.assertIn("closed during the handshake", cm.exception.message)

    async def test_unknown_method_and_bad_request(self) -> None:
        """A method not in the .proto, or a request that does not fit, fails before anything is sent."""
        client = await self.client()
        with self.assertRaises(RPCError) as cm:
            await client.call("Echo.Nope", {})
        self.assertEqual(cm.exception.code, Code.UNIMPLEMENTED)
        self.assertIn("rpcdtest.Echo.Unary", cm.exception.message)
        with self.assertRaises(RPCError) as cm:
            await client.call("Echo.Unary", {"nope": 1})
        self.assertEqual(cm.exception.code, Code.INVALID_ARGUMENT)
        with self.assertRaises(RPCError) as cm:
            await client.call("Echo.Count", {})
        self.assertIn("open it with stream()", cm.exception.message)

    async def test_rpcd_command(self) -> None:
        """rpcd call and rpcd stream --codec grpc print protobuf JSON; a failed call exits 1 with its code."""
        port, _, _ = await self.shared_server()
        endpoint = f"tcp:127.0.0.1:{port}"
        code, out, err = await run(self, rpcd_command(
            "call", "--codec", "grpc", "--proto", ECHO_PROTO, endpoint, "Echo.Unary",
            '{"text": "cli", "count": 2}'))
        self.assertEqual(code, 0, err)
        reply = json.loads(out)
        self.assertEqual((reply["text"], reply["payload"]), ("cli", "eHg="))
        code, out, err = await rpcd(self,
            "call", "--codec", "grpc", "--proto", ECHO_PROTO, endpoint, "Echo.Unary",
            '{"failCode": 5, "text": "x"}')
        self.assertEqual((code, err.strip()), (1, "rpcd: Echo.Unary failed: NOT_FOUND: failed: x"))
        code, out, err = await rpcd(self,
            "stream", "--codec", "grpc", "--proto", ECHO_PROTO, endpoint, "Echo.Count",
            '{"count": 3, "text": "s"}')
        self.assertEqual((code, out.splitlines()), (0, ['{"text": "s"}', '{"text": "s", "index": 1}',
                                                        '{"text": "s", "index": 2}']), err)
        code, out, err = await rpcd(self,
            "stream", "--codec", "grpc", "--proto", ECHO_PROTO, "--stdin", endpoint, "Echo.Collect",
            stdin=b'{"text": "a"}\n{"text": "b"}\n')
        self.assertEqual((code, out.splitlines()), (0, ['{"text": "a,b", "index": 2}']), err)
        code, out, err = await rpcd(self, "call", "--codec", "grpc", endpoint, "Echo.Unary")
        self.assertEqual((code, err.strip()),
                         (2, "rpcd: --codec grpc needs the server's .proto file: --proto FILE"))
        code, out, err = await rpcd(self, "list", "--codec", "grpc", "--proto", ECHO_PROTO,
                                    endpoint)
        self.assertEqual(code, 0, err)
        self.assertIn("rpcdtest.Echo.Chat(rpcdtest.EchoRequest) -> rpcdtest.EchoReply  bidirectional",
                      out.splitlines())
