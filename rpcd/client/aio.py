"""
rpcd's client for asyncio applications: no reactor, no Twisted to learn.

Inside C{asyncio.run()} (or any running event loop)::

    from rpcd.client import aio

    async def main():
        async with await aio.connect("tcp:127.0.0.1:1234") as client:
            print(await client.call("Arith.Multiply", {"A": 7, "B": 8}))
            print(await client.Arith.Multiply(A=7, B=8))            # the same call
            async for n in client.stream("Counter.Count", 3):       # a server stream
                print(n)

    asyncio.run(main())

It speaks rpcd's native protocol through the same sans-IO state machine as
the Twisted client (L{rpcd.wire.connection.NativeConnection}): every frame
rule, stream credit included, is that module's; this one does the IO on
asyncio's transports, the timers on the loop, and the futures.

A unary result read from the socket wakes the task awaiting it at once, in
that read: the future's one callback, the task's wakeup, is taken off and
run in the task's context (the task steps in as it does from the loop), not
scheduled with C{call_soon}; the calls the woken tasks make go out in the
read's one write.  Anything else (an error, a lost connection, a read that
arrives inside a task, any read on a loop in debug mode) completes the
futures the usual way.

A client is not tied to the loop or the process it was made in: used from
another event loop (a second C{asyncio.run()}) or in a child process after
C{fork()}, it leaves the old connection alone (in a child, it closes only its
own copy of the socket, sending nothing) and dials a new one, so the parent's
calls are never disturbed.  When the server drains (a graceful GOAWAY), new
calls, and the calls it did not run, go on a new connection, within each
call's timeout.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import ssl
import threading
from asyncio import InvalidStateError
from collections import deque
from typing import Any, AsyncIterator, Callable, Sequence, cast

from rpcd.client.client import ServiceAttributes
from rpcd.client.plainsocket import split_endpoint
from rpcd.errors import (
    Code,
    ConnectionLost,
    DeadlineExceeded,
    EncodeError,
    Internal,
    NotRun,
    RPCError,
    Unavailable,
    error_from_wire,
)
from rpcd.wire.connection import (
    BAD_FRAME,
    CONNECTION_ERROR,
    CREDIT,
    ERROR,
    GOAWAY,
    MESSAGE,
    PING,
    PREFACE_RECEIVED,
    RESULT,
    NativeConnection,
    NoCredit,
    PrefaceError,
)
from rpcd.wire.fields import check_metadata, check_method, check_timeout
from rpcd.wire.flow import DEFAULT_WINDOW, check_window

#: How many times a call the server did not run (it was draining) is sent again.
REDIALS = 3

#: This process's generation: 0 in the process that imported this module,
#: one more in each child after fork() (cheaper to compare per call than
#: os.getpid(), a system call).
_generation = [0]


#: Stands for this process and generation in L{_Connection.token}: a new
#: object in each child after fork().
_token = object()


def _forked() -> None:
    global _token
    _generation[0] += 1
    _token = object()


os.register_at_fork(after_in_child=_forked)


# Endpoints.

class Endpoint:
    """
    Where to connect, read from a client endpoint string of the same syntax
    as the Twisted client's: C{tcp:HOST:PORT}, C{unix:PATH}, and
    C{tls:HOST:PORT} (C{host=}, C{port=}, C{trustRoots=} a directory or PEM
    file, C{certificate=} and C{privateKey=} for a client certificate,
    C{timeout=} seconds to connect).

    @ivar kind: C{tcp}, C{unix} or C{tls}.
    @ivar text: the string, for messages.
    """

    def __init__(self, description: str) -> None:
        """
        @raise ValueError: a string this client cannot use, naming the part.
        """
        if not isinstance(description, str):
            raise ValueError(f"an endpoint is a string like 'tcp:127.0.0.1:1234', "
                             f"got {description!r}")
        self.text = description
        kind, *parts = split_endpoint(description)
        positional = [p for p in parts if "=" not in p]
        options = dict(p.split("=", 1) for p in parts if "=" in p)
        self.kind = kind
        self.host = ""
        self.port = 0
        self.path = ""
        self.ssl: ssl.SSLContext | None = None
        self.connect_timeout: float | None = None
        if "timeout" in options:
            self.connect_timeout = float(options.pop("timeout"))
        if kind == "unix":
            self.path = options.pop("path", positional[0] if positional else "")
            if not self.path:
                raise ValueError(f"{description!r}: a unix endpoint needs a path")
        elif kind in ("tcp", "tls"):
            names = ["host", "port"]
            for name, value in zip(names, positional):
                options.setdefault(name, value)
            self.host = options.pop("host", "")
            port = options.pop("port", "")
            if not self.host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{description!r}: a {kind} endpoint needs a host and a "
                                 f"port from 1 to 65535, like '{kind}:127.0.0.1:1234'")
            self.port = int(port)
            if kind == "tls":
                self.ssl = _tls_context(description, options)
        else:
            raise ValueError(f"{description!r}: the asyncio client connects to tcp:, unix: "
                             f"and tls: endpoints, not {kind!r}")
        if options:
            raise ValueError(f"{description!r}: unknown option(s) {', '.join(sorted(options))}")

    async def open(self, loop: asyncio.AbstractEventLoop,
                   factory: Callable[[], asyncio.BaseProtocol]) -> Any:
        """
        @return: the connected C{(transport, protocol)}.
        """
        if self.kind == "unix":
            return await loop.create_unix_connection(factory, self.path)
        return await loop.create_connection(factory, self.host, self.port, ssl=self.ssl,
                                            server_hostname=self.host if self.ssl else None)


def _tls_context(description: str, options: dict[str, str]) -> ssl.SSLContext:
    """
    A client TLS context as rpcd's Twisted client makes it: TLS 1.2 at
    least, the server's certificate checked against C{trustRoots} (or the
    system's roots) and the host name.
    """
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    roots = options.pop("trustRoots", None)
    if roots is not None:
        if os.path.isdir(roots):
            for name in sorted(os.listdir(roots)):
                full = os.path.join(roots, name)
                if name.endswith((".pem", ".crt")) and os.path.isfile(full):
                    context.load_verify_locations(cafile=full)
        elif os.path.isfile(roots):
            context.load_verify_locations(cafile=roots)
        else:
            raise ValueError(f"{description!r}: trustRoots={roots} is neither a directory "
                             f"nor a PEM file")
    certificate = options.pop("certificate", None)
    key = options.pop("privateKey", None)
    if certificate:
        context.load_cert_chain(certificate, key or certificate)
    elif key:
        raise ValueError(f"{description!r}: privateKey= needs certificate=")
    return context


# One connection.

#: Bytes a socket read may bring at most (asyncio's own limit).
READ_SIZE = 256 * 1024


class _Connection(asyncio.BufferedProtocol):
    """
    One socket to a server: asyncio's transport around a client-side
    L{NativeConnection}.  Calls are futures in C{pending}, keyed by id.

    It reads into a buffer of its own (a buffered protocol): asyncio's
    plain protocol reads into a new 256 KiB object each time, which glibc
    maps, shrinks and unmaps again for every read (three system calls and
    a page fault per read, more than the read itself costs).
    """

    def __init__(self, endpoint: Endpoint, loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint = endpoint
        self.loop = loop
        self.pid = os.getpid()
        self.generation = _generation[0]
        # _token while the connection is usable but for its loop (neither
        # lost nor going away, in the process that made it), else None:
        # one test per call for the three.
        self.token: object | None = _token
        self.conn = NativeConnection(client_side=True)
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = loop.create_future()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.streams: dict[int, Stream] = {}
        self.ids = itertools.count(1)
        self.going_away: str | None = None
        self.lost: str | None = None
        self.heard = False
        self._writable: asyncio.Future[None] | None = None
        self._flush_due = False
        # Whether data_received is running (a woken task may re-enter it).
        self._in_read = False
        self._new_future = _future_factory(loop)
        # Whether a result may wake its task at once (see _wake): the
        # futures are asyncio's own (C) ones, whose callbacks it can read
        # (a Python without those private names wakes through the loop).
        self.wake_direct = _CAN_WAKE and type(self._new_future()) is _Future
        self._read_view: memoryview | None = None
        # The loop whose _thread_id says whether it runs in this thread
        # (see on_loop), when it is one of asyncio's own that keeps it.
        self.base_loop: Any = None
        if isinstance(loop, asyncio.BaseEventLoop) and getattr(
                loop, "_thread_id", None) == _get_ident() and _get_running_loop() is loop:
            self.base_loop = loop

    # asyncio.BufferedProtocol

    def get_buffer(self, sizehint: int) -> memoryview:
        view = self._read_view
        if view is None:
            view = self._read_view = memoryview(bytearray(READ_SIZE))
        return view

    def buffer_updated(self, nbytes: int) -> None:
        view = self._read_view
        assert view is not None
        self.data_received(view[:nbytes].tobytes())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance.
        self.transport = cast(asyncio.Transport, transport)
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        if self._in_read:
            # A task this read woke closed the transport, and asyncio's TLS
            # transport read what it still held: after this read, in order.
            self.loop.call_soon(self.data_received, data)
            return
        self.heard = True
        conn = self.conn
        events = conn.receive_data(data)
        plain = conn.plain
        # The task a result wakes runs now, in this read (see _wake), unless
        # this read runs inside a task (a task's step cannot start inside
        # another's), on a loop whose futures are not asyncio's own, or on
        # a loop in debug mode (whose slow-callback warnings name the task
        # that was slow only when its step is a callback of its own).
        direct = (self.wake_direct and _current_task(self.loop) is None
                  and not self.loop.get_debug())
        due = self._flush_due
        # The calls the tasks woken make go out in one write, at the end.
        self._flush_due = True
        scheduled = False
        interrupt: BaseException | None = None
        self._in_read = True
        try:
            if plain:
                # Unary RESULTs, their kind, length and id checked by the
                # connection: no look at each.  (pending is never replaced:
                # a task woken may close the connection, which empties it.)
                pop = self.pending.pop
                results = iter(events if plain == len(events) else events[:plain])
                if direct:
                    for _, call_id, value in results:
                        future = pop(call_id, None)
                        if future is None:
                            self._result(call_id, value)
                            continue
                        # _wake, inline (once per call).
                        callbacks = future._callbacks
                        if callbacks is not None and len(callbacks) == 1:
                            callback, context = callbacks[0]
                            if type(getattr(callback, "__self__", None)) is _Task:
                                future.remove_done_callback(callback)
                                future.set_result(value)
                                try:
                                    context.run(callback, future)
                                except (SystemExit, KeyboardInterrupt) as e:
                                    interrupt, direct = e, False  # raised at the end
                                    break
                                except BaseException as e:  # noqa: BLE001 (reported)
                                    self._wake_failed(callback, context, future, e)
                                continue
                        try:
                            future.set_result(value)
                            scheduled = True
                        except InvalidStateError:
                            pass  # cancelled: the task will send a CANCEL
                if not direct:  # (or those after an interrupt: the same iterator)
                    for _, call_id, value in results:
                        future = pop(call_id, None)
                        if future is not None:
                            try:
                                future.set_result(value)
                                scheduled = True
                            except InvalidStateError:
                                pass  # cancelled: the task will send a CANCEL
                        else:
                            self._result(call_id, value)
            if plain < len(events):
                for event in events[plain:] if plain else events:
                    if event[0] == RESULT:
                        future = self.pending.pop(event[1], None)
                        if future is None:
                            self._result(event[1], event[2])
                        elif not future.done():
                            if direct:
                                try:
                                    scheduled = not self._wake(future, event[2]) or scheduled
                                except (SystemExit, KeyboardInterrupt) as e:
                                    interrupt, direct = e, False
                            else:
                                future.set_result(event[2])
                                scheduled = True
                    elif self._event(event):
                        return
        finally:
            self._flush_due = due
            self._in_read = False
            if interrupt is not None:
                if isinstance(self.loop, asyncio.BaseEventLoop):
                    raise interrupt  # asyncio's transports pass it on to the loop
                # Others (uvloop) take an error out of a read as the
                # connection's end: the loop raises it, from a callback.
                self.loop.call_soon(_raise, interrupt)
        self.flush()  # the calls of the tasks woken, a PONG, a CANCEL
        if scheduled and not self._flush_due:
            # The callers scheduled run next, before this: the calls they
            # make then go out in one write, in the same turn of the loop.
            self._flush_due = True
            self.loop.call_soon(self._flush_turn)

    def _wake(self, future: asyncio.Future[Any], value: Any) -> bool:
        """
        Set a pending future's result and, when its one callback is the
        wakeup of the asyncio task awaiting it, run that at once, in the
        task's context (the task steps in, as from the loop: inside it
        C{asyncio.current_task()} is that task), instead of through
        C{call_soon}: no C{Handle} and no turn of the loop per call.  Other
        callbacks are scheduled as C{set_result} schedules them.  Only from
        a callback of the loop, outside any task.

        An error the wakeup raises is the loop's to report (as asyncio
        reports its callbacks'); C{SystemExit} and C{KeyboardInterrupt}
        propagate, after the future's result is set.

        @return: whether the wakeup ran (else it is scheduled).
        """
        callbacks = future._callbacks
        if callbacks is not None and len(callbacks) == 1:
            callback, context = callbacks[0]
            if type(getattr(callback, "__self__", None)) is _Task:
                future.remove_done_callback(callback)
                future.set_result(value)
                try:
                    context.run(callback, future)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as e:  # noqa: BLE001 (reported)
                    self._wake_failed(callback, context, future, e)
                return True
        future.set_result(value)
        return False

    def _wake_failed(self, callback: Any, context: Any, future: asyncio.Future[Any],
                     error: BaseException) -> None:
        """
        A task's wakeup, run at once, raised C{error}.  If the task did not
        step (its context was entered already, or another task was running:
        it still waits on C{future}), the wakeup is scheduled as
        C{set_result} would have; else the error is the loop's to report.
        """
        if callback.__self__._fut_waiter is future:
            self.loop.call_soon(callback, future, context=context)
            return
        self.loop.call_exception_handler({
            "message": f"Exception in callback {callback!r}", "exception": error,
            "future": future})

    def _result(self, call_id: int, value: Any) -> None:
        """
        A RESULT for no pending unary call: a stream's end, or a call
        given up on.
        """
        stream = self.streams.pop(call_id, None)
        if stream is not None:
            stream._finished(value, None)

    def _event(self, event: Any) -> bool:
        """
        Handle one event other than a unary RESULT.

        @return: whether the connection is closing.
        """
        kind = event[0]
        if kind == ERROR:
            _, call_id, code, message, details = event
            self._fail(call_id, error_from_wire(code, message, details))
        elif kind == MESSAGE or kind == CREDIT:
            stream = self.streams.get(event[1])
            if stream is not None:
                stream._event(event)
        elif kind == BAD_FRAME:
            _, call_id, bad, why = event
            if call_id in self.streams and (bad == MESSAGE or bad == CREDIT):
                self.conn.send_cancel(call_id)
            self._fail(call_id, Internal(f"bad frame from {self.endpoint.text} for call "
                                         f"{call_id}: {why}"))
        elif kind == PING:
            self.conn.send_pong(event[1])
        elif kind == PREFACE_RECEIVED:
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind == GOAWAY:
            _, last_id, _, message, graceful = event
            if graceful:
                self.go_away(last_id, message)
                return False
            self.close_with(Unavailable(f"{self.endpoint.text}: {message}"))
            return True
        elif kind == CONNECTION_ERROR:
            error = event[1]
            if isinstance(error, PrefaceError):
                why = f"{self.endpoint.text} does not speak rpcd's native protocol ({error})"
            else:
                why = f"bad frame from {self.endpoint.text}: {error}"
            self.conn.close(int(Code.INVALID_ARGUMENT), f"protocol error: {why}")
            self.flush()
            self.close_with(Unavailable(why))
            return True
        return False

    def _fail(self, call_id: int, error: Exception) -> None:
        future = self.pending.pop(call_id, None)
        if future is not None:
            if not future.done():
                future.set_exception(error)
            return
        stream = self.streams.pop(call_id, None)
        if stream is not None:
            stream._finished(None, error)

    def go_away(self, last_id: int, message: str) -> None:
        """
        The server drains: the calls after C{last_id} fail with L{NotRun}
        (the client sends them again elsewhere); no new call is sent here.
        """
        self.going_away = message
        self.token = None
        for call_id in [k for k in self.pending if k > last_id]:
            self._fail(call_id, NotRun(f"{self.endpoint.text} went away before running call "
                                       f"{call_id} ({message})"))
        for call_id in [k for k in self.streams if k > last_id]:
            self._fail(call_id, NotRun(f"{self.endpoint.text} went away before opening stream "
                                       f"{call_id} ({message})"))
        if not self.pending and not self.streams and self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    async def writable(self) -> None:
        """
        Wait while the socket's buffer is over asyncio's high-water mark.
        """
        while self._writable is not None:
            await asyncio.shield(self._writable)

    def connection_lost(self, exc: Exception | None) -> None:
        why = "closed by the server" if exc is None else str(exc) or type(exc).__name__
        if not self.heard and self.endpoint.ssl is None and exc is None:
            why = ("the server closed the connection without a word: it may expect TLS on "
                   "this port (use a tls: endpoint), or not be an rpcd server")
        self.close_with(ConnectionLost(f"connection to {self.endpoint.text} lost before the "
                                       f"call was answered: {why}"), lost=why)
        self.resume_writing()

    # Calls.

    def _flush_turn(self) -> None:
        self._flush_due = False
        self.flush()

    def flush_soon(self) -> None:
        """
        Write what is queued at the end of this turn of the loop, with what
        else is queued by then.
        """
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush_turn)

    def flush(self) -> None:
        """
        Write what is queued now.
        """
        data = self.conn.data_to_send()
        if data and self.transport is not None and self.lost is None:
            self.transport.write(data)

    def close_with(self, error: Exception, lost: str | None = None) -> None:
        """
        Fail every call and stream with C{error} and close the socket.
        """
        if self.lost is None:
            self.lost = lost or str(error)
        self.token = None
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: the dialler reports it
        pending = list(self.pending.values())
        self.pending.clear()  # the same table: a read that is waking tasks holds it
        for future in pending:
            if not future.done():
                future.set_exception(error)
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream._finished(None, error)
        self.conn.clear()
        if self.transport is not None:
            self.transport.close()

    def usable(self) -> bool:
        return self.token is _token and self.on_loop()

    def on_loop(self) -> bool:
        """
        @return: whether this connection's loop is the one running (in this
            thread).  For asyncio's own loops, without the system call
            (getpid) that C{asyncio.get_running_loop} makes: the loop
            running in this thread is the one whose C{_thread_id} is this
            thread's.
        """
        base = self.base_loop
        if base is not None:
            return bool(base._thread_id == _get_ident())
        return _get_running_loop() is self.loop

    def start_call(self, method: str, args: Any, timeout: float | None,
                   metadata: dict[str, Any] | None) -> tuple[int, asyncio.Future[Any]] | None:
        """
        Send a call if this connection is L{usable} (in the write of this
        turn of the loop: the calls the tasks ready now make go out together).

        @return: its id and the future of its result; None when the
            connection is not usable (nothing is sent).
        @raise EncodeError: msgpack cannot encode the argument; nothing is sent.
        """
        # usable(), inline: this is once per call.
        if self.token is not _token or not (
                self.base_loop._thread_id == _get_ident() if self.base_loop is not None
                else _get_running_loop() is self.loop):
            return None
        call_id = next(self.ids)
        try:
            self.conn.send_call(call_id, method, args, timeout, metadata)
        except Exception as e:
            raise EncodeError(f"cannot send {method}: the native codec cannot encode its "
                              f"argument: {type(e).__name__}: {e}") from e
        future = self.pending[call_id] = self._new_future()
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush_turn)
        return call_id, future

    def cancel(self, call_id: int) -> None:
        """
        The caller gave up on call C{call_id}: tell the server.
        """
        if self.pending.pop(call_id, None) is not None and self.lost is None:
            self.conn.send_cancel(call_id)
            self.flush()

    def forget(self) -> None:
        """
        Leave a connection made in another process or event loop without
        touching the peer or the other loop.  In a child after C{fork()},
        only this process's copy of the socket is closed: nothing is sent,
        the parent's selector is not touched, and its calls go on.  A
        connection of a loop still running in another thread is closed
        there; one of a closed loop is closed when it is collected.
        """
        self.lost = self.lost or "left behind"
        self.token = None
        transport = self.transport
        if transport is None:
            return
        if self.pid != os.getpid():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    os.close(sock.fileno())
                except OSError:
                    pass
            _INHERITED.append(transport)  # never collected: its fd number is not ours now
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(transport.close)


#: Transports inherited through fork() whose socket this process closed.
_INHERITED: list[asyncio.BaseTransport] = []


# The running loop or None, without raising (C in CPython).
_get_running_loop = asyncio._get_running_loop
_get_ident = threading.get_ident
_current_task = asyncio.current_task

#: Whether asyncio's futures and tasks have the private names the direct
#: wakeup reads (C{Future._callbacks}, C{Task._fut_waiter}): they have
#: since Python 3.7; checked once here rather than trusted per read.
_CAN_WAKE = all(hasattr(cls, name) for cls, name in (
    (asyncio.Future, "_callbacks"), (asyncio.Task, "_fut_waiter")))
_Task = asyncio.Task
_Future = asyncio.Future


def _raise(error: BaseException) -> None:
    """
    Raise C{error} (a woken task's C{SystemExit} or C{KeyboardInterrupt})
    from a callback of the loop, which passes it on.
    """
    raise error


def _future_factory(loop: asyncio.AbstractEventLoop) -> Callable[[], asyncio.Future[Any]]:
    """
    @return: C{loop.create_future}, or for asyncio's own loops the same
        without its Python frame (once per call).
    """
    if type(loop).create_future is asyncio.BaseEventLoop.create_future:
        return functools.partial(asyncio.Future, loop=loop)
    return loop.create_future


# The client.

async def connect(endpoint: str, *, default_timeout: float | None = None,
                  connect_timeout: float | None = 30.0) -> Client:
    """
    Connect to an rpcd server (native protocol) from a running event loop.

    @param endpoint: C{tcp:HOST:PORT}, C{unix:PATH} or C{tls:HOST:PORT:trustRoots=...}
        (see L{Endpoint}).
    @param default_timeout: seconds for calls that give no timeout.
    @param connect_timeout: seconds to wait for the connection and the
        server's preface; None waits forever.
    @return: a connected L{Client}.
    @raise ValueError: a bad endpoint string or timeout.
    @raise rpcd.errors.Unavailable: the server cannot be reached in time
        (its message names the endpoint and why).
    """
    client = Client(endpoint, default_timeout=default_timeout, connect_timeout=connect_timeout)
    await client.connection()
    return client


class Client(ServiceAttributes):
    """
    Calls and streams over one connection, many in flight at once.

    Attribute access builds callables: C{await client.Arith.Multiply(A=7, B=8)}
    is C{await client.call("Arith.Multiply", {"A": 7, "B": 8})}.
    """

    def __init__(self, endpoint: str, *, default_timeout: float | None = None,
                 connect_timeout: float | None = 30.0) -> None:
        """
        Make a client that dials on first use (L{connect} dials at once).

        @raise ValueError: a bad endpoint or timeout.
        """
        self.endpoint = Endpoint(endpoint)
        self.default_timeout = check_timeout(default_timeout, "default_timeout")
        self.connect_timeout = check_timeout(connect_timeout, "connect_timeout")
        if self.endpoint.connect_timeout is not None:
            self.connect_timeout = self.endpoint.connect_timeout
        self._current: _Connection | None = None
        self._dialling: asyncio.Future[_Connection] | None = None
        self._pid = os.getpid()
        self._closed = False

    async def connection(self) -> _Connection:
        """
        @return: a usable connection on the running loop, dialled if needed
            (once for every caller waiting).
        """
        current = self._current
        if current is not None and current.usable():
            return current
        if self._closed:
            raise ConnectionLost(f"the client for {self.endpoint.text} is closed")
        loop = asyncio.get_running_loop()
        dialling = self._dialling
        if dialling is not None and dialling.get_loop() is loop and os.getpid() == self._pid:
            return await asyncio.shield(dialling)
        if current is not None and current.lost is None and current.going_away is None:
            current.forget()  # another loop or process made it
        self._pid = os.getpid()
        dialling = self._dialling = loop.create_future()
        try:
            connection = await self._dial(loop)
        except BaseException as e:
            self._dialling = None
            dialling.set_exception(e)
            dialling.exception()
            raise
        self._dialling = None
        self._current = connection
        dialling.set_result(connection)
        return connection

    async def _dial(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        endpoint = self.endpoint
        connection = _Connection(endpoint, loop)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await endpoint.open(loop, lambda: connection)
                await asyncio.shield(connection.ready)
        except TimeoutError:
            connection.close_with(Unavailable("connect timed out"))
            raise Unavailable(f"cannot connect to {endpoint.text}: no answer within "
                              f"{self.connect_timeout:g} s") from None
        except RPCError:
            raise
        except (OSError, ssl.SSLError) as e:
            raise Unavailable(f"cannot connect to {endpoint.text}: {e}") from e
        return connection

    async def call(self, method: str, args: Any = None, *, timeout: float | None = None,
                   metadata: dict[str, Any] | None = None) -> Any:
        """
        Call a remote method.

        @param method: C{Service.Method}.
        @param args: the argument value (a dict for a struct argument).
        @param timeout: seconds before the call fails with
            L{rpcd.errors.DeadlineExceeded} and is cancelled on the server.
        @param metadata: key/value metadata for the server.
        @return: the result.
        @raise rpcd.errors.RPCError: the server's error, a timeout, a lost
            connection.  Cancelling the awaiting task cancels the call on the
            server.
        @raise TypeError: a method, timeout or metadata of the wrong type
            (nothing is sent).
        @raise ValueError: a timeout or metadata out of range (nothing is sent).
        """
        if (timeout is None and metadata is None and self.default_timeout is None
                and type(method) is str):
            # The common case in this one coroutine: a usable connection,
            # no timeout, no metadata.  Anything else goes the general way.
            # start_call, inline (once per call).
            connection = self._current
            if connection is not None and connection.token is _token and (
                    connection.base_loop._thread_id == _get_ident()
                    if connection.base_loop is not None
                    else _get_running_loop() is connection.loop):
                call_id = next(connection.ids)
                try:
                    connection.conn.send_call(call_id, method, args)
                except Exception as e:
                    raise EncodeError(f"cannot send {method}: the native codec cannot encode "
                                      f"its argument: {type(e).__name__}: {e}") from e
                future = connection.pending[call_id] = connection._new_future()
                if not connection._flush_due:
                    connection._flush_due = True
                    connection.loop.call_soon(connection._flush_turn)
                try:
                    return await future
                except asyncio.CancelledError:
                    connection.cancel(call_id)
                    raise
                except NotRun:
                    pass  # sent again below, on a new connection
        return await self._call(method, args, timeout, metadata)

    async def _call(self, method: str, args: Any, timeout: float | None,
                    metadata: dict[str, Any] | None) -> Any:
        """
        L{call}, the general way: arguments checked, a timeout, redials.
        """
        if type(method) is not str:
            check_method(method)
        timeout = self.default_timeout if timeout is None else check_timeout(timeout)
        if metadata is not None:
            metadata = check_metadata(metadata)
        if timeout is None:
            for tries in range(REDIALS + 1):
                try:
                    return await self._call_once(method, args, None, metadata)
                except NotRun:
                    if tries == REDIALS:
                        raise
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        for tries in range(REDIALS + 1):
            # The first try sends the caller's timeout as given; a retry what is left.
            left = timeout if tries == 0 or deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                break
            try:
                async with asyncio.timeout(left):
                    return await self._call_once(method, args, left, metadata)
            except NotRun:
                if tries == REDIALS:
                    raise
            except TimeoutError:
                break
        raise DeadlineExceeded(f"{method} did not answer within {timeout:g} s "
                               f"(cancelled on {self.endpoint.text})")

    async def _call_once(self, method: str, args: Any, timeout: float | None,
                         metadata: dict[str, Any] | None) -> Any:
        connection = self._current
        started = None if connection is None else connection.start_call(
            method, args, timeout, metadata)
        if connection is None or started is None:
            connection = await self.connection()
            started = connection.start_call(method, args, timeout, metadata)
            assert started is not None  # usable: nothing ran since connection() checked
        call_id, future = started
        try:
            return await future
        except asyncio.CancelledError:
            connection.cancel(call_id)
            raise

    def stream(self, method: str, args: Any = None, *, timeout: float | None = None,
               metadata: dict[str, Any] | None = None, window: int | None = None) -> Stream:
        """
        Open a streaming call.

        @param args: the request of a server-streaming method; None for
            client- and bidirectional-streaming methods.
        @param timeout: seconds the whole stream may take.
        @param window: messages the server may send ahead of the application.
        @return: a L{Stream}: C{async for} its messages, C{await send(...)},
            C{await close_send()}, C{cancel()}, C{await result()}.
        """
        if type(method) is not str:
            check_method(method)
        timeout = self.default_timeout if timeout is None else check_timeout(timeout)
        if metadata is not None:
            metadata = check_metadata(metadata)
        window = DEFAULT_WINDOW if window is None else check_window(window)
        return Stream(self, method, args, timeout, metadata, window)

    async def close(self) -> None:
        """
        Close the connection; pending calls fail with L{rpcd.errors.ConnectionLost}.
        """
        self._closed = True
        connection, self._current = self._current, None
        if connection is None:
            return
        if not connection.usable() and connection.lost is None and connection.going_away is None:
            connection.forget()
            return
        if connection.transport is not None and connection.lost is None:
            connection.transport.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()



class Stream:
    """
    One streaming call.  It opens on first use: C{async for}, C{send},
    C{close_send} or C{result}.  At most one window of the server's messages
    waits here; credit is handed back as the application takes them.
    """

    def __init__(self, client: Client, method: str, args: Any, timeout: float | None,
                 metadata: dict[str, Any] | None, window: int) -> None:
        self.method = method
        self._client = client
        self._args = args
        self._timeout = timeout
        self._metadata = metadata
        self._window = window
        self._connection: _Connection | None = None
        self._call_id = 0
        self._opening: asyncio.Task[None] | None = None
        self._messages: deque[Any] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._credit: asyncio.Future[None] | None = None
        self._outcome: tuple[Any, BaseException | None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def _open(self) -> _Connection:
        if self._connection is not None:
            return self._connection
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._do_open())
        await asyncio.shield(self._opening)
        assert self._connection is not None
        return self._connection

    async def _do_open(self) -> None:
        connection = await self._client.connection()
        call_id = next(connection.ids)
        connection.conn.open_stream(call_id, self.method, self._args, self._window,
                                    self._timeout, self._metadata)
        connection.streams[call_id] = self
        connection.flush()
        self._connection, self._call_id = connection, call_id
        if self._timeout is not None:
            self._timer = connection.loop.call_later(self._timeout, self._expire)

    def _expire(self) -> None:
        self._abort(DeadlineExceeded(f"{self.method} did not finish within "
                                     f"{self._timeout:g} s (cancelled on "
                                     f"{self._client.endpoint.text})"))

    # Events from the connection.

    def _event(self, event: Any) -> None:
        if event[0] == MESSAGE:
            self._messages.append(event[2])
            self._notify()
        else:  # CREDIT
            credit, self._credit = self._credit, None
            if credit is not None and not credit.done():
                credit.set_result(None)

    def _notify(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _finished(self, value: Any, error: BaseException | None) -> None:
        if self._outcome is not None:
            return
        self._outcome = (value, error)
        if self._timer is not None:
            self._timer.cancel()
        self._notify()
        credit, self._credit = self._credit, None
        if credit is not None and not credit.done():
            credit.set_result(None)

    def _abort(self, error: BaseException) -> None:
        connection = self._connection
        if self._outcome is None and connection is not None:
            if connection.streams.pop(self._call_id, None) is not None and connection.lost is None:
                connection.conn.send_cancel(self._call_id)
                connection.flush()
        self._finished(None, error)

    # The application's side.

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        connection = self._connection
        if connection is None:
            connection = await self._open()
        while not self._messages:
            if self._outcome is not None:
                if self._outcome[1] is not None:
                    raise self._outcome[1]
                raise StopAsyncIteration
            self._wake = connection.loop.create_future()
            try:
                await self._wake
            except asyncio.CancelledError:
                self.cancel()
                raise
        value = self._messages.popleft()
        if self._outcome is None and connection.conn.message_consumed(self._call_id):
            connection.flush()  # the credit, at once (once per half window)
        return value

    async def send(self, value: Any) -> None:
        """
        Send one message, waiting for the server's credit (and for the
        socket to take it).  The messages sent in one turn of the loop go
        out in one write.

        @raise rpcd.errors.RPCError: the stream ended or failed first.
        """
        connection = self._connection
        if connection is None:
            connection = await self._open()
        conn = connection.conn
        while True:
            if self._outcome is not None:
                error = self._outcome[1]
                raise error if error is not None else RPCError(
                    f"{self.method}: the stream has ended; nothing more can be sent")
            if conn.credit(self._call_id) > 0:
                break
            self._credit = connection.loop.create_future()
            await self._credit
        try:
            conn.send_message(self._call_id, value)
        except NoCredit:  # pragma: no cover - checked just above
            raise
        except Exception as e:
            raise RPCError(f"cannot send on {self.method}: {type(e).__name__}: {e}") from e
        connection.flush_soon()
        if connection._writable is not None:
            await connection.writable()

    async def close_send(self) -> None:
        """
        Half-close: the server reads the end of our messages.
        """
        connection = await self._open()
        if self._outcome is None:
            connection.conn.send_end(self._call_id)
            connection.flush()

    def cancel(self) -> None:
        """
        Cancel the stream on the server; waiting readers see
        L{rpcd.errors.Cancelled}.
        """
        from rpcd.errors import Cancelled
        self._abort(Cancelled(f"{self.method} was cancelled by the caller"))

    async def result(self) -> Any:
        """
        @return: the stream's final value, after its messages (unread
            messages are dropped).
        @raise rpcd.errors.RPCError: the stream's error.
        """
        connection = await self._open()
        while self._outcome is None:
            while self._messages:
                self._messages.popleft()
                connection.conn.message_consumed(self._call_id)
            connection.flush()
            self._wake = connection.loop.create_future()
            await self._wake
        self._messages.clear()
        value, error = self._outcome
        if error is not None:
            raise error
        return value


# Several servers.

async def connect_balanced(endpoints: Sequence[str], *, default_timeout: float | None = None,
                           connect_timeout: float | None = 30.0) -> BalancedClient:
    """
    Spread calls over several servers, round robin over those that answer.

    @param endpoints: endpoint strings, as for L{connect}.
    @return: a L{BalancedClient}, once at least one server is connected.
    @raise rpcd.errors.Unavailable: none could be reached (naming each).
    """
    balanced = BalancedClient(endpoints, default_timeout=default_timeout,
                              connect_timeout=connect_timeout)
    await balanced.ready()
    return balanced


class BalancedClient(ServiceAttributes):
    """
    Round robin over several L{Client}s.  A call that fails with
    L{rpcd.errors.Unavailable} (the server is down, or did not run it) is
    sent to the next server, once per server at most; a server that failed
    is tried again after the others.
    """

    def __init__(self, endpoints: Sequence[str], *, default_timeout: float | None = None,
                 connect_timeout: float | None = 30.0) -> None:
        if isinstance(endpoints, str) or not endpoints:
            raise ValueError("connect_balanced takes a non-empty list of endpoint strings")
        self.clients = [Client(e, default_timeout=default_timeout,
                               connect_timeout=connect_timeout) for e in endpoints]
        self._next = 0
        self._down: set[int] = set()

    async def ready(self) -> None:
        """
        Dial every server; return once one is up.
        """
        results = await asyncio.gather(*(c.connection() for c in self.clients),
                                       return_exceptions=True)
        errors = [(c, r) for c, r in zip(self.clients, results) if isinstance(r, BaseException)]
        self._down = {i for i, r in enumerate(results) if isinstance(r, BaseException)}
        if len(errors) == len(self.clients):
            raise Unavailable("no server could be reached: " + "; ".join(
                f"{c.endpoint.text}: {r}" for c, r in errors))

    def _order(self) -> list[int]:
        n = len(self.clients)
        start = self._next
        self._next = (start + 1) % n
        order = [(start + i) % n for i in range(n)]
        return [i for i in order if i not in self._down] + [i for i in order if i in self._down]

    async def call(self, method: str, args: Any = None, *, timeout: float | None = None,
                   metadata: dict[str, Any] | None = None) -> Any:
        """
        As L{Client.call}, on the next server that is up.
        """
        error: Exception | None = None
        for i in self._order():
            try:
                result = await self.clients[i].call(method, args, timeout=timeout,
                                                    metadata=metadata)
            except Unavailable as e:
                self._down.add(i)
                error = e
                continue
            self._down.discard(i)
            return result
        assert error is not None
        raise error

    def stream(self, method: str, args: Any = None, **options: Any) -> Stream:
        """
        As L{Client.stream}, on the next server that is up.
        """
        return self.clients[self._order()[0]].stream(method, args, **options)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients))

    async def __aenter__(self) -> BalancedClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()



__all__ = ["connect", "connect_balanced", "Client", "BalancedClient", "Stream", "Endpoint"]
