"""
The dependency rule between rpcd's packages (C{docs/architecture.md}): the
import-linter contracts in C{pyproject.toml} hold, and no module imports
another's private (underscore) names.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.daemon import ROOT
from tests.tools import missing

_LINT = ("import sys\n"
         "from importlinter.cli import lint_imports\n"
         "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))\n")


class ContractTests(SynchronousTestCase):
    """
    C{lint-imports} finds every contract kept.
    """

    def test_contracts_kept(self) -> None:
        """The layers, sans-IO wire and no-cycle contracts are all kept."""
        try:
            import importlinter  # noqa: F401
        except ImportError:
            missing("import-linter is not installed (pip install -e '.[test]' installs it)")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        result = subprocess.run([sys.executable, "-c", _LINT], cwd=str(ROOT), env=env,
                                capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, f"import-linter:\n{result.stdout}{result.stderr}")
        self.assertIn("0 broken", result.stdout)


# The gob codec is one package split into modules for size; they share
# helpers that are private to the package (its API is rpcd.wire.gob's).
_SHARES_PRIVATE_NAMES = ("rpcd.wire.gob.",)


def private_imports(package: Path) -> list[str]:
    """
    Find C{from rpcd.x import _name} across modules of a package.

    @param package: the C{rpcd} directory.
    @return: one C{"file:line: from module import _name"} per offence.
    """
    found = []
    for path in sorted(package.rglob("*.py")):
        importer = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    and node.module.split(".")[0] == "rpcd"):
                continue
            shared = all(name.startswith(_SHARES_PRIVATE_NAMES) for name in (importer, node.module))
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                is_module = (package.parent / (node.module.replace(".", "/") + "/" + alias.name + ".py")).exists()
                if private and not shared and not is_module:
                    found.append(f"{path.relative_to(package.parent)}:{node.lineno}: "
                                 f"from {node.module} import {alias.name}")
    return found


class PrivateImportTests(SynchronousTestCase):
    """
    What crosses from one module to another is public.
    """

    def test_no_private_names_imported(self) -> None:
        """No module of rpcd imports an underscore name from another module."""
        self.assertEqual(private_imports(ROOT / "rpcd"), [])

    def test_finds_private_import(self) -> None:
        """The scan reports an underscore name imported from another module, with its line."""
        package = Path(self.mktemp()) / "rpcd"
        package.mkdir(parents=True)
        (package / "a.py").write_text("x = 1\nfrom rpcd.errors import _code_name\n")
        self.assertEqual(private_imports(package), ["rpcd/a.py:2: from rpcd.errors import _code_name"])
