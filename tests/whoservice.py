"""
A test-only service that says which daemon answered, for the balancer's
end-to-end tests: C{[services.Who.options] name = "a"}.
"""

from __future__ import annotations

from rpcd.service import exposed


class Who:
    """Names the daemon it runs in."""

    def __init__(self, name: str = "") -> None:
        """
        @param name: what L{Name} answers.
        """
        self.name = name

    @exposed
    def Name(self) -> str:
        """Return this daemon's name."""
        return self.name
