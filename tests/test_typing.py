"""
mypy (with the mypy_zope plugin, configured in pyproject.toml) finds no type
errors in rpcd and its twistd plugin, outside the modules listed in
L{NOT_YET_CLEAN}.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.cache import cache_dir

ROOT = Path(__file__).resolve().parent.parent

# Modules whose errors are not counted yet, and why.  Remove a module from
# here in the commit that makes it clean.
NOT_YET_CLEAN: dict[str, str] = {}

_ERROR = re.compile(r"^(?P<path>[^:\s]+\.py):\d+: error: ", re.MULTILINE)


class MypyTests(SynchronousTestCase):
    """
    The package type-checks.
    """

    def test_no_errors(self) -> None:
        """mypy reports no error outside the modules in NOT_YET_CLEAN."""
        try:
            from mypy import api
        except ImportError:
            raise SkipTest("mypy is not installed (pip install -e '.[test]' installs it)")
        try:
            import mypy_zope  # noqa: F401
        except ImportError:
            raise SkipTest("mypy-zope is not installed (pip install -e '.[test]' installs it)")
        stdout, stderr, status = api.run([
            "--config-file", str(ROOT / "pyproject.toml"),
            "--cache-dir", str(mypy_cache()),
            str(ROOT / "rpcd"), str(ROOT / "twisted" / "plugins"),
        ])
        self.assertIn(status, (0, 1), f"mypy itself failed:\n{stdout}{stderr}")
        errors = [
            line for line in stdout.splitlines()
            if (match := _ERROR.match(line)) and _relative(match["path"]) not in NOT_YET_CLEAN
        ]
        self.assertEqual(errors, [], "mypy found type errors:\n" + "\n".join(errors))

    test_no_errors.timeout = 600  # type: ignore[attr-defined]  # trial reads it


def mypy_cache() -> Path:
    """
    @return: mypy's incremental cache for this checkout, kept across runs
        (L{tests.cache}): mypy checks each module's cached data against the
        source, so a warm cache gives the same errors in a fraction of the time.
    """
    checkout = hashlib.sha256(str(ROOT).encode()).hexdigest()[:16]
    return cache_dir("mypy", checkout)


def _relative(path: str) -> str:
    """
    @param path: a path as mypy prints it (relative to the working directory,
        or absolute).
    @return: the path relative to the checkout, with forward slashes.
    """
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(ROOT).as_posix()
    except ValueError:
        return Path(path).as_posix()
