"""
Streaming calls that are opened again, on another endpoint when there is
one, when they fail before the server sent anything: what
L{rpcd.cluster.balancer.Balancer.stream} and L{rpcd.cluster.retry.RetryingClient.stream}
return.  The same API as L{rpcd.client.streams.ClientStream}::

    stream = balancer.stream("Chat.Talk", timeout=60)
    await stream.send({"text": "hi"})
    async for message in stream:
        ...

A stream is pinned to the endpoint it opened on.  It is opened again (a
new attempt, by the same L{rpcd.cluster.retry.RetryPolicy} as calls: its
C{max_attempts} and C{retry_on}; the overall C{timeout} across attempts)
only while nothing has come back from the server: no message, no result.
The messages sent so far (at most L{REPLAY_LIMIT}) are sent again on the
new attempt, and its half-close too; a stream that sent more, or whose
messages go to a consumer (L{RetryingStream.deliver_to}), is not retried.
A new attempt opens at once (no backoff): it goes to an endpoint the
stream has not tried when one is usable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from rpcd.errors import Code, RPCError, code_name

if TYPE_CHECKING:
    from rpcd.cluster.retry import RetryBudget

log = Logger()

REPLAY_LIMIT = 64
"""Messages a stream keeps to send again on a new attempt; past this it is
not retried."""


class RetryingStream:
    """
    A streaming call made of one or more attempts, each a
    L{rpcd.client.streams.ClientStream}; see the module docstring.

    @ivar method: C{Service.Method}.
    @ivar attempts: the attempts made so far.
    """

    def __init__(self, open_attempt: Callable[[float | None], Any], policy: Any,
                 clock: IReactorTime, *, method: str, timeout: float | None = None,
                 budget: RetryBudget | None = None) -> None:
        """
        @param open_attempt: opens one attempt given the seconds left before
            the deadline (None: none): returns a C{ClientStream}, or raises
            an L{RPCError} (L{rpcd.errors.Unavailable}: no endpoint).
        @param policy: the L{rpcd.cluster.retry.RetryPolicy}.
        @param clock: for the deadline.
        @param method: names the stream in errors and logs.
        @param timeout: seconds the whole stream may take, across attempts.
        @param budget: the L{rpcd.cluster.retry.RetryBudget} each attempt's outcome
            is recorded in, and that must allow each new attempt; or None.
        """
        self.method = method
        self.attempts = 0
        self._open_attempt = open_attempt
        self._policy = policy
        self._clock = clock
        self._deadline = None if timeout is None else clock.seconds() + timeout
        self._budget = budget
        self._inner: Any = None
        self._judged: Any = None
        self._received = False
        self._sent: list[Any] | None = []
        self._half_closed = False
        self._cancelled = False
        self._outcome: Any = None
        self._ended = False
        self._result_waiters: list[Deferred[Any]] = []
        self._open()

    # -- attempts

    def _open(self) -> None:
        while True:
            self.attempts += 1
            remaining = None if self._deadline is None else self._deadline - self._clock.seconds()
            try:
                inner = self._open_attempt(remaining)
            except RPCError as e:
                if self._should_retry(e):
                    continue
                self._end(Failure(e))
                return
            break
        self._inner = inner
        for value in self._sent or ():
            inner.send(value).addErrback(lambda f: None)  # its end is the stream's end
        if self._half_closed:
            inner.close_send()
        inner.result().addBoth(self._attempt_ended, inner)

    def _should_retry(self, error: BaseException) -> bool:
        budget = self._budget
        if budget is not None:
            budget.record(error, self._policy)
        if (self._cancelled or self._received or self._sent is None
                or self.attempts >= self._policy.max_attempts
                or not self._policy.retryable(error)
                or (self._deadline is not None and self._clock.seconds() >= self._deadline)
                or (budget is not None and not budget.allows())):
            return False
        log.info("opening {method} again after {code}: {error} (attempt {attempt} of {attempts})",
                 method=self.method, code=code_name(getattr(error, "code", Code.UNKNOWN)),
                 error=error, attempt=self.attempts + 1, attempts=self._policy.max_attempts)
        return True

    def _retried(self, inner: Any, failure: Failure) -> bool:
        """
        An attempt failed: open another if the policy allows.

        @return: whether the stream goes on (on a new attempt).
        """
        if inner is not self._inner:
            return True
        if self._judged is inner:
            return False
        self._judged = inner
        if failure.value is None or not self._should_retry(failure.value):
            return False
        self._open()
        return True

    def _attempt_ended(self, outcome: Any, inner: Any) -> None:
        if inner is not self._inner or self._ended:
            return
        if isinstance(outcome, Failure):
            if self._retried(inner, outcome):
                return
        elif self._budget is not None:
            self._budget.record(None, self._policy)
        self._end(outcome)

    def _end(self, outcome: Any) -> None:
        self._ended = True
        self._outcome = outcome
        waiters, self._result_waiters = self._result_waiters, []
        for d in waiters:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(outcome)

    # -- receiving

    def __aiter__(self) -> RetryingStream:
        return self

    def __anext__(self) -> Deferred[Any]:
        """
        @return: a Deferred firing with the next message, failing with
            C{StopAsyncIteration} at the end or with the stream's error.
            Cancelling it cancels the stream.
        """
        inner = self._inner
        if inner is None:
            return self._failed_result()

        def got(value: Any) -> Any:
            self._received = True
            self._sent = None
            return value

        def failed(failure: Failure) -> Any:
            if failure.check(StopAsyncIteration) or not self._retried(inner, failure):
                return failure
            return self.__anext__()
        return inner.__anext__().addCallbacks(got, failed)

    def _failed_result(self) -> Deferred[Any]:
        outcome = self._outcome
        return fail(outcome) if isinstance(outcome, Failure) else fail(StopAsyncIteration())

    def deliver_to(self, consumer: IConsumer) -> Deferred[Any]:
        """
        Write every message to a consumer, as
        L{rpcd.client.streams.ClientStream.deliver_to} does; from now on the
        stream is not retried.

        @return: a Deferred firing with the stream's final value.
        """
        self._sent = None
        if self._inner is None:
            return self._failed_result()
        return self._inner.deliver_to(consumer)

    # -- sending

    def send(self, value: Any) -> Deferred[None]:
        """
        Send one message.

        @return: a Deferred firing once it is written (or, if the attempt
            fails first and a new one opens, once it is queued there
            again); failing as C{ClientStream.send} does.
        """
        inner = self._inner
        if inner is None:
            return self._failed_result()
        if self._sent is not None:
            if len(self._sent) < REPLAY_LIMIT:
                self._sent.append(value)
            else:
                self._sent = None

        def failed(failure: Failure) -> Any:
            # The attempt's end fails its pending sends before its result:
            # decide on a new attempt here too.
            if not self._ended and self._retried(inner, failure):
                return None  # sent again on the new attempt
            return failure
        return inner.send(value).addErrback(failed)

    def close_send(self) -> None:
        """
        Half-close: no more messages follow.
        """
        self._half_closed = True
        if self._inner is not None:
            self._inner.close_send()

    # -- ending

    def cancel(self) -> None:
        """
        Give up on the stream: it fails with L{rpcd.errors.Cancelled}.
        """
        self._cancelled = True
        if self._inner is not None:
            self._inner.cancel()

    def result(self) -> Deferred[Any]:
        """
        @return: a Deferred firing with the stream's final value once the
            server ended it, or failing with the error of its last attempt.
        """
        if self._ended:
            outcome = self._outcome
            return fail(outcome) if isinstance(outcome, Failure) else succeed(outcome)
        d: Deferred[Any] = Deferred()
        self._result_waiters.append(d)
        return d

    def __repr__(self) -> str:
        return f"<RetryingStream {self.method} attempt {self.attempts}>"
