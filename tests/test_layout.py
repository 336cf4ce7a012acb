"""
The package layout (C{docs/architecture.md}): the old flat module paths still
import, as the very modules that moved, and the public API answers under its
old names.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from rpcd._compat import BECAME_PACKAGE, MOVED
from tests.daemon import ROOT


class OldPathTests(SynchronousTestCase):
    """
    Every old module path resolves to the module it moved to.
    """

    def test_every_old_path_is_the_new_module(self) -> None:
        """Importing an old path returns the same module object as its new path."""
        for old, new in MOVED.items():
            self.assertIs(importlib.import_module(old), importlib.import_module(new), old)

    def test_old_path_keeps_its_new_spec(self) -> None:
        """A module first imported by its old name still names itself by its new one."""
        module = importlib.import_module("rpcd.backend")
        self.assertEqual(module.__name__, "rpcd.cluster.subchannel")
        self.assertEqual(module.__spec__.name, "rpcd.cluster.subchannel")

    def test_old_path_is_an_attribute_of_its_parent(self) -> None:
        """After C{import rpcd.balancer}, C{rpcd.balancer} is the cluster balancer."""
        import rpcd.balancer
        import rpcd.cluster.balancer

        self.assertIs(rpcd.balancer, rpcd.cluster.balancer)
        self.assertIs(rpcd.balancer.connect_balanced, rpcd.cluster.balancer.connect_balanced)

    def test_old_wire_path(self) -> None:
        """A protocol that left C{rpcd.wire} imports under its old C{rpcd.wire} name."""
        from rpcd.server.native import NativeServerProtocol
        from rpcd.wire.native import NativeServerProtocol as old

        self.assertIs(old, NativeServerProtocol)

    def test_patch_through_old_path(self) -> None:
        """An attribute patched through the old module path is patched in the new module."""
        import rpcd.cluster.retry
        import rpcd.retry

        marker = object()
        self.patch(rpcd.retry, "pushback", marker)
        self.assertIs(rpcd.cluster.retry.pushback, marker)

    def test_packages_reexport_old_names(self) -> None:
        """Each module that became a package answers its old names, public and private."""
        for package, module in BECAME_PACKAGE.items():
            old = importlib.import_module(module)
            new = importlib.import_module(package)
            for name in [n for n in vars(old) if not n.startswith("__")]:
                self.assertIs(getattr(new, name), getattr(old, name), f"{package}.{name}")

    def test_unknown_name_of_a_package(self) -> None:
        """A name neither the package nor its old module defines raises AttributeError naming both."""
        import rpcd.client

        error = self.assertRaises(AttributeError, getattr, rpcd.client, "no_such_name")
        self.assertIn("rpcd.client", str(error))

    def test_public_api(self) -> None:
        """The names users rely on import from where they always did."""
        from rpcd.balancer import connect_balanced
        from rpcd.client import BlockingClient, Client, connect
        from rpcd.errors import RPCError
        from rpcd.service import exposed
        from rpcd.testing import MemoryConnection

        for name in (connect_balanced, BlockingClient, Client, connect, RPCError, exposed,
                     MemoryConnection):
            self.assertTrue(callable(name))


class CheapImportTests(SynchronousTestCase):
    """
    The twistd plugin drop-in stays cheap to import.
    """

    def test_plugins_module_is_cheap(self) -> None:
        """Importing L{rpcd.daemon.plugins} loads neither the daemon's builder nor Twisted's reactor."""
        code = ("import sys, rpcd.daemon.plugins; "
                "print(sorted(m for m in ('rpcd.daemon.build', 'rpcd.server.factory', "
                "'twisted.internet.reactor') if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True,
                             text=True, check=True).stdout
        self.assertEqual(out.strip(), "[]")
