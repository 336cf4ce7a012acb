"""
A bounded thread pool for password hashing, run as a service of the daemon.

The KDF is slow on purpose (scrypt: tens of milliseconds and 16 MiB each), so
logins get threads of their own instead of the reactor's pool, which DNS
lookups and other blocking work share; and the work waiting for them is
bounded, so that a flood of logins is refused at once instead of queueing
without end.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

log = Logger()

_T = TypeVar("_T")


class PoolFull(Exception):
    """
    The pool's threads are busy and its queue is full; try again later.
    """


class HashingPool(Service):
    """
    Runs blocking functions in its own threads: at most C{threads} at once,
    and at most C{queue} more waiting for a thread.

    Start it (L{startService}) before submitting work and stop it with the
    daemon; L{stopService} joins the threads.

    @ivar pending: jobs submitted whose function has not returned yet
        (running or waiting); a cancelled job counts until its function
        returns, since its thread is busy until then.
    @ivar limit: the most jobs that may be pending at once.
    """

    name = "login-hashing"

    def __init__(self, reactor: Any, threads: int = 2, queue: int = 64,
                 threadpool: Any | None = None) -> None:
        """
        @param reactor: what results are delivered through
            (C{callFromThread}).
        @param threads: how many functions run at once; at least 1.
        @param queue: how many more may wait; at least 0.
        @param threadpool: a C{ThreadPool}-like object (C{start}, C{stop},
            C{callInThreadWithCallback}) to run them in, for tests; by
            default a new C{ThreadPool} of C{threads} threads.
        @raise ValueError: C{threads} or C{queue} is out of range.
        """
        if threads < 1 or queue < 0:
            raise ValueError("a hashing pool needs at least 1 thread and a queue of at least 0")
        self._reactor = reactor
        self.limit = threads + queue
        self.pending = 0
        self._pool = threadpool if threadpool is not None else ThreadPool(
            minthreads=0, maxthreads=threads, name="rpcd-login")

    def submit(self, function: Callable[[], _T]) -> Deferred[_T]:
        """
        Run C{function} in one of the pool's threads.

        @param function: takes no arguments; it may block.
        @return: a Deferred firing with what it returns or failing with what
            it raises.  Cancelling the Deferred fails it at once with
            C{CancelledError}, but the function still occupies its thread
            (and counts in L{pending}) until it returns.
        @raise PoolFull: L{limit} jobs are pending already.
        @raise RuntimeError: the pool is not running (not started yet, or
            stopped).
        """
        if not self.running:
            raise RuntimeError("the login hashing pool is not running")
        if self.pending >= self.limit:
            raise PoolFull(f"{self.pending} password checks are running or waiting already")
        self.pending += 1
        d: Deferred[_T] = Deferred()

        def on_result(success: bool, result: Any) -> None:
            # In the pool's thread.
            self._reactor.callFromThread(self._finished, d, success, result)

        self._pool.callInThreadWithCallback(on_result, function)
        return d

    def _finished(self, d: Deferred[Any], success: bool, result: Any) -> None:
        """
        A job's function returned (or raised): free its place and deliver
        its result, unless its Deferred was cancelled meanwhile.
        """
        self.pending -= 1
        if d.called:
            if not success:
                log.failure("a cancelled password check failed", result)
            return
        if success:
            d.callback(result)
        else:
            assert isinstance(result, Failure)
            d.errback(result)

    def startService(self) -> None:
        """
        Start the threads (they are created as work arrives).
        """
        super().startService()
        self._pool.start()

    def stopService(self) -> None:
        """
        Stop taking work and join the threads: the checks already submitted
        (at most L{limit}) run first.
        """
        super().stopService()
        self._pool.stop()


__all__ = ["HashingPool", "PoolFull"]
