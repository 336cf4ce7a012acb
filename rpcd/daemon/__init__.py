"""
The daemon: its config (L{rpcd.daemon.config}), building its services from
it (L{rpcd.daemon.build}), C{twistd rpcd} (L{rpcd.daemon.tap}), service
plugins, reload on SIGHUP, draining, reverse connections, logins.

Cheap to import: the twistd plugin drop-in imports L{rpcd.daemon.plugins}.
The names of the old module C{rpcd.daemon} (L{rpcd.daemon.build}) are
looked up on first use.
"""

from __future__ import annotations

from rpcd._compat import forward

__getattr__ = forward(__name__)
