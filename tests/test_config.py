"""
Tests for L{rpcd.config}, the twistd plugin and the tap's options.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactor
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from rpcd import config
from rpcd.daemon.config import ConfigError
from rpcd.daemon import make_service, service_plugins
from rpcd.daemon.tap import EXIT_CONFIG, Options

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
[server]
listen = ["tcp:0:interface=127.0.0.1", {endpoint = "tcp:0", protocols = ["gob", "json"]}]
[limits]
max_frame_bytes = 1024
handshake_timeout = 2
[services.Arith]
[services.Mul]
class = "rpcd.examples.arith:Arith"
[services.Off]
enabled = false
[services.KVStoreService.options]
max_watch_seconds = 5
"""


class ParseTests(SynchronousTestCase):
    """TOML to a checked config."""

    def test_good(self) -> None:
        """A good file gives endpoints, pinned protocols, limits and services."""
        c = config.parse(GOOD, "x.toml")
        self.assertEqual([l.endpoint for l in c.listen], ["tcp:0:interface=127.0.0.1", "tcp:0"])
        self.assertEqual(c.listen[1].protocols, frozenset({"gob", "json"}))
        self.assertEqual(c.limits.max_frame_bytes, 1024)
        self.assertEqual(c.limits.handshake_timeout, 2.0)
        self.assertEqual(c.limits.idle_timeout, 300.0)
        self.assertEqual([s.name for s in c.services], ["Arith", "Mul", "KVStoreService"])
        self.assertEqual(c.services[2].options, {"max_watch_seconds": 5})

    def check_error(self, text: str, *expected: str) -> None:
        e = self.assertRaises(ConfigError, config.parse, text, "etc/x.toml")
        for part in ("etc/x.toml",) + expected:
            self.assertIn(part, str(e))

    def test_unknown_key(self) -> None:
        """An unknown key is named, with the known ones listed."""
        self.check_error("[limits]\nmax_frame = 5\n", "[limits] unknown key 'max_frame'",
                         "max_frame_bytes")
        self.check_error("[serve]\n", "unknown key 'serve'")
        self.check_error("[services.A]\nclas = 'x:y'\n", "[services.A] unknown key 'clas'")

    def test_bad_values(self) -> None:
        """Wrong types and ranges are named with the key."""
        self.check_error("[limits]\nmax_frame_bytes = 'big'\n", "limits.max_frame_bytes: must be an integer")
        self.check_error("[limits]\nmax_frame_bytes = true\n", "limits.max_frame_bytes", "boolean")
        self.check_error("[limits]\nmax_frame_bytes = 0\n", "limits.max_frame_bytes: must be positive")
        self.check_error("[server]\nlisten = 'tcp:1'\n", "server.listen: must be a list")
        self.check_error("[server]\nlisten = ['nocolon']\n", "server.listen[0]", "endpoint string")
        self.check_error("[server]\nlisten = [{endpoint='tcp:1', protocols=['smtp']}]\n",
                         "unknown protocol(s) ['smtp']")
        self.check_error("[services.A]\nclass = 'nocolon'\n", "services.A.class")
        self.check_error("[auth.users]\nbob = 'plain'\n", "auth.users.bob", "rpcd hash-password")

    def test_not_toml(self) -> None:
        """Broken TOML is reported with the file name."""
        self.check_error("[server\n", "not valid TOML")

    def test_missing_file(self) -> None:
        """A missing file is reported with its path."""
        e = self.assertRaises(ConfigError, config.load, "/nonexistent/rpcd.toml")
        self.assertIn("/nonexistent/rpcd.toml: cannot read the config file", str(e))

    def test_default_is_the_shipped_file(self) -> None:
        """The embedded default is exactly etc/rpcd.toml, so the two cannot drift."""
        self.assertEqual(config.default_text(), (ROOT / "etc" / "rpcd.toml").read_text("utf-8"))

    def test_default(self) -> None:
        """The default listens on loopback port 1234 with the seed services and the demo user."""
        c = config.load()
        self.assertEqual([l.endpoint for l in c.listen], ["tcp:1234:interface=127.0.0.1"])
        self.assertEqual({s.name for s in c.services},
                         {"Cal", "Arith", "ServiceA", "HelloService", "KVStoreService",
                          "HelloWorldService"})
        self.assertEqual(list(c.auth.users), ["user"])

    def test_with_listen(self) -> None:
        """--listen replaces the config's endpoints."""
        c = config.with_listen(config.load(), ["tcp:0", "unix:/tmp/x.sock"])
        self.assertEqual([l.endpoint for l in c.listen], ["tcp:0", "unix:/tmp/x.sock"])


class PluginTests(SynchronousTestCase):
    """The twistd plugin and the service plugins."""

    def test_rpcd_is_a_twistd_plugin(self) -> None:
        """"rpcd" is among the twistd service makers."""
        self.assertIn("rpcd", [p.tapname for p in getPlugins(IServiceMaker)])

    def test_seed_service_plugins(self) -> None:
        """The seed services are found through the plugin system and load their classes."""
        plugins = service_plugins()
        for name in ("Cal", "Arith", "ServiceA", "HelloService", "KVStoreService"):
            self.assertEqual(plugins[name].load().__name__, name)


class OptionsTests(SynchronousTestCase):
    """twistd rpcd's options."""

    def test_defaults(self) -> None:
        """No options: the embedded default."""
        options = Options()
        options.parseOptions([])
        self.assertEqual(options.loaded.listen[0].endpoint, "tcp:1234:interface=127.0.0.1")

    def test_listen_and_service_override(self) -> None:
        """--listen and --service replace the config's lists."""
        options = Options()
        options.parseOptions(["--listen", "tcp:0", "-l", "tcp:1", "--service", "Arith"])
        self.assertEqual([l.endpoint for l in options.loaded.listen], ["tcp:0", "tcp:1"])
        self.assertEqual([spec.name for spec, _ in options.services], ["Arith"])

    def config_error(self, argv: list[str]) -> str:
        """
        Parse options that hold a config error.

        @return: what was written to standard error, checked to be one line
            and to come with exit status 2.
        """
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        e = self.assertRaises(SystemExit, Options().parseOptions, argv)
        self.assertEqual(e.code, EXIT_CONFIG)
        self.assertEqual(err.getvalue().count("\n"), 1, err.getvalue())
        self.assertTrue(err.getvalue().startswith("rpcd: "), err.getvalue())
        return err.getvalue()

    def test_bad_config_is_one_line(self) -> None:
        """A bad config file stops twistd with one line on stderr naming the key, exit 2."""
        path = Path(self.mktemp())
        path.write_text("[limits]\nbogus = 1\n")
        e = self.config_error(["--config", str(path)])
        self.assertIn("unknown key 'bogus'", str(e))

    def test_unknown_service(self) -> None:
        """A service no plugin provides stops startup, listing the plugins found."""
        e = self.config_error(["--service", "Nope"])
        self.assertIn("services.Nope: no plugin provides it", str(e))
        self.assertIn("Arith", str(e))

    def test_bad_class(self) -> None:
        """A class path that does not import names the module."""
        path = Path(self.mktemp())
        path.write_text("[server]\nlisten=['tcp:0']\n[services.X]\nclass = 'no.such.module:X'\n")
        e = self.config_error(["--config", str(path)])
        self.assertIn("cannot import module 'no.such.module'", str(e))

    def test_make_service_listens(self) -> None:
        """The service listens on every endpoint once started, with the built-ins registered."""
        reactor = MemoryReactor()
        service = make_service(config.parse(GOOD, "x.toml"), reactor)
        service.privilegedStartService()
        service.startService()
        self.assertEqual(len(reactor.tcpServers), 2)
        registry = service.rpc_server.registry
        self.assertEqual([s.name for s in registry.services()],
                         ["Arith", "GrpcHealth", "GrpcReflection", "GrpcReflectionV1alpha",
                          "Health", "Introspection", "KVStoreService", "Mul", "rpc"])
