"""
Plugin objects for Twisted's plugin system (cheap to import).

A drop-in under C{twisted/plugins/} offers a service like this::

    from rpcd.daemon.plugins import ServicePlugin
    arith = ServicePlugin("Arith", "mypackage.arith:Arith", "Multiplies integers.")
"""

from __future__ import annotations

import importlib

from twisted.plugin import IPlugin
from zope.interface import implementer

from rpcd.core.interfaces import IRPCServiceProvider


def load_object(path: str) -> object:
    """
    Import C{"package.module:Name"} and return C{Name}.

    @param path: a C{module:attribute} path.
    @return: the attribute.
    @raise ValueError: the path has no colon, or the module or attribute is
        missing; the message names which.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{path!r} is not of the form 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r} (from {path!r}): {e}") from e
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


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
