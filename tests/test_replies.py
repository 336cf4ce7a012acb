"""
Tests for L{rpcd.server.replies}.
"""

from __future__ import annotations

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from rpcd.errors import Code
from rpcd.server.replies import unencodable


class UnencodableTests(SynchronousTestCase):
    """
    A result a codec cannot carry becomes one logged INTERNAL error.
    """

    def test_internal(self) -> None:
        """The error is INTERNAL and names the method, the codec and what the encoder said."""
        with capturedLogs() as events:
            error = unencodable("Odd.Get", "msgpack", ValueError("no such type"))
        self.assertEqual(error.code, Code.INTERNAL)
        self.assertEqual(error.message, "Odd.Get: the result cannot be encoded as msgpack: no such type")
        self.assertEqual([e["log_format"] for e in events],
                         ["{method} returned a value msgpack cannot encode: {error}"])

    def test_go_wording(self) -> None:
        """gob answers in Go net/rpc's words, which Go clients show as they are."""
        with capturedLogs():
            error = unencodable("Odd.Get", "gob", TypeError("bad"))
        self.assertEqual(error.message, "rpc: Odd.Get returned a value gob cannot encode: bad")
