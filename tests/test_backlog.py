"""
Tests for the listen backlog: C{server.backlog} and a listener's own
C{backlog}, applied to endpoints that do not set C{backlog=} themselves.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from rpcd import certs, config
from rpcd.config import DEFAULT_BACKLOG, ConfigError
from rpcd.daemon import make_service, with_backlog


def _escape(path: Path) -> str:
    return str(path).replace(":", "\\:")


class ParseTests(SynchronousTestCase):
    """The backlog keys in [server]."""

    def test_default(self) -> None:
        """Without the key the backlog is DEFAULT_BACKLOG, well above Twisted's 50."""
        c = config.parse("[server]\nlisten = ['tcp:0']\n", "x.toml")
        self.assertEqual((c.backlog, c.listen[0].backlog), (DEFAULT_BACKLOG, None))
        self.assertGreaterEqual(DEFAULT_BACKLOG, 1024)

    def test_keys(self) -> None:
        """server.backlog sets the default; a listener table's backlog overrides it."""
        c = config.parse("[server]\nbacklog = 200\n"
                         "listen = ['tcp:0', {endpoint = 'tcp:1', backlog = 7}]\n", "x.toml")
        self.assertEqual((c.backlog, c.listen[0].backlog, c.listen[1].backlog), (200, None, 7))

    def test_bad(self) -> None:
        """A backlog that is not an integer from 1 to 65535 is named in the error."""
        for text, expected in [("[server]\nbacklog = 0\n", "server.backlog: must be from 1 to 65535"),
                               ("[server]\nbacklog = 'big'\n", "server.backlog: must be an integer"),
                               ("[server]\nlisten = [{endpoint = 'tcp:0', backlog = 70000}]\n",
                                "server.listen[0].backlog: must be from 1 to 65535")]:
            e = self.assertRaises(ConfigError, config.parse, text, "x.toml")
            self.assertIn(expected, str(e))

    def test_shipped_file_documents_it(self) -> None:
        """The shipped config mentions server.backlog (commented) with the default value."""
        text = config.default_text()
        self.assertIn(f"# backlog = {DEFAULT_BACKLOG}", text)


class WithBacklogTests(SynchronousTestCase):
    """with_backlog adds backlog= where an endpoint type takes it and it is not set."""

    def test_added(self) -> None:
        """tcp, tcp6, unix, ssl, rpcd-tls and mtls strings get :backlog=N."""
        for endpoint in ["tcp:0", "tcp6:0:interface=\\:\\:1", "unix:/tmp/x.sock",
                         "rpcd-tls:0:certKey=a:privateKey=b", "mtls:0:certKey=a:privateKey=b:caCerts=c",
                         "ssl:0:privateKey=k"]:
            self.assertEqual(with_backlog(endpoint, 300), endpoint + ":backlog=300")

    def test_kept(self) -> None:
        """An endpoint's own backlog= is kept, and other endpoint types are left alone."""
        for endpoint in ["tcp:0:backlog=5", "unix:/tmp/x.sock:backlog=5:mode=600",
                         "systemd:domain=INET:index=0", "onion:80"]:
            self.assertEqual(with_backlog(endpoint, 300), endpoint)

    def test_escaped_colon(self) -> None:
        """An escaped colon is part of a value, not a field boundary."""
        self.assertEqual(with_backlog("unix:/tmp/a\\:backlog=5", 9), "unix:/tmp/a\\:backlog=5:backlog=9")

    def test_parsed_endpoints(self) -> None:
        """Twisted's and rpcd's TLS parsers pass the backlog through to the listening port."""
        reactor = MemoryReactor()
        pki = Path(self.mktemp())
        certs.create_dev_pki(pki, clients=[])
        tls = f"certKey={_escape(pki / 'server.pem')}:privateKey={_escape(pki / 'server.key')}"
        for endpoint in ["tcp:0", f"rpcd-tls:0:{tls}", f"mtls:0:{tls}:caCerts={_escape(pki / 'ca.pem')}"]:
            serverFromString(reactor, with_backlog(endpoint, 777)).listen(Factory.forProtocol(Protocol))
        serverFromString(reactor, with_backlog("unix:" + self.mktemp(), 778)).listen(
            Factory.forProtocol(Protocol))
        self.assertEqual([backlog for _, _, backlog, _ in reactor.tcpServers], [777] * 3)
        self.assertEqual(reactor.unixServers[0][2], 778)


class MakeServiceTests(SynchronousTestCase):
    """The daemon listens with the configured backlog."""

    def test_applied(self) -> None:
        """server.backlog applies to listeners without their own; a listener's backlog and backlog= win."""
        c = config.parse("[server]\nbacklog = 300\nlisten = ['tcp:0', {endpoint = 'tcp:0', backlog = 9},"
                         " 'tcp:0:backlog=4']\n[services.Arith]\n", "x.toml")
        reactor = MemoryReactor()
        service = make_service(c, reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([backlog for _, _, backlog, _ in reactor.tcpServers], [300, 9, 4])

    def test_default_applied(self) -> None:
        """Without the key the listeners get DEFAULT_BACKLOG, not Twisted's 50."""
        reactor = MemoryReactor()
        service = make_service(config.parse("[server]\nlisten = ['tcp:0']\n[services.Arith]\n",
                                            "x.toml"), reactor)
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        self.assertEqual(reactor.tcpServers[0][2], DEFAULT_BACKLOG)
