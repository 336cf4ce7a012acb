"""
The C{rpcd} command (L{rpcd.cli.main}); C{rpcd stream} is L{rpcd.cli.stream}.

The names of the old module C{rpcd.cli} are re-exported here.
"""

from __future__ import annotations

from rpcd._compat import forward
from rpcd.cli.main import main, run

__all__ = ["main", "run"]

__getattr__ = forward(__name__)
