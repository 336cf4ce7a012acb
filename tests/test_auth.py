"""
Tests for L{rpcd.auth}: password hashes, the user store, the login rate
limiter and the C{rpcd hash-password} command.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import re
from collections.abc import Callable
from typing import Any

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rpcd import auth

# A cheap cost for tests that do not check the default cost.
FAST: dict[str, Any] = {"n": 2**10, "r": 8, "p": 1}


class FakeThreadPool:
    """
    A thread pool that runs work only when told to, on the calling thread.

    @ivar pending: work not yet run.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[..., None], Callable[..., Any], tuple, dict]] = []

    def callInThreadWithCallback(
        self, onResult: Callable[..., None], func: Callable[..., Any], *args: Any, **kw: Any
    ) -> None:
        self.pending.append((onResult, func, args, kw))

    def run_all(self) -> None:
        """
        Run the pending work, as the pool's threads would.
        """
        while self.pending:
            on_result, func, args, kw = self.pending.pop(0)
            try:
                result = func(*args, **kw)
            except BaseException:
                on_result(False, Failure())
            else:
                on_result(True, result)


class FakeReactor:
    """
    The parts of a reactor that C{deferToThreadPool} uses.
    """

    def __init__(self) -> None:
        self.pool = FakeThreadPool()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        f(*args, **kw)

    def getThreadPool(self) -> FakeThreadPool:
        return self.pool


class HashTests(SynchronousTestCase):
    """
    Tests for L{auth.hash_password} and L{auth.verify_password}.
    """

    def test_format(self) -> None:
        """
        A hash names the scheme and its parameters, then the salt and hash
        in unpadded base64.
        """
        stored = auth.hash_password("secret")
        self.assertRegex(
            stored, r"^scrypt\$n=16384,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$"
        )

    def test_scrypt(self) -> None:
        """
        The hash is scrypt of the UTF-8 password with the stored salt, as
        Python's own scrypt computes it.
        """
        salt = b"0123456789abcdef"
        stored = auth.hash_password("pässword", salt=salt, **FAST)
        expected = hashlib.scrypt("pässword".encode(), salt=salt, n=1024, r=8, p=1, dklen=32)
        digest = stored.rsplit("$", 1)[1]
        self.assertEqual(base64.b64decode(digest + "="), expected)

    def test_salted(self) -> None:
        """
        The same password hashes differently each time.
        """
        self.assertNotEqual(auth.hash_password("x", **FAST), auth.hash_password("x", **FAST))

    def test_verify(self) -> None:
        """
        The right password verifies, a wrong one does not.
        """
        stored = auth.hash_password("correct horse", **FAST)
        self.assertTrue(auth.verify_password(stored, "correct horse"))
        self.assertFalse(auth.verify_password(stored, "correct horse "))
        self.assertFalse(auth.verify_password(stored, ""))

    def test_parameters_kept(self) -> None:
        """
        A hash made with other parameters verifies with those parameters.
        """
        stored = auth.hash_password("pw", n=2**11, r=4, p=2)
        parsed = auth.PasswordHash.parse(stored)
        self.assertEqual((parsed.n, parsed.r, parsed.p), (2048, 4, 2))
        self.assertTrue(auth.verify_password(stored, "pw"))
        self.assertEqual(parsed.format(), stored)

    def test_malformed(self) -> None:
        """
        Each kind of malformed hash raises L{ValueError} naming the problem.
        """
        good = auth.hash_password("pw", salt=b"s" * 16, **FAST)
        _, params, salt, digest = good.split("$")
        cases = {
            "": "expected 4 '$'-separated fields",
            "scrypt$n=1024,r=8,p=1$abc": "$salt$hash), got 3",
            f"bcrypt${params}${salt}${digest}": "unknown scheme 'bcrypt'",
            f"scrypt$n=1024,r=8${salt}${digest}": "missing parameter(s) p",
            f"scrypt$n=1024,r=8,p=1,q=2${salt}${digest}": "bad parameter 'q=2'",
            f"scrypt$n=1024,n=8,p=1${salt}${digest}": "bad parameter 'n=8'",
            f"scrypt$n=x,r=8,p=1${salt}${digest}": "n must be a positive integer",
            f"scrypt$n=1000,r=8,p=1${salt}${digest}": "n must be a power of 2",
            f"scrypt$n=1024,r=0,p=1${salt}${digest}": "r and p must be at least 1",
            f"scrypt$n=1073741824,r=8,p=1${salt}${digest}": "too much memory",
            f"scrypt${params}$${digest}": "the salt is empty",
            f"scrypt${params}$!!!${digest}": "the salt is not valid base64",
            f"scrypt${params}${salt}$c2hvcnQ": "the hash is shorter than 16 bytes",
        }
        for stored, words in cases.items():
            error = self.assertRaises(ValueError, auth.verify_password, stored, "pw")
            self.assertIn(words, str(error), stored)
            self.assertTrue(str(error).startswith("malformed password hash: "), stored)


class UserStoreTests(SynchronousTestCase):
    """
    Tests for L{auth.UserStore}.
    """

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.calls: list[tuple[str, str]] = []
        self.alice = auth.hash_password("wonderland", **FAST)

    def counting_verify(self, stored: str, password: str) -> bool:
        """
        L{auth.verify_password}, counting its calls.
        """
        self.calls.append((stored, password))
        return auth.verify_password(stored, password)

    def store(self) -> auth.UserStore:
        return auth.UserStore({"alice": self.alice}, self.reactor, verify=self.counting_verify)

    def test_right_password(self) -> None:
        """
        A user's right password authenticates, once the pool has run the KDF.
        """
        d = self.store().authenticate("alice", "wonderland")
        self.assertNoResult(d)
        self.reactor.pool.run_all()
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(self.calls, [(self.alice, "wonderland")])

    def test_wrong_password(self) -> None:
        """
        A wrong password does not authenticate.
        """
        d = self.store().authenticate("alice", "looking glass")
        self.reactor.pool.run_all()
        self.assertIs(self.successResultOf(d), False)

    def test_unknown_user_runs_kdf(self) -> None:
        """
        An unknown user is refused only after a KDF run in the pool against
        a hash with the known users' cost, like a known user.
        """
        d = self.store().authenticate("mallory", "wonderland")
        self.assertNoResult(d)
        self.assertEqual(self.calls, [])
        self.reactor.pool.run_all()
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(len(self.calls), 1)
        dummy = auth.PasswordHash.parse(self.calls[0][0])
        self.assertEqual((dummy.n, dummy.r, dummy.p), (FAST["n"], FAST["r"], FAST["p"]))
        self.assertEqual(self.calls[0][1], "wonderland")

    def test_dummy_cost(self) -> None:
        """
        Unknown users are checked at the cost most known users have (the
        higher one on a tie), or the default cost when there are none.
        """
        def cost(users: dict[str, str]) -> tuple[int, int, int]:
            parsed = auth.PasswordHash.parse(auth._dummy_hash(users))
            return parsed.n, parsed.r, parsed.p

        cheap = auth.hash_password("a", n=2**10, r=8, p=1)
        other = auth.hash_password("b", n=2**12, r=4, p=1)
        self.assertEqual(cost({}), (auth.DEFAULT_N, auth.DEFAULT_R, auth.DEFAULT_P))
        self.assertEqual(cost({"a": cheap, "b": cheap, "c": other}), (2**10, 8, 1))
        self.assertEqual(cost({"a": cheap, "c": other}), (2**12, 4, 1))
        self.assertEqual(cost({"c": other}), (2**12, 4, 1))

    def test_unknown_user_never_true(self) -> None:
        """
        An unknown user is refused even if the check were to match.
        """
        store = auth.UserStore({}, self.reactor, verify=lambda stored, password: True)
        d = store.authenticate("nobody", "anything")
        self.reactor.pool.run_all()
        self.assertIs(self.successResultOf(d), False)

    def test_explicit_pool(self) -> None:
        """
        A thread pool given to the store is used instead of the reactor's.
        """
        pool = FakeThreadPool()
        store = auth.UserStore({"alice": self.alice}, self.reactor, threadpool=pool)
        d = store.authenticate("alice", "wonderland")
        self.reactor.pool.run_all()
        self.assertNoResult(d)
        pool.run_all()
        self.assertIs(self.successResultOf(d), True)

    def test_kdf_error(self) -> None:
        """
        An error in the KDF fails the Deferred.
        """

        def broken(stored: str, password: str) -> bool:
            raise MemoryError("no memory for scrypt")

        store = auth.UserStore({"alice": self.alice}, self.reactor, verify=broken)
        d = store.authenticate("alice", "wonderland")
        self.reactor.pool.run_all()
        self.failureResultOf(d, MemoryError)

    def test_malformed_hash(self) -> None:
        """
        A malformed hash is refused when the store is made, naming the user.
        """
        error = self.assertRaises(
            ValueError, auth.UserStore, {"bob": "plaintext"}, self.reactor
        )
        self.assertEqual(
            str(error),
            "user 'bob': malformed password hash: expected 4 '$'-separated fields "
            "(scrypt$n=...,r=...,p=...$salt$hash), got 1",
        )


class LoginRateLimiterTests(SynchronousTestCase):
    """
    Tests for L{auth.LoginRateLimiter}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.limiter = auth.LoginRateLimiter(self.clock, max_attempts=3, per_seconds=60.0)

    def fail_times(self, host: str, times: int) -> None:
        for _ in range(times):
            self.limiter.record_failure(host)

    def test_allows_up_to_limit(self) -> None:
        """
        A host may fail C{max_attempts} times before it must wait.
        """
        self.fail_times("10.0.0.1", 2)
        self.assertIsNone(self.limiter.check("10.0.0.1"))
        self.fail_times("10.0.0.1", 1)
        self.assertEqual(self.limiter.check("10.0.0.1"), 60.0)

    def test_wait_shrinks(self) -> None:
        """
        The wait is what remains of the window that began at the first
        failure, and ends with it.
        """
        self.fail_times("10.0.0.1", 1)
        self.clock.advance(20)
        self.fail_times("10.0.0.1", 2)
        self.clock.advance(10)
        self.assertEqual(self.limiter.check("10.0.0.1"), 30.0)
        self.clock.advance(30)
        self.assertIsNone(self.limiter.check("10.0.0.1"))

    def test_per_host(self) -> None:
        """
        One host's failures do not limit another.
        """
        self.fail_times("10.0.0.1", 3)
        self.assertIsNone(self.limiter.check("10.0.0.2"))

    def test_success_resets(self) -> None:
        """
        A successful login forgets the host's failures.
        """
        self.fail_times("10.0.0.1", 2)
        self.limiter.record_success("10.0.0.1")
        self.fail_times("10.0.0.1", 2)
        self.assertIsNone(self.limiter.check("10.0.0.1"))
        self.limiter.record_success("never-seen")  # No error.

    def test_expired_entries_dropped(self) -> None:
        """
        Hosts whose window ended are forgotten, so memory does not grow.
        """
        self.fail_times("10.0.0.1", 1)
        self.fail_times("10.0.0.2", 1)
        self.assertEqual(len(self.limiter), 2)
        self.clock.advance(61)
        self.assertIsNone(self.limiter.check("10.0.0.3"))
        self.assertEqual(len(self.limiter), 0)

    def test_host_cap(self) -> None:
        """
        At most C{max_hosts} hosts are tracked; the oldest is dropped first.
        """
        limiter = auth.LoginRateLimiter(self.clock, max_attempts=1, max_hosts=2)
        for host in ("a", "b", "c"):
            limiter.record_failure(host)
            self.clock.advance(1)
        self.assertEqual(len(limiter), 2)
        self.assertIsNone(limiter.check("a"))
        self.assertIsNotNone(limiter.check("b"))
        self.assertIsNotNone(limiter.check("c"))

    def test_bad_limits(self) -> None:
        """
        Limits that are not positive are refused.
        """
        for kw in ({"max_attempts": 0}, {"per_seconds": 0}, {"max_hosts": 0}):
            self.assertRaises(ValueError, auth.LoginRateLimiter, self.clock, **kw)


class TTY(io.StringIO):
    """
    A standard input that claims to be a terminal.
    """

    def isatty(self) -> bool:
        return True


class HashCommandTests(SynchronousTestCase):
    """
    Tests for C{rpcd hash-password}: L{auth.add_arguments} and L{auth.run}.
    """

    def parse(self, argv: list[str]) -> argparse.Namespace:
        parser = argparse.ArgumentParser(prog="rpcd hash-password")
        auth.add_arguments(parser)
        return parser.parse_args(argv)

    def test_stdin(self) -> None:
        """
        With C{--stdin}, the first line of input is hashed and printed.
        """
        out = io.StringIO()
        status = auth.run(self.parse(["--stdin"]), stdin=io.StringIO("s3cret\nignored\n"), stdout=out)
        self.assertEqual(status, 0)
        stored = out.getvalue().strip()
        self.assertTrue(re.match(r"^scrypt\$n=16384,", stored))
        self.assertTrue(auth.verify_password(stored, "s3cret"))

    def test_prompt(self) -> None:
        """
        On a terminal it prompts twice without echo.
        """
        prompts: list[str] = []

        def prompt(text: str) -> str:
            prompts.append(text)
            return "typed"

        out = io.StringIO()
        status = auth.run(self.parse([]), stdin=TTY(), stdout=out, prompt=prompt)
        self.assertEqual(status, 0)
        self.assertEqual(prompts, ["Password: ", "Again: "])
        self.assertTrue(auth.verify_password(out.getvalue().strip(), "typed"))

    def test_prompt_mismatch(self) -> None:
        """
        Two different entries are an error.
        """
        answers = iter(["one", "two"])
        err = io.StringIO()
        status = auth.run(
            self.parse([]), stdin=TTY(), stdout=io.StringIO(), stderr=err,
            prompt=lambda text: next(answers),
        )
        self.assertEqual(status, 1)
        self.assertEqual(err.getvalue(), "rpcd hash-password: the passwords differ\n")

    def test_empty(self) -> None:
        """
        An empty password is refused.
        """
        err = io.StringIO()
        status = auth.run(
            self.parse(["--stdin"]), stdin=io.StringIO("\n"), stdout=io.StringIO(), stderr=err
        )
        self.assertEqual(status, 1)
        self.assertEqual(err.getvalue(), "rpcd hash-password: the password is empty\n")
