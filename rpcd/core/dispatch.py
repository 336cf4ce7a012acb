"""
Calling a method for one connection: argument conventions, deadlines,
cancellation, the cap on running handlers, and errors to wire codes.

Every wire protocol calls L{Dispatcher.call}.  A method that returns a plain
value is answered at once with no Deferred on the way (the hot path); a
Deferred or coroutine is tracked until it ends, so that a cancel frame, a
deadline or a lost connection can cancel it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Coroutine
from sys import intern as _intern
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from rpcd.core.context import CallContext, current_deadline
from rpcd.core.convert import Mismatch, result_passthrough
from rpcd.errors import (
    Cancelled,
    Code,
    DeadlineExceeded,
    InvalidArgument,
    RPCError,
    ResourceExhausted,
)
from rpcd.core.interceptors import FilteredMessages, ServerCall, filter_messages, run_chain, settled
from rpcd.core.service import Kind

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from rpcd.core.service import BoundMethod
    from rpcd.core.session import Session

log = Logger()


class Args(enum.Enum):
    """How a call's argument value maps onto the method's parameters."""

    VALUE = "value"
    """One value, as net/rpc sends (the native protocol, gob, Go's jsonrpc)."""
    POSITIONAL = "positional"
    """A list of arguments by position (JSON-RPC 2.0 C{params} array)."""
    NAMED = "named"
    """A mapping of arguments by name (JSON-RPC 2.0 C{params} object)."""


# Types of plain data: never a Deferred or a coroutine, so isinstance (an abc
# check, slow) need not be asked.
_NOT_AWAITABLE = frozenset({int, str, float, bool, bytes, type(None), list, dict, tuple})
_VALUE = Args.VALUE
_UNARY = Kind.UNARY
_NONE_CANCELLED: frozenset[Any] = frozenset()
# What a dispatcher's method tables are until its first lookup: shared by
# every dispatcher, never written (L{Dispatcher._lookup} replaces them).
_NO_METHODS: dict[str, Any] = {}
_NO_PLAIN: dict[str, frozenset[type]] = {}
_NO_SIMPLE_CALLS: dict[str, Callable[[Any, Any, float | None], Any]] = {}


class Dispatcher:
    """
    Runs calls for one connection.

    @ivar session: the connection's session.
    @ivar running: call key to the handler's Deferred, for handlers that have
        not ended yet (cancelled ones included until they end).
    @ivar simple_calls: C{Service.Method} to C{call(value, key, timeout)},
        for the methods on the hot path (unary, no access guard, no context
        parameter) once called on this connection: the same as L{call}
        with that name and one value, minus a lookup.  Read it, never
        write it: until the first lookup it is a table every dispatcher
        shares.
    """

    __slots__ = ("session", "clock", "max_running", "running", "_cancelled", "_counts",
                 "_methods", "_plain", "simple_calls", "_interceptors")

    def __init__(self, session: Session, clock: IReactorTime, max_running: int = 1000) -> None:
        """
        @param session: the connection's session.
        @param clock: the reactor's clock for deadlines.
        @param max_running: how many handlers may run at once on this
            connection before new calls fail with RESOURCE_EXHAUSTED.
        """
        self.session = session
        self.clock = clock
        self.max_running = max_running
        self.running: dict[Any, Deferred] = {}
        # Calls whose deadline expired: the shared empty frozenset until the
        # first expiry (an idle connection holds no set of its own).
        self._cancelled: set[Any] | frozenset[Any] = _NONE_CANCELLED
        self._counts = session.registry.call_counts
        # The methods looked up, their plain result types, and the hot path
        # of each simple one: the shared empty tables until the first lookup
        # (an idle connection holds none of its own).
        self._methods: dict[str, BoundMethod] = _NO_METHODS
        self._plain: dict[str, frozenset[type]] = _NO_PLAIN
        self.simple_calls: dict[str, Callable[[Any, Any, float | None], Any]] = _NO_SIMPLE_CALLS
        # With interceptors, every call goes through rpcd.core.interceptors'
        # chain (and simple_calls stays empty).
        self._interceptors: tuple[Any, ...] = tuple(getattr(session.registry, "interceptors", ()))

    def call(self, name: str, value: Any, key: Any = None, *, timeout: float | None = None,
             metadata: dict[str, Any] | None = None, args: Args = Args.VALUE) -> Any:
        """
        Call a method.

        @param name: C{Service.Method}.
        @param value: the decoded argument value.
        @param key: identifies the call on this connection (for L{cancel});
            must be unique among running calls.
        @param timeout: seconds the caller allows, or None.
        @param metadata: the caller's metadata.
        @param args: how C{value} maps onto the parameters.
        @return: the result as plain data when the method finished at once,
            or a Deferred that fires with it (or fails with L{RPCError}).
        @raise RPCError: the call failed at once; the code says why.
        """
        simple = self.simple_calls.get(name)
        if simple is not None and args is _VALUE:
            return simple(value, key, timeout)
        if self._interceptors:
            return self._intercepted(name, value, key, timeout, metadata, args)
        if timeout is not None:
            return self._with_deadline(name, value, key, timeout, metadata, args)
        return self._call(name, value, key, timeout, metadata, args)

    def _with_deadline(self, name: str, value: Any, key: Any, timeout: float,
                       metadata: dict[str, Any] | None, args: Args) -> Any:
        """
        L{_call} with the deadline in L{current_deadline} while the handler
        starts, for the calls it makes.
        """
        token = current_deadline.set((self.clock.seconds() + timeout, self.clock))
        try:
            return self._call(name, value, key, timeout, metadata, args)
        finally:
            current_deadline.reset(token)

    def _call(self, name: str, value: Any, key: Any, timeout: float | None,
              metadata: dict[str, Any] | None, args: Args) -> Any:
        method, context = self._begin(name, timeout, metadata)
        if method.spec.kind is not Kind.UNARY:
            raise RPCError(f"{name} is a {method.spec.kind.value.replace('_', '-')}ing method: "
                           "open it as a stream (rpcd's native protocol)",
                           code=Code.FAILED_PRECONDITION)
        try:
            if args is Args.VALUE:
                result = method.invoke(value, context)
            elif args is Args.NAMED:
                result = method.invoke_named(value, context)
            else:
                result = method.invoke_positional(value, context)
        except RPCError:
            raise
        except Exception as e:
            raise self._unexpected(name, e) from e
        if type(result) in self._plain[name]:
            return result  # the result converter would return it unchanged
        return self._finish(name, method, result, key, timeout)

    def _finish(self, name: str, method: BoundMethod, result: Any, key: Any,
                timeout: float | None) -> Any:
        """
        What L{call} returns for a result that is not plain data: a tracked
        Deferred for a Deferred or a coroutine, else the converted result.
        """
        if type(result) not in _NOT_AWAITABLE:
            if isinstance(result, Deferred):
                return self._track(name, method, result, key, timeout)
            if isinstance(result, Coroutine):
                return self._track(name, method, Deferred.fromCoroutine(result), key, timeout)
        return self._convert(name, method, result)

    def _lookup(self, name: str) -> BoundMethod:
        """
        Find a method, once per connection and name.

        @param name: C{Service.Method}.
        @return: the bound method.
        @raise RPCError: there is no such method (UNIMPLEMENTED).
        """
        method = self.session.lookup(name)
        if method is None:
            raise self.session.registry.unknown(name)
        spec = method.spec
        plain = self._passthrough(method)
        if self._methods is _NO_METHODS:
            self._methods = {}
            self._plain = {}
        self._plain[name] = plain
        self._methods[name] = method
        if spec.kind is Kind.UNARY and method.guard is None and spec.context_param is None \
                and not self._interceptors:
            if self.simple_calls is _NO_SIMPLE_CALLS:
                self.simple_calls = {}
            self.simple_calls[name] = self._simple_call(name, method, plain)
        return method

    def _passthrough(self, method: BoundMethod) -> frozenset[type]:
        """
        The types of a method's result that L{_convert} would return
        unchanged, so that a call may skip it (and the awaitable checks).

        @param method: a method being looked up.
        @return: see L{result_passthrough}.
        """
        spec = method.spec
        return result_passthrough(spec.result_hint, spec.convert_result)

    def _simple_call(self, name: str, method: BoundMethod,
                     plain: frozenset[type]) -> Callable[[Any, Any, float | None], Any]:
        """
        The hot path for one method: a unary method with no access guard and
        no context parameter, called with one value, needs of L{_begin}'s
        steps only the count and the limit.

        @return: C{call(value, key, timeout)}, as L{call} for that method.
        """
        counts = self._counts
        running = self.running
        invoke = method.invoke

        clock = self.clock
        deadline_var = current_deadline

        def call(value: Any, key: Any, timeout: float | None = None) -> Any:
            counts[name] = counts.get(name, 0) + 1
            if len(running) >= self.max_running:
                raise self._exhausted()
            if timeout is not None:
                # The deadline is visible to the calls the handler makes.
                token = deadline_var.set((clock.seconds() + timeout, clock))
                try:
                    result = invoke(value, None)
                    if type(result) in plain:
                        return result
                    return self._finish(name, method, result, key, timeout)
                except RPCError:
                    raise
                except Exception as e:
                    raise self._unexpected(name, e) from e
                finally:
                    deadline_var.reset(token)
            try:
                result = invoke(value, None)
            except RPCError:
                raise
            except Exception as e:
                raise self._unexpected(name, e) from e
            if type(result) in plain:
                return result  # the result converter would return it unchanged
            return self._finish(name, method, result, key, timeout)
        return call

    def _exhausted(self) -> ResourceExhausted:
        return ResourceExhausted(
            f"too many calls running on this connection (limit {self.max_running}); "
            "wait for some to finish")

    def _begin(self, name: str, timeout: float | None,
               metadata: dict[str, Any] | None) -> tuple[BoundMethod, CallContext | None]:
        method = self._methods.get(name) or self._lookup(name)
        counts = self._counts
        counts[name] = counts.get(name, 0) + 1
        if method.guard is not None:
            method.guard(self.session)
        if method.spec.context_param is None:
            context = None
        else:
            context = CallContext(self.session, name, metadata,
                                  None if timeout is None else self.clock.seconds() + timeout,
                                  self.clock)
        if len(self.running) >= self.max_running:
            raise self._exhausted()
        return method, context

    def open_stream(self, name: str, key: Any,
                    start: Callable[[BoundMethod, CallContext | None], Deferred],
                    *, timeout: float | None = None,
                    metadata: dict[str, Any] | None = None, value: Any = None) -> Deferred:
        """
        Start a streaming call, tracked like any running handler: it counts
        against the limit of running calls, and a cancel, its deadline or
        the connection's end cancel it.

        @param name: C{Service.Method}.
        @param key: identifies the call on this connection (for L{cancel}).
        @param start: runs the handler: called with the method and its
            context (None when the method takes none); returns a Deferred
            that fires when the handler is done, with its final value.
        @param timeout: seconds the caller allows, or None.
        @param metadata: the caller's metadata.
        @param value: the opening argument (for interceptors to see).
        @return: a Deferred firing with the final value as plain data, or
            failing with an L{RPCError} (L{Cancelled}, L{DeadlineExceeded},
            the handler's own error).
        @raise RPCError: the call failed at once (unknown method, access,
            too many running calls).
        """
        if self._interceptors:
            d = self._intercepted(name, value, key, timeout, metadata, _VALUE, start)
            return d if isinstance(d, Deferred) else succeed(d)
        method, context = self._begin(name, timeout, metadata)
        token = None if timeout is None else current_deadline.set(
            (self.clock.seconds() + timeout, self.clock))
        try:
            d = start(method, context)
        except RPCError:
            raise
        except Exception as e:
            raise self._unexpected(name, e) from e
        finally:
            if token is not None:
                current_deadline.reset(token)
        return self._track(name, method, d, key, timeout)

    def _intercepted(self, name: str, value: Any, key: Any, timeout: float | None,
                     metadata: dict[str, Any] | None, args: Args,
                     start: Callable[[Any, CallContext | None], Deferred] | None = None) -> Any:
        """
        A call (or with C{start}, a stream) through the interceptors.

        @return: as L{call}: the result, or a Deferred of it.
        @raise RPCError: the call failed at once.
        """
        method = self._methods.get(name)
        missing: RPCError | None = None
        if method is None:
            try:
                method = self._lookup(name)
            except RPCError as e:
                missing = e
        call = ServerCall(self.session, name, "unary" if method is None else method.spec.kind.value,
                          value, metadata,
                          None if timeout is None else self.clock.seconds() + timeout,
                          self.clock, method is not None)
        call._step = (method, missing, key, args, start)
        d = run_chain(self._interceptors, call, self._final)
        try:
            result = settled(d)
        except RPCError:
            raise
        except BaseException:
            self._chain_failed(Failure(), name)
        if result is d:
            d.addErrback(self._chain_failed, name)
        return result

    def _final(self, call: ServerCall) -> Any:
        """
        The innermost step of the chain: run the handler.

        @return: its result as plain data, or a tracked Deferred of it.
        """
        method, missing, key, args, start = call._step
        if method is None:
            assert missing is not None
            raise missing
        name = call.method
        counts = self._counts
        counts[name] = counts.get(name, 0) + 1
        if method.guard is not None:
            method.guard(self.session)
        if len(self.running) >= self.max_running:
            raise self._exhausted()
        deadline = call.deadline
        spec = method.spec
        context = None
        if spec.context_param is not None:
            context = CallContext(self.session, name, call.metadata, deadline, self.clock)
        left = None
        token = None
        if deadline is not None:
            left = call.time_remaining()
            token = current_deadline.set((deadline, self.clock))
        try:
            if start is not None:
                d = start(_filtered(method, call), context)
                return self._track(name, method, d, key, left)
            if spec.kind is not _UNARY:
                raise RPCError(f"{name} is a {spec.kind.value.replace('_', '-')}ing "
                               "method: open it as a stream (rpcd's native protocol)",
                               code=Code.FAILED_PRECONDITION)
            if args is _VALUE:
                result = method.invoke(call.value, context)
            elif args is Args.NAMED:
                result = method.invoke_named(call.value, context)
            else:
                result = method.invoke_positional(call.value, context)
            if type(result) in self._plain[name]:
                return result
            return self._finish(name, method, result, key, left)
        except RPCError:
            raise
        except Exception as e:
            raise self._unexpected(name, e) from e
        finally:
            if token is not None:
                current_deadline.reset(token)

    def _chain_failed(self, failure: Failure, name: str) -> None:
        error = failure.value
        if isinstance(error, RPCError):
            raise error
        if isinstance(error, CancelledError):
            raise Cancelled(f"{name} was cancelled")
        assert error is not None
        raise self._unexpected(name, error, failure)

    def _convert(self, name: str, method: BoundMethod, result: Any) -> Any:
        try:
            return method.spec.convert_result(result)
        except Mismatch as e:
            log.error("{method} returned a value that does not match its type hints: {why}",
                      method=name, why=e.describe("result"))
            raise InvalidArgument(f"{name} returned a bad result: {e.describe('result')}") from None

    def _track(self, name: str, method: BoundMethod, d: Deferred, key: Any,
               timeout: float | None) -> Deferred:
        if key is None:
            key = object()
        self.running[key] = d
        timer: IDelayedCall | None = None
        if timeout is not None:
            timer = self.clock.callLater(timeout, self._expire, key, d)
        # The name as the registry spells it, not the copy decoded from this
        # call's frame: a long-poll call holds it while it waits.
        d.addBoth(_finished, self, key, d, _intern(name), method, timer, timeout)
        return d

    def _expire(self, key: Any, d: Deferred) -> None:
        if self._cancelled is _NONE_CANCELLED:
            self._cancelled = set()
        self._cancelled.add(("deadline", key))  # type: ignore[union-attr]
        d.cancel()

    def _failed(self, name: str, expired: bool, timeout: float | None, failure: Failure) -> None:
        error = failure.value
        assert error is not None  # a Failure always holds its exception
        if isinstance(error, CancelledError):
            if expired:
                raise DeadlineExceeded(f"{name} did not finish within its deadline of {timeout:g} s")
            raise Cancelled(f"{name} was cancelled")
        if isinstance(error, RPCError):
            raise error
        raise self._unexpected(name, error, failure)

    def _unexpected(self, name: str, error: BaseException, failure: Failure | None = None) -> RPCError:
        log.failure("{method} raised an unexpected error", failure or Failure(error), method=name)
        return RPCError(f"{type(error).__name__}: {error}")

    def cancel(self, key: Any) -> bool:
        """
        Cancel a running call (the caller gave up on it).

        @param key: the key the call was started with.
        @return: whether a running call had that key.
        """
        d = self.running.get(key)
        if d is None:
            return False
        d.cancel()
        return True

    def close(self) -> None:
        """
        The connection is gone: cancel every running handler and close the
        session.
        """
        for d in list(self.running.values()):
            d.cancel()
        self.session.close()


def _finished(outcome: Any, dispatcher: Dispatcher, key: Any, d: Deferred, name: str,
              method: BoundMethod, timer: IDelayedCall | None, timeout: float | None) -> Any:
    """
    What a tracked call's Deferred runs when the handler ends (as callback
    and errback, with the rest of the arguments in one tuple): forget the
    call, stop its deadline and give its outcome as L{Dispatcher.call}
    would.  A function and a tuple rather than a closure: a pending
    long-poll holds them, 96 bytes against the closure's 576 (its function
    object and eight cells).
    """
    running = dispatcher.running
    if running.get(key) is d:
        del running[key]
    if timer is not None and timer.active():
        timer.cancel()
    # Forgotten however the handler ends: one that swallows its
    # cancellation must not leave its mark behind.
    cancelled = dispatcher._cancelled
    expired = ("deadline", key) in cancelled
    if expired:
        cancelled.discard(("deadline", key))  # type: ignore[union-attr]
    if isinstance(outcome, Failure):
        return dispatcher._failed(name, expired, timeout, outcome)
    return dispatcher._convert(name, method, outcome)


def error_fields(error: BaseException) -> tuple[int, str, Any]:
    """
    The wire fields of an error a call ended with.

    @param error: usually an L{RPCError}.
    @return: C{(code, message, details)}.
    """
    if isinstance(error, RPCError):
        return int(error.code), error.message, error.details
    return 2, f"{type(error).__name__}: {error}", None


class _FilteredMethod:
    """
    A stream's method as the stream sees it once interceptors filter its
    messages: L{rpcd.server.streams.ServerStream.start} reads C{spec}, C{invoke}
    and C{invoke_stream}.
    """

    def __init__(self, method: BoundMethod, call: ServerCall) -> None:
        self._method = method
        self.invoke = method.invoke
        self.guard = method.guard
        spec = method.spec
        if call.sent_filters and spec.convert_message_out is not None:
            convert = spec.convert_message_out
            sent = filter_messages(call.sent_filters)
            spec = dataclasses.replace(spec, convert_message_out=lambda item: convert(sent(item)))
        self.spec = spec
        self._received = filter_messages(call.received_filters) if call.received_filters else None

    def invoke_stream(self, value: Any, context: CallContext | None, messages: Any) -> Any:
        if self._received is not None:
            messages = FilteredMessages(messages, self._received)
        return self._method.invoke_stream(value, context, messages)


def _filtered(method: BoundMethod, call: ServerCall) -> Any:
    """
    @return: C{method}, or a L{_FilteredMethod} when the call's interceptors
        filter its messages.
    """
    if call.received_filters or call.sent_filters:
        return _FilteredMethod(method, call)
    return method
