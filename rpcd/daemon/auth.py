"""
Password authentication: scrypt hashes, the checks credentials from the wire
must pass before any KDF runs, a user store that checks passwords off the
reactor thread, and a keyed limit on failed logins.

Stored hashes describe themselves, so the cost can be raised later without
breaking old entries::

    scrypt$n=16384,r=8,p=1$<salt, base64>$<hash, base64>

(standard base64 without padding).  Make one with C{rpcd hash-password}
(L{add_arguments} and L{run}) or L{hash_password}.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import hmac
import os
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool

SCHEME = "scrypt"

#: scrypt cost parameters for new hashes: 16 MiB of memory, tens of ms.
DEFAULT_N = 2**14
DEFAULT_R = 8
DEFAULT_P = 1

SALT_BYTES = 16
HASH_BYTES = 32

# Refuse parameters that would make verifying one password a denial of
# service (scrypt needs 128 * n * r * p bytes of memory).
_MAX_MEMORY = 256 * 1024 * 1024

#: The longest user name and password accepted, in characters; longer ones
#: are refused before any KDF runs.
MAX_USER_LENGTH = 256
MAX_PASSWORD_LENGTH = 1024


@dataclass(frozen=True)
class PasswordHash:
    """
    A parsed stored hash.

    @ivar n: scrypt's CPU/memory cost, a power of 2.
    @ivar r: scrypt's block size.
    @ivar p: scrypt's parallelism.
    @ivar salt: the random salt.
    @ivar digest: the derived key.
    """

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, stored: str) -> PasswordHash:
        """
        Read a stored hash.

        @param stored: C{scrypt$n=N,r=R,p=P$SALT$HASH}.
        @return: its parts.
        @raise ValueError: C{stored} is malformed; the message names the
            problem (never the hash itself).
        """
        parts = stored.split("$")
        if len(parts) != 4:
            raise ValueError(
                f"malformed password hash: expected 4 '$'-separated fields "
                f"({SCHEME}$n=...,r=...,p=...$salt$hash), got {len(parts)}"
            )
        scheme, params, salt_text, digest_text = parts
        if scheme != SCHEME:
            raise ValueError(f"malformed password hash: unknown scheme {scheme!r}, expected {SCHEME!r}")
        values: dict[str, int] = {}
        for item in params.split(","):
            key, sep, value = item.partition("=")
            if not sep or key not in ("n", "r", "p") or key in values:
                raise ValueError(
                    f"malformed password hash: bad parameter {item!r} (expected n=,r=,p=)"
                )
            if not value.isdigit():
                raise ValueError(f"malformed password hash: {key} must be a positive integer")
            values[key] = int(value)
        if set(values) != {"n", "r", "p"}:
            missing = ", ".join(sorted({"n", "r", "p"} - set(values)))
            raise ValueError(f"malformed password hash: missing parameter(s) {missing}")
        n, r, p = values["n"], values["r"], values["p"]
        if n < 2 or n & (n - 1):
            raise ValueError("malformed password hash: n must be a power of 2 greater than 1")
        if r < 1 or p < 1:
            raise ValueError("malformed password hash: r and p must be at least 1")
        if 128 * n * r * p > _MAX_MEMORY:
            raise ValueError("malformed password hash: n, r and p ask for too much memory")
        salt = _b64decode(salt_text, "salt")
        digest = _b64decode(digest_text, "hash")
        if len(digest) < 16:
            raise ValueError("malformed password hash: the hash is shorter than 16 bytes")
        return cls(n, r, p, salt, digest)

    def format(self) -> str:
        """
        @return: the stored form, which L{parse} reads back.
        """
        return (
            f"{SCHEME}$n={self.n},r={self.r},p={self.p}"
            f"${_b64encode(self.salt)}${_b64encode(self.digest)}"
        )

    def kdf(self) -> Scrypt:
        """
        @return: a fresh scrypt instance with this hash's parameters.
        """
        return Scrypt(salt=self.salt, length=len(self.digest), n=self.n, r=self.r, p=self.p)


def _b64encode(data: bytes) -> str:
    """
    @return: unpadded standard base64.
    """
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str, what: str) -> bytes:
    """
    Decode unpadded (or padded) standard base64.

    @raise ValueError: C{text} is empty or not base64, naming C{what}.
    """
    if not text:
        raise ValueError(f"malformed password hash: the {what} is empty")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"malformed password hash: the {what} is not valid base64") from None


def hash_password(
    password: str,
    *,
    n: int = DEFAULT_N,
    r: int = DEFAULT_R,
    p: int = DEFAULT_P,
    salt: bytes | None = None,
) -> str:
    """
    Hash a password with scrypt and a random salt.

    This takes tens of milliseconds: do not call it on the reactor thread.

    @param password: the password (encoded as UTF-8).
    @param n: the CPU/memory cost, a power of 2.
    @param r: the block size.
    @param p: the parallelism.
    @param salt: a fixed salt, for tests only; default 16 random bytes.
    @return: C{scrypt$n=N,r=R,p=P$SALT$HASH}.
    """
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    kdf = Scrypt(salt=salt, length=HASH_BYTES, n=n, r=r, p=p)
    return PasswordHash(n, r, p, salt, kdf.derive(password.encode("utf-8"))).format()


def verify_password(stored: str, password: str) -> bool:
    """
    Check a password against a stored hash, in constant time.

    This takes tens of milliseconds: do not call it on the reactor thread.

    @param stored: from L{hash_password}.
    @param password: the candidate.
    @return: whether it matches.
    @raise ValueError: C{stored} is malformed (the message says how).
    """
    parsed = PasswordHash.parse(stored)
    try:
        parsed.kdf().verify(password.encode("utf-8"), parsed.digest)
    except InvalidKey:
        return False
    return True


def credentials_problem(user: object, password: object) -> str | None:
    """
    Say what is wrong with credentials from the wire, before any work is
    done for them.

    @param user: the user name offered (anything a peer can send).
    @param password: the password offered.
    @return: None if both are strings of sane length that encode as UTF-8,
        else a short reason naming the field (never the value).
    """
    for what, value, limit in (("user name", user, MAX_USER_LENGTH),
                               ("password", password, MAX_PASSWORD_LENGTH)):
        if value is None:
            return f"no {what} given"
        if not isinstance(value, str):
            return f"the {what} must be a string, not {type(value).__name__}"
        if len(value) > limit:
            return f"the {what} is longer than {limit} characters"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"the {what} is not valid Unicode (it has a lone surrogate)"
    return None


def _dummy_hash(users: Mapping[str, str] = {}) -> str:
    """
    A hash of a random password that unknown users are checked against, so
    that they take as long as known ones.

    @param users: the known users' hashes; the dummy uses the cost most of
        them use (the highest among equally common ones), or the default
        cost when there are none.
    @return: the hash.
    """
    costs = Counter((h.n, h.r, h.p) for h in map(PasswordHash.parse, users.values()))
    n, r, p = (DEFAULT_N, DEFAULT_R, DEFAULT_P)
    if costs:
        n, r, p = max(costs, key=lambda cost: (costs[cost], cost[0] * cost[1] * cost[2]))
    return PasswordHash(n, r, p, os.urandom(SALT_BYTES), os.urandom(HASH_BYTES)).format()


class UserStore:
    """
    Users and their password hashes; checks passwords in a thread pool.

    An unknown user costs the same scrypt work as a known one (against a
    random hash with the parameters the known users' hashes use), so
    response time does not reveal which user names exist.
    """

    def __init__(
        self,
        users: Mapping[str, str],
        reactor: Any,
        threadpool: Any | None = None,
        verify: Callable[[str, str], bool] = verify_password,
        run: Callable[[Callable[[], bool]], Deferred[bool]] | None = None,
    ) -> None:
        """
        @param users: user name to stored hash; every hash is parsed now.
        @param reactor: the reactor, which the thread pool reports back to.
        @param threadpool: where scrypt runs; default C{reactor}'s own
            (C{reactor.getThreadPool()}).  Ignored when C{run} is given.
        @param verify: the password check, replaceable in tests.
        @param run: runs a blocking check off the reactor thread and returns
            a Deferred of its result (L{rpcd.daemon.hashpool.HashingPool.submit});
            it may raise to refuse the work.
        @raise ValueError: a malformed hash, naming the user.
        """
        for user, stored in users.items():
            try:
                PasswordHash.parse(stored)
            except ValueError as e:
                raise ValueError(f"user {user!r}: {e}") from None
        self._users = dict(users)
        self._reactor = reactor
        self._threadpool = threadpool
        self._verify = verify
        self._run = run
        self._dummy = _dummy_hash(users)

    def authenticate(self, user: str, password: str) -> Deferred[bool]:
        """
        Check a user's password, off the reactor thread.

        @param user: the user name.
        @param password: the password offered.
        @return: a Deferred that fires with C{True} if C{user} exists and
            C{password} is right, C{False} otherwise (after the same scrypt
            work either way; malformed credentials, see
            L{credentials_problem}, are C{False} at once with no work); it
            fails only if the thread pool does.
        @raise Exception: whatever C{run} raises to refuse the work.
        """
        if credentials_problem(user, password) is not None:
            return succeed(False)
        stored = self._users.get(user)
        known = stored is not None
        check = self._dummy if stored is None else stored

        def verify() -> bool:
            matched = self._verify(check, password)
            return matched and known

        if self._run is not None:
            return self._run(verify)
        pool = self._threadpool if self._threadpool is not None else self._reactor.getThreadPool()
        return deferToThreadPool(self._reactor, pool, verify)


@dataclass
class Failures:
    """
    Failed login attempts under one key (a host, or a host and a user)
    within the current window.

    @ivar count: failures since C{window_start}.
    @ivar window_start: when the first of them happened.
    """

    count: int
    window_start: float


class LoginRateLimiter:
    """
    Limits failed login attempts per key: a peer host, or any other hashable
    (L{rpcd.daemon.login.LoginThrottle} also keys by host and user).

    A key may fail C{max_attempts} times within C{per_seconds} of its first
    failure; further attempts must wait until that window ends.  An attempt
    may be counted as a failure when it starts (L{record_failure}) and
    forgiven if it turns out to succeed (L{forgive}); L{record_success}
    forgets the key altogether.  At most C{max_hosts} keys are tracked;
    beyond that the one whose window started earliest is forgotten, and
    entries whose window ended are dropped as the limiter is used.
    """

    def __init__(
        self,
        clock: IReactorTime,
        max_attempts: int = 5,
        per_seconds: float = 60.0,
        max_hosts: int = 10_000,
    ) -> None:
        """
        @param clock: the time source (the reactor, or a C{Clock} in tests).
        @param max_attempts: failures allowed per window; at least 1.
        @param per_seconds: the window's length.
        @param max_hosts: how many keys to remember at most; at least 1.
        @raise ValueError: a limit out of range.
        """
        if max_attempts < 1 or max_hosts < 1 or per_seconds <= 0:
            raise ValueError("max_attempts, max_hosts and per_seconds must be positive")
        self._clock = clock
        self._max_attempts = max_attempts
        self._per_seconds = per_seconds
        self._max_hosts = max_hosts
        # Insertion order is window-start order: a key is (re)inserted when
        # its window starts.
        self._hosts: OrderedDict[Hashable, Failures] = OrderedDict()

    def __len__(self) -> int:
        """
        @return: how many keys are tracked now.
        """
        return len(self._hosts)

    def _expire(self, now: float) -> None:
        """
        Drop keys whose window has ended.
        """
        while self._hosts:
            host, failures = next(iter(self._hosts.items()))
            if now - failures.window_start < self._per_seconds:
                break
            del self._hosts[host]

    def check(self, peer_host: Hashable) -> float | None:
        """
        May C{peer_host} try to log in now?

        @param peer_host: the peer's address, without the port (or another
            key).
        @return: L{None} if it may, else how many seconds it must wait.
        """
        now = self._clock.seconds()
        self._expire(now)
        failures = self._hosts.get(peer_host)
        if failures is None or failures.count < self._max_attempts:
            return None
        return failures.window_start + self._per_seconds - now

    def record_failure(self, peer_host: Hashable) -> Failures:
        """
        Count a failed login from C{peer_host}.

        @param peer_host: the peer's address, without the port (or another
            key).
        @return: the entry counted in, which L{forgive} takes.
        """
        now = self._clock.seconds()
        self._expire(now)
        failures = self._hosts.get(peer_host)
        if failures is None:
            while len(self._hosts) >= self._max_hosts:
                self._hosts.popitem(last=False)
            failures = self._hosts[peer_host] = Failures(1, now)
        else:
            failures.count += 1
        return failures

    def forgive(self, peer_host: Hashable, counted: Failures) -> None:
        """
        Take back one failure counted by L{record_failure} (the attempt
        succeeded, or never ran), if its window is still the current one; a
        key left with no failures is forgotten.

        @param peer_host: the key given to L{record_failure}.
        @param counted: what L{record_failure} returned.
        """
        if self._hosts.get(peer_host) is counted:
            counted.count -= 1
            if counted.count <= 0:
                del self._hosts[peer_host]

    def record_success(self, peer_host: Hashable) -> None:
        """
        Forget C{peer_host}'s failures after it logged in.

        @param peer_host: the peer's address, without the port (or another
            key).
        """
        self._hosts.pop(peer_host, None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Add the options of C{rpcd hash-password [--stdin]} to C{parser}.

    @param parser: the subcommand's parser; L{run} takes what it parses.
    """
    parser.add_argument(
        "--stdin",
        action="store_true",
        help="read the password from the first line of standard input instead "
        "of prompting (for scripts)",
    )


def run(
    args: argparse.Namespace,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    prompt: Callable[[str], str] = getpass.getpass,
) -> int:
    """
    Run C{rpcd hash-password}: read a password, print its hash.

    Without C{--stdin}, it prompts twice (no echo) when standard input is a
    terminal, and reads one line otherwise.

    @param args: parsed by a parser given to L{add_arguments}.
    @param stdin: default C{sys.stdin}.
    @param stdout: where the hash goes, default C{sys.stdout}.
    @param stderr: where an error goes, default C{sys.stderr}.
    @param prompt: reads a password without echo, default C{getpass.getpass}.
    @return: the exit status: 0 on success, 1 if the password is empty or the
        two entries differ.
    """
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    if args.stdin or not stdin.isatty():
        password = stdin.readline().rstrip("\r\n")
    else:
        password = prompt("Password: ")
        if not hmac.compare_digest(password.encode(), prompt("Again: ").encode()):
            print("rpcd hash-password: the passwords differ", file=stderr)
            return 1
    if not password:
        print("rpcd hash-password: the password is empty", file=stderr)
        return 1
    print(hash_password(password), file=stdout)
    return 0
