"""
Loading an object named by a C{"package.module:Name"} string: service
classes in the config, interceptor factories, server protocols and client
channels by wire name.  Cheap to import (the plugin drop-in imports it).
"""

from __future__ import annotations

import importlib

__all__ = ["load_object"]


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
