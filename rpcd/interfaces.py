"""
The contracts between rpcd's parts, as zope interfaces.

Kept free of heavy imports: the twistd plugin drop-ins import this module.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IRPCServiceProvider(Interface):
    """
    A Twisted plugin that offers an rpcd service.

    Any C{twisted/plugins/} drop-in on the path can provide one; the daemon's
    config then enables the service by name.  Loading is deferred so that
    scanning plugins stays cheap.
    """

    name = Attribute("The service name callers use, e.g. C{'Arith'} for C{Arith.Multiply}.")
    description = Attribute("One line saying what the service does.")

    def load() -> type:
        """
        Import the service class.

        @return: the class; instances expose methods marked with
            L{rpcd.service.exposed}.
        """
