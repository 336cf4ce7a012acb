"""
Plugin objects for Twisted's plugin system (cheap to import).

A drop-in under C{twisted/plugins/} offers a service like this::

    from rpcd.daemon.plugins import ServicePlugin
    arith = ServicePlugin("Arith", "mypackage.arith:Arith", "Multiplies integers.")
"""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import implementer

from rpcd.core.interfaces import IRPCServiceProvider
from rpcd.core.loader import load_object


@implementer(IPlugin, IRPCServiceProvider)
class ServicePlugin:
    """
    A service offered through Twisted's plugin system, loaded on first use.
    """

    def __init__(self, name: str, class_path: str, description: str = "") -> None:
        """
        @param name: the service name callers use.
        @param class_path: C{"module:Class"} of the service class.
        @param description: one line for listings.
        """
        self.name = name
        self.class_path = class_path
        self.description = description

    def load(self) -> type:
        cls = load_object(self.class_path)
        if not isinstance(cls, type):
            raise ValueError(f"{self.class_path!r} is not a class")
        return cls

    def __repr__(self) -> str:
        return f"ServicePlugin({self.name!r}, {self.class_path!r})"
