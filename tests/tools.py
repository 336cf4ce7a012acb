"""
Finding the external tools that end-to-end tests need (Go, openssl, curl, etcd).

A test that needs a tool the machine lacks is skipped with a clear reason.
CI sets C{RPCD_REQUIRE_TOOLS=1}, which turns every such skip into a failure,
so that CI really runs everything.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

from twisted.trial.unittest import SkipTest

REQUIRE_ENV = "RPCD_REQUIRE_TOOLS"


def require_tool(name: str, why: str = "") -> str:
    """
    Find an executable on C{PATH}, or skip the calling test.

    @param name: the executable's name, e.g. C{"go"}.
    @param why: what the test needs it for, added to the skip reason.
    @return: the executable's full path.
    @raise SkipTest: the tool is missing and C{RPCD_REQUIRE_TOOLS} is unset.
    @raise AssertionError: the tool is missing and C{RPCD_REQUIRE_TOOLS=1}.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    missing(f"{name!r} is not on PATH" + (f" (needed {why})" if why else ""))


def require_directory(path: Path, package: str, why: str = "") -> None:
    """
    Skip the calling test unless a directory a package installs exists.

    @param path: the directory (e.g. Go sources under C{/usr/share/gocode}).
    @param package: what installs it (named in the reason).
    @param why: what the test needs it for.
    @raise SkipTest: or C{AssertionError}, as L{require_tool}.
    """
    if not path.is_dir():
        missing(f"{path} is missing (apt-get install {package})" + (f" (needed {why})" if why else ""))


def missing(reason: str) -> NoReturn:
    """
    Skip the calling test for C{reason}, or fail under C{RPCD_REQUIRE_TOOLS=1}.
    """
    if os.environ.get(REQUIRE_ENV) == "1":
        raise AssertionError(f"{reason}, and {REQUIRE_ENV}=1 forbids skipping")
    raise SkipTest(reason)
