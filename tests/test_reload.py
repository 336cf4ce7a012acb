"""
Tests for L{rpcd.reload}: the diff of two configs, applying it to a daemon
built on a L{MemoryReactor}, refusing a bad config, the log level filter and
reopening log files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import (
    FileLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    Logger,
    capturedLogs,
    formatEvent,
)
from twisted.python.logfile import LogFile
from twisted.trial.unittest import SynchronousTestCase

from rpcd import config
from rpcd.daemon.config import ConfigError
from rpcd.daemon import make_service
from rpcd.tls.endpoints import tls_policy
from rpcd.daemon.reload import Change, diff, filter_levels, reopen_log_files

BASE = """
[server]
listen = ["tcp:1000", "tcp:1001"]
[limits]
idle_timeout = 30
[auth.users]
alice = "scrypt$n=16384,r=8,p=1$zeVfrmbww/RblqaagSBhgA$VSO6GOnn2EsjAiQHPLJ2Gzh/zyqm1QUS8OMoukKPUsQ"
[services.Arith]
"""


def parse(text: str) -> config.Config:
    return config.parse(text, "rpcd.toml")


class DiffTests(SynchronousTestCase):
    """L{diff} names each change between two configs, and nothing else."""

    def test_same(self) -> None:
        """Two equal configs have no changes."""
        self.assertEqual(diff(parse(BASE), parse(BASE)), [])

    def test_services(self) -> None:
        """Services added, removed and given new options are each one change."""
        old = parse(BASE + "[services.Cal]\n[services.KVStoreService]\n")
        new = parse(BASE + "[services.HelloService]\n[services.KVStoreService.options]\nmax_watch_seconds = 5\n")
        self.assertEqual([c.describe() for c in diff(old, new)], [
            "services.Cal removed", "services.HelloService added", "services.KVStoreService changed"])

    def test_limits_and_settings(self) -> None:
        """A limit, an [http] setting, the log level and the backlog show old and new values."""
        old = parse(BASE)
        new_config = parse(BASE.replace("idle_timeout = 30", "idle_timeout = 5")
                           .replace('listen = ["tcp:1000", "tcp:1001"]',
                                    'listen = ["tcp:1000", "tcp:1001"]\nlog_level = "warn"\nbacklog = 7')
                           + "[http]\nmax_pipelined = 2\n")
        self.assertEqual([c.describe() for c in diff(old, new_config)], [
            "limits.idle_timeout changed: 30.0 -> 5.0",
            "http.max_pipelined changed: 16 -> 2",
            "server.log_level changed: info -> warn",
            "server.backlog changed: 1024 -> 7",
        ])

    def test_users_named_not_hashed(self) -> None:
        """A user added, removed or with a new password is named, and no hash is logged."""
        old = parse(BASE)
        new = parse(BASE.replace("alice =", "bob ="))
        lines = [c.describe() for c in diff(old, new)]
        self.assertEqual(lines, ["auth.users.alice removed", "auth.users.bob added"])
        self.assertNotIn("scrypt", " ".join(lines))

    def test_listeners_and_connects(self) -> None:
        """Listeners and reverse connections added and removed are changes; discovery needs a restart."""
        old = parse(BASE)
        new = parse(BASE.replace('"tcp:1001"', '"tcp:1002"').replace(
            "[limits]", "connect = [\"tcp:127.0.0.1:9\"]\n[limits]")
            + "[discovery]\netcd = \"http://127.0.0.1:2379\"\nadvertise = \"tcp:x:{port}\"\n")
        changes = diff(old, new)
        self.assertEqual([c.describe() for c in changes], [
            "server.listen tcp:1001 removed", "server.listen tcp:1002 added",
            "server.connect tcp:127.0.0.1:9 (sniffed x1) added",
            "discovery changed: needs a restart to take effect"])

    def test_restart_only(self) -> None:
        """A change to the login thread pool is logged as needing a restart."""
        new = parse(BASE.replace("[auth.users]", "[auth]\nlogin_threads = 4\n[auth.users]"))
        self.assertEqual(diff(parse(BASE), new), [Change("restart", "changed", "auth.login_threads")])


class ApplyTests(SynchronousTestCase):
    """A L{rpcd.reload.Reloader} applies a checked config to a running daemon in place."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.top = make_service(parse(BASE), self.reactor)
        self.top.privilegedStartService()
        self.top.startService()
        self.addCleanup(self.top.stopService)
        self.reloader = self.top.reloader  # type: ignore[attr-defined]
        self.server = self.top.rpc_server  # type: ignore[attr-defined]

    def test_apply(self) -> None:
        """Services, limits, users and listeners change in place, one log line each."""
        new = parse(BASE.replace("idle_timeout = 30", "idle_timeout = 5")
                    .replace('"tcp:1001"', '"tcp:1002"').replace("alice =", "bob =")
                    .replace("[services.Arith]", "[services.Cal]"))
        users = self.server.authenticator.users
        with capturedLogs() as events:
            lines = self.reloader.reload(lambda: new)
        self.assertEqual(lines, [
            "rpcd reload: services.Arith removed", "rpcd reload: services.Cal added",
            "rpcd reload: limits.idle_timeout changed: 30.0 -> 5.0",
            "rpcd reload: auth.users.alice removed", "rpcd reload: auth.users.bob added",
            "rpcd reload: server.listen tcp:1001 removed", "rpcd reload: server.listen tcp:1002 added"])
        self.assertEqual([formatEvent(e) for e in events if "line" in e][:7], lines)
        self.assertIsNone(self.server.registry.spec("Arith"))
        self.assertIsNone(self.server.registry.lookup_shared("Arith.Multiply"))
        self.assertIsNotNone(self.server.registry.spec("Cal"))
        self.assertEqual(self.server.limits.idle_timeout, 5.0)
        self.assertEqual(self.server.caps.limits.idle_timeout, 5.0)
        self.assertIsNot(self.server.authenticator.users, users)
        self.assertEqual(sorted(self.reloader.listeners), ["tcp:1000", "tcp:1002"])
        self.assertEqual([port for port, *_ in self.reactor.tcpServers], [1000, 1001, 1002])
        self.assertIs(self.reloader.config, new)

    def test_refused(self) -> None:
        """A config that fails its checks changes nothing and is logged with its error."""
        def bad() -> config.Config:
            raise ConfigError("rpcd.toml: limits.idle_timeout: must be a number")
        with capturedLogs() as events:
            self.assertIsNone(self.reloader.reload(bad))
        self.assertIn("limits.idle_timeout", formatEvent(events[-1]))
        self.assertEqual(self.server.limits.idle_timeout, 30.0)

    def test_unknown_service_refused(self) -> None:
        """A new service no plugin provides refuses the whole reload, limits included."""
        new = parse(BASE.replace("idle_timeout = 30", "idle_timeout = 5") + "[services.Nope]\n")
        with capturedLogs() as events:
            self.assertIsNone(self.reloader.reload(lambda: new))
        self.assertIn("services.Nope", formatEvent(events[-1]))
        self.assertEqual(self.server.limits.idle_timeout, 30.0)
        self.assertIsNone(self.server.registry.spec("Nope"))

    def test_bad_endpoint_refused(self) -> None:
        """A new listener with a malformed endpoint string refuses the reload."""
        new = parse(BASE.replace('"tcp:1001"', '"tcp:1001", "tcp:notaport"'))
        with capturedLogs() as events:
            self.assertIsNone(self.reloader.reload(lambda: new))
        self.assertIn("tcp:notaport", formatEvent(events[-1]))
        self.assertEqual(len(self.reactor.tcpServers), 2)

    def test_nothing_changed(self) -> None:
        """Reloading the same config logs that nothing changed."""
        with capturedLogs() as events:
            self.assertEqual(self.reloader.reload(lambda: parse(BASE)), [])
        self.assertIn("nothing changed", formatEvent(events[-1]))


class LogTests(SynchronousTestCase):
    """The log level filter and reopening log files."""

    def test_level(self) -> None:
        """The filter drops events below its level, and a new level applies at once."""
        seen: list[dict] = []
        publisher = LogPublisher(seen.append)
        predicate = LogLevelFilterPredicate(LogLevel.warn)
        filter_levels(predicate, publisher)
        logger = Logger(observer=publisher)
        logger.info("dropped")
        logger.warn("kept")
        predicate.setLogLevelForNamespace("", LogLevel.debug)
        logger.debug("kept too")
        self.assertEqual([e["log_format"] for e in seen], ["kept", "kept too"])

    def test_reopen(self) -> None:
        """A log file moved away is created again by L{reopen_log_files}."""
        directory = tempfile.mkdtemp()
        path = os.path.join(directory, "rpcd.log")
        log_file = LogFile.fromFullPath(path)
        self.addCleanup(log_file.close)
        publisher = LogPublisher(FileLogObserver(log_file, lambda e: e["log_format"] + "\n"))
        logger = Logger(observer=publisher)
        logger.info("before")
        os.rename(path, path + ".1")
        self.assertEqual(reopen_log_files(publisher), 1)
        logger.info("after")
        with open(path) as f:
            self.assertEqual(f.read(), "after\n")
        with open(path + ".1") as f:
            self.assertEqual(f.read(), "before\n")


class TLSTests(SynchronousTestCase):
    """A reload reads the certificate files of rpcd-tls: listeners again."""

    def setUp(self) -> None:
        from rpcd import certs
        self.dir = Path(tempfile.mkdtemp())
        certs.create_dev_pki(self.dir)
        self.ca = certs.load_issued_certificate(self.dir / "ca.pem", self.dir / "ca.key")
        endpoint = (f"rpcd-tls:0:interface=127.0.0.1:certKey={self.dir / 'server.pem'}"
                    f":privateKey={self.dir / 'server.key'}")
        self.text = f"[server]\nlisten = ['{endpoint}']\n[services.Arith]\n"
        self.top = make_service(parse(self.text), MemoryReactorClock())
        self.reloader = self.top.reloader  # type: ignore[attr-defined]
        self.policy = tls_policy(self.reloader.listeners[endpoint].endpoint)

    def test_rotated(self) -> None:
        """A new certificate in the same files is used for new handshakes, and its serials are logged."""
        from rpcd import certs
        assert self.policy is not None
        before = self.policy.serial
        certs.issue_server_certificate(self.ca).write(self.dir, "server")
        with capturedLogs():
            lines = self.reloader.reload(lambda: parse(self.text))
        assert lines is not None
        self.assertNotEqual(self.policy.serial, before)
        self.assertEqual(len(lines), 1)
        self.assertIn(f"TLS certificate changed: serial {before:x} -> {self.policy.serial:x}", lines[0])

    def test_unreadable(self) -> None:
        """A certificate file that no longer holds a certificate refuses the reload and keeps the old one."""
        assert self.policy is not None
        before = self.policy.serial
        (self.dir / "server.pem").write_text("not a certificate")
        with capturedLogs() as events:
            self.assertIsNone(self.reloader.reload(lambda: parse(self.text)))
        self.assertIn("cannot read the TLS certificate files again", formatEvent(events[-1]))
        self.assertEqual(self.policy.serial, before)
