"""
What rpcd's processes load and do on the way in and out: the C{rpcd}
command and the daemon import only what their work needs
(C{benchmarks/startup.py} measures the cost), and they exit without the
garbage collector's passes over every live object (L{rpcd.core.quickexit}).
"""

from __future__ import annotations

import ast
import gc
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from rpcd.core import quickexit
from tests.daemon import ROOT, environment

# Modules only some configs or commands need: HTTP requests (etcd), the
# daemon's server side.
_CLIENT_UNNEEDED = ("rpcd.daemon.build", "rpcd.daemon.config", "rpcd.server.factory",
                    "twisted.web.client", "h2.connection", "twisted.application.internet")
_DAEMON_UNNEEDED = ("twisted.web.client", "h2.connection")


def loaded(code: str, names: tuple[str, ...]) -> list[str]:
    """
    Run Python code in a fresh interpreter.

    @param code: the statements.
    @param names: module names.
    @return: those of C{names} in C{sys.modules} after the code ran.
    """
    script = f"{code}\nimport sys\nprint(sorted(m for m in {names!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", script], cwd=str(ROOT), env=environment(),
                         capture_output=True, text=True, check=True).stdout
    return ast.literal_eval(out.strip().splitlines()[-1])


class LazyImportTests(SynchronousTestCase):
    """
    Heavy modules are imported where they are used, not by every process.
    """

    def test_command_loads_no_server(self) -> None:
        """The rpcd command, its parser built, loads neither the daemon's server side nor twisted.web."""
        code = ("from rpcd.cli import main\n"
                "from rpcd.cli.main import build_parser\n"
                "import rpcd.client, rpcd.client.native\n"
                "build_parser()\n")
        self.assertEqual(loaded(code, _CLIENT_UNNEEDED), [])

    def test_daemon_loads_no_http_client(self) -> None:
        """The daemon's modules do not import twisted.web.client (nor, through it, h2)."""
        code = "import rpcd.daemon.tap, rpcd.daemon.build, rpcd.daemon.reload\n"
        self.assertEqual(loaded(code, _DAEMON_UNNEEDED), [])

    def test_submodule_through_old_package_name(self) -> None:
        """Importing a submodule from a package that was a module does not load the old module's content."""
        code = "from rpcd.daemon import auth\nassert auth.__name__ == 'rpcd.daemon.auth'\n"
        self.assertEqual(loaded(code, ("rpcd.daemon.build",)), [])

    def test_old_names_still_forwarded(self) -> None:
        """A name of the old module rpcd.daemon is still found on the package, on first use."""
        import rpcd.daemon
        from rpcd.daemon import build

        self.assertIs(rpcd.daemon.make_service, build.make_service)
        with self.assertRaises(AttributeError):
            rpcd.daemon.no_such_name  # type: ignore[attr-defined]

    def test_quiet_pool_built_on_first_use(self) -> None:
        """The quiet HTTP pool is a subclass of Twisted's pool, the same object each time."""
        from twisted.web.client import HTTPConnectionPool

        from rpcd.core import twistedcompat

        pool = twistedcompat.QuietHTTPConnectionPool
        self.assertTrue(issubclass(pool, HTTPConnectionPool))
        self.assertIs(twistedcompat.QuietHTTPConnectionPool, pool)
        with self.assertRaises(AttributeError):
            twistedcompat.no_such_name  # type: ignore[attr-defined]


class QuickExitTests(SynchronousTestCase):
    """
    L{rpcd.core.quickexit.freeze_at_exit}.
    """

    def test_registers_once(self) -> None:
        """However often it is called, one gc.freeze is registered to run at exit."""
        registered: list[object] = []
        self.patch(quickexit.atexit, "register", registered.append)
        self.patch(quickexit, "_registered", False)
        quickexit.freeze_at_exit()
        quickexit.freeze_at_exit()
        self.assertEqual(registered, [gc.freeze])

    def test_freezes_when_exiting(self) -> None:
        """Nothing is frozen while the process runs; at exit the live objects are, and the output is whole."""
        code = ("import atexit, gc\n"
                "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0))\n"
                "from rpcd.core.quickexit import freeze_at_exit\n"
                "freeze_at_exit()\n"
                "print('frozen before exit:', gc.get_freeze_count() > 0)\n")
        out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), env=environment(),
                             capture_output=True, text=True, check=True).stdout
        self.assertEqual(out.splitlines(), ["frozen before exit: False", "frozen at exit: True"])
