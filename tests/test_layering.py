"""
The dependency rule between rpcd's packages (C{docs/architecture.md}): the
import-linter contracts in C{pyproject.toml} hold.
"""

from __future__ import annotations

import os
import subprocess
import sys

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
