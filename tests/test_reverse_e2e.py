"""
End-to-end reverse connections: the real daemon dials a listener made by
L{rpcd.reverse.accept} (or C{rpcd call --accept}) and serves over the
connections it made, over plain TCP and mutual TLS, across a restart of the
listening side.
"""

from __future__ import annotations

import socket
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from rpcd.limits import Limits
from rpcd.reverse import accept
from tests.cli import rpcd
from tests.daemon import Daemon, temp_dir
from tests.test_tls_e2e import PKI, _escape


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReverseTests(TestCase):
    """The daemon's server.connect, against the listening side of rpcd.reverse."""

    timeout = 60

    async def daemon(self, *connect: str) -> Daemon:
        config = Path(temp_dir(self)) / "rpcd.toml"
        entries = ", ".join(f"'{c}'" for c in connect)
        config.write_text(f"[server]\nlisten = []\nconnect = [{entries}]\n"
                          "[services.Arith]\n[services.HelloService]\n")
        daemon = await Daemon.start(self, "--config", str(config), listeners=0)
        return daemon

    async def test_calls_over_reverse_connection(self) -> None:
        """The daemon dials the listener and serves calls over that connection, HelloService included."""
        listener = await accept("tcp:0:interface=127.0.0.1", reactor=reactor)
        self.addCleanup(listener.close)
        port = listener.port.getHost().port
        await self.daemon(f"tcp:127.0.0.1:{port}")
        client = await listener.next_client()
        self.addCleanup(client.close)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 7, "B": 8}), 56)
        hello = client.HelloService.Hello("x")
        from rpcd.errors import Unauthenticated
        with self.assertRaises(Unauthenticated):
            await hello

    async def test_streams_over_reverse_connection(self) -> None:
        """Server, client and bidirectional streams run over a connection the daemon dialled."""
        listener = await accept("tcp:0:interface=127.0.0.1", reactor=reactor)
        self.addCleanup(listener.close)
        port = listener.port.getHost().port
        config = Path(temp_dir(self)) / "rpcd.toml"
        config.write_text(f"[server]\nlisten = []\nconnect = ['tcp:127.0.0.1:{port}']\n"
                          "[services.TestService]\nclass = 'rpcd.examples.interop:TestService'\n"
                          "[services.KVStoreService]\n")
        await Daemon.start(self, "--config", str(config), listeners=0)
        client = await listener.next_client()
        self.addCleanup(client.close)
        sizes = [31415, 9, 2653, 58979]
        out = client.stream("TestService.StreamingOutputCall",
                            {"response_parameters": [{"size": n} for n in sizes]})
        self.assertEqual([len(m["payload"]["body"]) async for m in out], sizes)
        upload = client.stream("TestService.StreamingInputCall")
        for n in (27182, 8, 1828, 45904):
            await upload.send({"payload": {"body": b"\0" * n}})
        upload.close_send()
        self.assertEqual((await upload.result())["aggregated_payload_size"], 74922)
        watch = client.stream("KVStoreService.WatchPrefix", "k/")
        await client.KVStoreService.Set(["k/a", "1"])
        self.assertEqual(await watch.__anext__(), ["k/a", "1"])
        watch.cancel()

    async def test_several_connections(self) -> None:
        """connections = 2 keeps two connections to the listener up."""
        listener = await accept("tcp:0:interface=127.0.0.1", reactor=reactor)
        self.addCleanup(listener.close)
        port = listener.port.getHost().port
        config = Path(temp_dir(self)) / "rpcd.toml"
        config.write_text("[server]\nlisten = []\n"
                          f"connect = [{{ endpoint = 'tcp:127.0.0.1:{port}', connections = 2 }}]\n"
                          "[services.Arith]\n")
        await Daemon.start(self, "--config", str(config), listeners=0)
        clients = [await listener.next_client(), await listener.next_client()]
        for c in clients:
            self.addCleanup(c.close)
        results = [await c.call("Arith.Multiply", {"A": i, "B": 3}) for i, c in enumerate(clients)]
        self.assertEqual(results, [0, 3])

    async def test_silent_peer_closed(self) -> None:
        """A peer that connects and never speaks is closed after the handshake timeout; a daemon is still served."""
        listener = await accept("tcp:0:interface=127.0.0.1", reactor=reactor,
                                limits=Limits(handshake_timeout=0.5))
        self.addCleanup(listener.close)
        port = listener.port.getHost().port
        lost: Deferred[None] = Deferred()

        class Silent(Protocol):
            def connectionLost(self, reason: object = None) -> None:
                lost.callback(None)

        with capturedLogs() as events:
            await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(Silent))
            await lost
        self.assertTrue(any("did not finish its handshake within 0.5 s" in formatEvent(e)
                            for e in events), [formatEvent(e) for e in events])
        self.assertEqual(listener.clients.pending, [])
        await self.daemon(f"tcp:127.0.0.1:{port}")
        client = await listener.next_client()
        self.addCleanup(client.close)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 3, "B": 4}), 12)

    async def test_bounded_queue(self) -> None:
        """With max_waiting = 1 the daemon's second connection is refused until the first client is taken, then served."""
        listener = await accept("tcp:0:interface=127.0.0.1", reactor=reactor, max_waiting=1)
        self.addCleanup(listener.close)
        port = listener.port.getHost().port
        config = Path(temp_dir(self)) / "rpcd.toml"
        config.write_text("[server]\nlisten = []\n"
                          f"connect = [{{ endpoint = 'tcp:127.0.0.1:{port}', connections = 2 }}]\n"
                          "[services.Arith]\n")
        with capturedLogs() as events:
            daemon = await Daemon.start(self, "--config", str(config), listeners=0)
            # Both connections dial at once; one waits, the other is refused and retries.
            await daemon.wait_for_log(r"Scheduling retry")
        self.assertTrue(any("(max_waiting = 1)" in formatEvent(e) for e in events),
                        [formatEvent(e) for e in events])
        self.assertLessEqual(len(listener.clients.pending), 1)
        clients = [await listener.next_client(), await listener.next_client()]
        for c in clients:
            self.addCleanup(c.close)
        results = [await c.call("Arith.Multiply", {"A": i, "B": 5}) for i, c in enumerate(clients)]
        self.assertEqual(results, [0, 5])

    async def test_listener_restart(self) -> None:
        """When the listening side goes away and comes back on the same port, the daemon dials again."""
        port = _free_port()
        listener = await accept(f"tcp:{port}:interface=127.0.0.1", reactor=reactor)
        daemon = await self.daemon(f"tcp:127.0.0.1:{port}")
        client = await listener.next_client()
        self.assertEqual(await client.call("Arith.Multiply", {"A": 2, "B": 3}), 6)
        await listener.close()
        await client.close()
        mark = len(daemon.output)
        await daemon.wait_for_log(r"Scheduling retry", after=mark)
        listener = await accept(f"tcp:{port}:interface=127.0.0.1", reactor=reactor)
        self.addCleanup(listener.close)
        client = await listener.next_client()
        self.addCleanup(client.close)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 4, "B": 5}), 20)
        await daemon.wait_for_log(r"reverse connection to .* is up", after=mark)

    async def test_mutual_tls(self) -> None:
        """Over mutual TLS both ways: the daemon checks the listener's name, the listener the daemon's certificate."""
        pki = PKI(Path(temp_dir(self)))
        listen = (f"mtls:0:interface=127.0.0.1:certKey={_escape(pki.path('server.pem'))}"
                  f":privateKey={_escape(pki.path('server.key'))}:caCerts={_escape(pki.path('ca.pem'))}")
        listener = await accept(listen, reactor=reactor)
        self.addCleanup(listener.close)
        port = listener.port.getHost().port
        dial = pki.client(port, identity="alice")
        daemon = await self.daemon(dial)
        client = await listener.next_client()
        self.addCleanup(client.close)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 7, "B": 8}), 56)
        self.assertNotIn("Traceback", daemon.output)

    async def test_wrong_listener_name(self) -> None:
        """A listener whose certificate is for another name is refused by the daemon, which says why and retries."""
        pki = PKI(Path(temp_dir(self)))
        listen = (f"rpcd-tls:0:interface=127.0.0.1:certKey={_escape(pki.path('wrong.pem'))}"
                  f":privateKey={_escape(pki.path('wrong.key'))}")
        listener = await accept(listen, reactor=reactor)
        self.addCleanup(listener.close)
        port = listener.port.getHost().port
        daemon = await self.daemon(pki.client(port))
        await daemon.wait_for_log(r"TLS with .* failed: the server's certificate is not valid for "
                                  r"'localhost'")
        await daemon.wait_for_log(r"Scheduling retry")
        self.assertNotIn("Traceback", daemon.output)

    async def test_rpcd_call_accept(self) -> None:
        """rpcd call --accept waits for the daemon to dial in and calls over that connection."""
        port = _free_port()
        calling = Deferred.fromCoroutine(rpcd(self,
            "call", "--accept", f"tcp:{port}:interface=127.0.0.1", *("Arith.Multiply", '{"A": 6, "B": 7}'),
            "--timeout", "30"))
        await self.daemon(f"tcp:127.0.0.1:{port}")
        code, out, err = await calling
        self.assertEqual((code, out.strip()), (0, "42"), err)

    async def test_rpcd_call_accept_timeout(self) -> None:
        """rpcd call --accept with nobody dialling in gives up after --timeout, saying so."""
        code, out, err = await rpcd(self,
            "call", "--accept", f"tcp:{_free_port()}:interface=127.0.0.1", "Arith.Multiply", "{}",
            "--timeout", "1")
        self.assertEqual(code, 2)
        self.assertIn("no daemon dialled in within 1 s", err)
