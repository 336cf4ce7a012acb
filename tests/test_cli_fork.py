"""
L{tests.cli.rpcd} (the forked C{rpcd} command) against the real entry point:
the same output and exit status.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.cli import rpcd
from tests.daemon import rpcd_command, run, temp_dir


class ForkedCommandTests(TestCase):
    """The forked command behaves as the command run from a shell."""

    timeout = 60

    async def test_same_as_subprocess(self) -> None:
        """Usage errors, a connection error and stdin input give the subprocess's status and output."""
        for args, stdin in [(("call", "tcp:127.0.0.1:1", "A.B", "{bad"), b""),
                            (("call", "tcp:127.0.0.1:1", "A.B", "1"), b""),
                            (("nope",), b""),
                            (("hash-password", "--stdin"), b"\n")]:
            forked = await rpcd(self, *args, stdin=stdin)
            real = await run(self, rpcd_command(*args), stdin=stdin)
            self.assertEqual(forked, real, args)
            self.assertNotEqual(forked[0], 0, args)

    async def test_directory_and_stdin(self) -> None:
        """The command reads the given stdin and writes relative paths in the given directory."""
        code, out, err = await rpcd(self, "hash-password", "--stdin", stdin=b"s3cret\n")
        self.assertEqual(code, 0, err)
        self.assertTrue(out.startswith("scrypt$"), out)
        directory = Path(temp_dir(self))
        code, out, err = await rpcd(self, "certs", "pki", "--client", "carol", cwd=str(directory))
        self.assertEqual(code, 0, err)
        self.assertTrue((directory / "pki" / "carol.pem").is_file(), list(directory.rglob("*")))
