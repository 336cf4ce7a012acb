"""
Tests for L{rpcd.daemon.embed} (C{rpcd.serve}'s keywords checked as the config, the
daemon built on a C{MemoryReactor}), the import path of C{module:Class}, and
the small front-door fixes without sockets: a service's bad options naming
the file, C{--help}'s text, an unhinted stream's listing, a local encoding
error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase

import rpcd
from rpcd import config
from rpcd.daemon import embed
from rpcd.daemon.config import ConfigError
from rpcd.daemon import make_importable, make_service
from rpcd.errors import Code, EncodeError
from rpcd.examples.arith import Arith
from rpcd.server.limits import Limits
from rpcd.core.service import describe_service, exposed, service
from rpcd.daemon.tap import Options


class Counter:
    """A service with state, to tell a shared instance from new ones."""

    def __init__(self) -> None:
        self.calls = 0

    @exposed
    def Next(self) -> int:
        """Count."""
        self.calls += 1
        return self.calls


@service(per_connection=True)
class PerConnection:
    """Built for each connection."""

    def __init__(self, session: object) -> None:
        self.session = session

    @exposed
    def Peer(self) -> str:
        """Who calls."""
        return "x"


class Nothing:
    """Exposes nothing."""


class ConfigForTests(SynchronousTestCase):
    """serve()'s keywords are checked by the config's own code, with its messages."""

    def test_defaults(self) -> None:
        """With no keywords, serve() listens on loopback port 9000 with the config's defaults."""
        loaded = embed.config_for()
        self.assertEqual([item.endpoint for item in loaded.listen], ["tcp:9000:interface=127.0.0.1"])
        self.assertEqual((loaded.limits, loaded.services, loaded.source), (Limits(), (), "rpcd.serve()"))

    def test_same_message_as_the_file(self) -> None:
        """A bad value gives the message the config file's key gives, naming rpcd.serve() for the file."""
        with self.assertRaises(ConfigError) as from_file:
            config.parse("[server]\nlisten = ['tcp:0']\n[limits]\nmax_frame_bytes = 0\n", "F")
        with self.assertRaises(ConfigError) as from_keywords:
            embed.config_for(["tcp:0"], limits={"max_frame_bytes": 0})
        self.assertEqual(str(from_keywords.exception),
                         str(from_file.exception).replace("F:", "rpcd.serve():", 1))

    def test_unknown_table_key(self) -> None:
        """An unknown key inside a table is named with the known keys, as in the file."""
        with self.assertRaises(ConfigError) as caught:
            embed.config_for(http={"debug_pages": False})
        self.assertIn("rpcd.serve(): [http] unknown key 'debug_pages'", str(caught.exception))

    def test_unknown_keyword(self) -> None:
        """A keyword that is no config key is refused, listing the known ones."""
        with self.assertRaises(ConfigError) as caught:
            embed.config_for(max_frame_bytes=10)
        self.assertIn("unknown keyword 'max_frame_bytes'", str(caught.exception))
        self.assertIn("limits", str(caught.exception))

    def test_limits_dataclass_and_tuples(self) -> None:
        """A Limits instance and tuples are taken as the TOML tables and lists they stand for."""
        loaded = embed.config_for(("tcp:0", "tcp:1"), limits=Limits(max_frame_bytes=1000),
                                  shutdown_grace=2, log_level="warn")
        self.assertEqual((loaded.limits.max_frame_bytes, len(loaded.listen), loaded.shutdown_grace,
                          loaded.log_level), (1000, 2, 2.0, "warn"))

    def test_one_endpoint_string(self) -> None:
        """listen may be one endpoint string."""
        self.assertEqual([i.endpoint for i in embed.config_for("tcp:0").listen], ["tcp:0"])

    def test_nothing_to_do(self) -> None:
        """No listen and no connect is refused, as twistd refuses it."""
        with self.assertRaises(ConfigError) as caught:
            embed.config_for([])
        self.assertIn("nothing to do", str(caught.exception))

    def test_pythonpath_relative_to_cwd(self) -> None:
        """serve()'s pythonpath is relative to the working directory; a missing one is named."""
        base = Path(self.mktemp()).resolve()
        (base / "src").mkdir(parents=True)
        self.patch(os, "getcwd", lambda: str(base))
        self.assertEqual(embed.config_for(pythonpath=["src"]).pythonpath, (str(base / "src"),))
        with self.assertRaises(ConfigError) as caught:
            embed.config_for(pythonpath=["nope"])
        self.assertIn("server.pythonpath[0]", str(caught.exception))


class ServiceForTests(SynchronousTestCase):
    """service_for builds the daemon with the daemon's own code."""

    def test_listens_and_serves_the_instance(self) -> None:
        """The service listens where told, serving the very instance given, beside the built-ins."""
        reactor = MemoryReactor()
        counter = Counter()
        top = rpcd.service_for([counter, Arith], ["tcp:0:interface=127.0.0.1"], reactor=reactor)
        top.privilegedStartService()
        top.startService()
        self.addCleanup(top.stopService)
        self.assertEqual([(port, interface) for port, _, _, interface in reactor.tcpServers],
                         [(0, "127.0.0.1")])
        registry = top.rpc_server.registry
        self.assertIn("Introspection", [s.name for s in registry.services()])
        self.assertIs(registry._shared["Counter.Next"].function.__self__, counter)
        self.assertEqual(registry.spec("Arith").name, "Arith")

    def test_dict_renames(self) -> None:
        """A dict of name to object serves each under its name."""
        top = rpcd.service_for({"Count": Counter(), "Per": PerConnection}, reactor=MemoryReactor())
        names = [s.name for s in top.rpc_server.registry.services()]
        self.assertTrue({"Count", "Per"} <= set(names), names)
        self.assertTrue(top.rpc_server.registry.spec("Per").per_connection)

    def test_duplicate_names(self) -> None:
        """Two objects with one name are refused, naming it."""
        with self.assertRaises(ConfigError) as caught:
            rpcd.service_for([Counter(), Counter()], reactor=MemoryReactor())
        self.assertIn("services.Counter: two services have this name", str(caught.exception))

    def test_exposes_nothing(self) -> None:
        """An object with no exposed method is refused, naming it."""
        with self.assertRaises(ConfigError) as caught:
            rpcd.service_for([Nothing()], reactor=MemoryReactor())
        self.assertIn("rpcd.serve(): services.Nothing:", str(caught.exception))
        self.assertIn("exposes no methods", str(caught.exception))


class ImportPathTests(SynchronousTestCase):
    """module:Class is importable from the working directory and server.pythonpath."""

    def test_cwd_and_pythonpath_first(self) -> None:
        """pythonpath's directories, then the working directory, go first on sys.path."""
        self.patch(sys, "path", ["/usr/lib/python"])
        base = Path(self.mktemp()).resolve()
        for name in ("a", "b", "cwd"):
            (base / name).mkdir(parents=True)
        self.patch(os, "getcwd", lambda: str(base / "cwd"))
        (base / "rpcd.toml").write_text("[server]\npythonpath = ['a', 'b']\n")
        loaded = config.load(base / "rpcd.toml")
        make_importable(loaded)
        self.assertEqual(sys.path, [str(base / "a"), str(base / "b"), str(base / "cwd"),
                                    "/usr/lib/python"])
        make_importable(loaded)
        self.assertEqual(len(sys.path), 4)

    def test_package_in_cwd(self) -> None:
        """A config's class in a package of the working directory is found."""
        base = Path(self.mktemp()).resolve()
        (base / "frontdoor_pkg").mkdir(parents=True)
        (base / "frontdoor_pkg" / "__init__.py").write_text("")
        (base / "frontdoor_pkg" / "svc.py").write_text(
            "from rpcd.core.service import exposed\n"
            "class Svc:\n    @exposed\n    def Ping(self) -> str:\n        return 'pong'\n")
        self.patch(sys, "path", list(sys.path))
        self.patch(os, "getcwd", lambda: str(base))
        self.addCleanup(lambda: [sys.modules.pop(m, None) for m in ("frontdoor_pkg", "frontdoor_pkg.svc")])
        loaded = config.parse("[server]\nlisten = ['tcp:0']\n[services.Svc]\n"
                              "class = 'frontdoor_pkg.svc:Svc'\n", "x.toml")
        top = make_service(loaded, MemoryReactor())
        self.assertIsNotNone(top.rpc_server.registry.spec("Svc"))

    def test_bad_pythonpath(self) -> None:
        """A pythonpath entry that is not a directory is named with the file and the key."""
        with self.assertRaises(ConfigError) as caught:
            config.parse("[server]\npythonpath = ['/no/such/dir']\n", "x.toml")
        self.assertIn("x.toml: server.pythonpath[0]: '/no/such/dir' is not a directory",
                      str(caught.exception))


class FrontDoorFixTests(SynchronousTestCase):
    """The rough edges a newcomer hits, without sockets."""

    def test_bad_service_option_names_file_service_key(self) -> None:
        """A constructor that rejects its options names the file, the service and the option."""
        loaded = config.parse("[server]\nlisten = ['tcp:0']\n[services.Arith]\n"
                              "class = 'rpcd.examples.arith:Arith'\n"
                              "[services.Arith.options]\ntabel = 1\n", "my.toml")
        with self.assertRaises(ConfigError) as caught:
            make_service(loaded, MemoryReactor())
        message = str(caught.exception)
        self.assertTrue(message.startswith("my.toml: services.Arith.options: "), message)
        self.assertIn("'tabel'", message)

    def test_help_has_no_runs_of_spaces(self) -> None:
        """twistd rpcd --help shows each option's text without the docstring's indentation."""
        text = " ".join(str(Options()).split("\n"))
        self.assertIn("a name the config does not have is looked up", " ".join(text.split()))
        self.assertNotIn("name         the", str(Options()))

    def test_unhinted_stream_listing(self) -> None:
        """A stream without item hints lists as 'stream', not 'stream Any'."""
        class Streams:
            @exposed
            async def Out(self, n: int):
                yield n

            @exposed
            async def In(self, values: AsyncIterator) -> int:
                return 0

            @exposed
            async def Typed(self, values: AsyncIterator[int]) -> AsyncIterator[str]:
                yield ""
        methods = describe_service(Streams).methods
        self.assertEqual([methods[n].signature for n in ("Out", "In", "Typed")],
                         ["Out(n: int) -> stream", "In(values: stream) -> int",
                          "Typed(values: stream int) -> stream str"])

    def test_local_encoding_error(self) -> None:
        """An argument gob cannot encode fails the call at once as a local EncodeError, nothing sent."""
        from twisted.internet.task import Clock

        from rpcd.client.gobclient import GobClientChannel
        channel = GobClientChannel(Clock())
        transport = StringTransport()
        channel.makeConnection(transport)
        sent = transport.value()
        error = self.failureResultOf(channel.call("Arith.Multiply", []), EncodeError).value
        self.assertEqual((error.code, error.local, transport.value()),
                         (Code.INVALID_ARGUMENT, True, sent))
        self.assertIn("the gob codec cannot encode its argument", error.message)
        self.assertIn("empty list", error.message)

    def test_bad_connect_endpoint_names_file_and_index(self) -> None:
        """A reverse connection's bad endpoint names the file and its own index in server.connect."""
        loaded = config.parse("[server]\nconnect = ['tcp:127.0.0.1:1', 'nope:1']\n", "my.toml")
        with self.assertRaises(ConfigError) as caught:
            make_service(loaded, MemoryReactor())
        self.assertTrue(str(caught.exception).startswith("my.toml: server.connect[1]: bad client endpoint"),
                        str(caught.exception))
