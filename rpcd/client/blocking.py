"""
The blocking client's own IO: calls made in the calling thread over a plain
socket, with no reactor thread (L{rpcd.client.BlockingClient} uses it for
the native codec over C{tcp:} and C{unix:} endpoints).

The protocol is L{rpcd.wire.connection.NativeConnection}'s, as for the
Twisted and asyncio clients: this module sends, reads and matches replies.
A call encodes its CALL, writes it (the socket's write side is taken in
order: the frames go out in the order they were queued), then waits for
its reply.  Several threads may share one connection, each with calls in
flight: one of them at a time, the I{leader}, reads the socket and hands
every reply to the thread waiting for it (a lock it waits on, released);
when the leader's own reply comes, it hands the reading to another thread
still waiting, or stops reading when none is.  No reply waits for a thread
that is not reading (leader/follower).  A thread blocked writing (the socket
takes no more) reads meanwhile when it leads or nobody else reads: a server
stops reading a connection whose replies are not read (its write buffer
cap), and both ends would wait for ever.

While no call is in flight nobody reads: what the server sent meanwhile (a
PING, a GOAWAY, the end of the connection) is read by the next call before
it is sent, as the reactor would have read it by then.  A server whose
keepalive PING goes unanswered while the client is idle (only with the
server's C{idle_timeout} at 0: by default it pings only while calls run)
drops the connection; the next call then dials again instead of failing.

A child process after C{fork()} leaves the parent's connection alone (it
closes only its own copy of the socket) and dials one of its own.

Errors are those of the Twisted client (L{rpcd.client.channel}): the same
classes and messages for a timeout, a lost connection, a remote error, a
fatal GOAWAY or a broken protocol, and the connection errors of Twisted's
endpoints (L{twisted.internet.error}) from the constructor.
"""

from __future__ import annotations

import itertools
import math
import os
import select
import socket
import threading
import time
from _thread import allocate_lock
from typing import Any

from twisted.internet import error as twisted_error
from twisted.logger import Logger

from rpcd.errors import (
    Code,
    ConnectionLost,
    DeadlineExceeded,
    EncodeError,
    Internal,
    NotRun,
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
    PrefaceError,
)
from rpcd.wire.fields import check_metadata, check_method, check_timeout, frame_name
from rpcd.client.plainsocket import Address, open_socket, peer_name

log = Logger()

#: How many times a call the server did not run (it was draining) is sent again.
REDIALS = 3

#: Bytes one read may bring at most (one buffer per connection, reused).
READ_SIZE = 64 * 1024

#: Milliseconds a writer blocked while another thread reads waits before
#: it looks again whether it should read (the reader may have left).
_RECHECK_MS = 20

#: What a lost connection's calls are told, in Twisted's words.
CLOSED_CLEANLY = str(twisted_error.ConnectionDone())
LOST_NON_CLEANLY = str(twisted_error.ConnectionLost())

_monotonic = time.monotonic
#: Whether this platform has C{poll()}, which the direct path waits with
#: (not Windows: L{rpcd.client.BlockingClient} keeps the reactor's path there).
AVAILABLE = hasattr(select, "poll")
_POLLIN = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR if AVAILABLE else 0
_POLLOUT = select.POLLOUT | select.POLLHUP | select.POLLERR if AVAILABLE else 0

#: This process's generation: one more in each child after fork() (cheaper
#: to compare per call than os.getpid(), a system call).
_generation = [0]


def _forked() -> None:
    _generation[0] += 1


os.register_at_fork(after_in_child=_forked)


# One connection.

class NotSent(NotRun):
    """A call not sent: its connection is going away (sent on a new one)."""


class _Waiter:
    """
    One call's thread: its latch (made when the thread waits for another
    to read; held until the reply or the lead is
    handed to it), and the outcome.

    @ivar woken: whether the latch was released (at most once).
    @ivar lead: whether this thread reads the socket now.
    """

    __slots__ = ("latch", "done", "value", "error", "woken", "lead")

    def __init__(self) -> None:
        self.latch: Any = None
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.woken = False
        self.lead = False

    def finish(self) -> None:
        """
        The call has its outcome: wake its thread, unless it is reading (it
        sees the outcome itself) or was woken already.
        """
        self.done = True
        if not self.woken and not self.lead:
            self.woken = True
            if self.latch is not None:
                self.latch.release()


class Connection:
    """
    One socket to a server, shared by any number of threads, around a
    client-side L{NativeConnection}.

    One lock, C{lock}, guards the state: the connection, the pending calls,
    who reads (C{reading}) and who writes (C{writing}).  Frames are queued
    in the connection under it; the thread that finds nobody writing takes
    what is queued, writes it outside the lock, and goes on writing what
    others queued meanwhile until nothing is left: the frames go out in
    the order they were queued, and the calls of several threads share a
    write when they come together.

    @ivar peer_name: how errors name the server.
    @ivar going_away: once the server sent a graceful GOAWAY, its message.
    @ivar lost: once the connection is gone, why (None while it is up).
    @ivar dropped_idle: the server dropped the connection while no call was
        in flight, after a PING nobody was there to answer.
    """

    def __init__(self, sock: socket.socket, conn: NativeConnection, name: str) -> None:
        """
        @param sock: a connected socket (made non-blocking here).
        @param conn: its protocol state, the preface already queued or sent.
        @param name: how errors name the server.
        """
        sock.setblocking(False)
        self.sock = sock
        self.conn = conn
        self.peer_name = name
        self.pending: dict[int, _Waiter] = {}
        self.ids = itertools.count(1)
        self.lock = allocate_lock()
        self.reading = False
        self.writing = False
        self.ready = False
        self.heard = False
        self.going_away: str | None = None
        self.lost: str | None = None
        self.dropped_idle = False
        self.retired = False
        self.write_failed = False
        self.generation = _generation[0]
        self._socket_closed = False
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self._readable = select.poll()
        self._readable.register(sock, _POLLIN)
        self._writable = select.poll()
        self._writable.register(sock, _POLLOUT)
        self._either = select.poll()
        self._either.register(sock, _POLLIN | _POLLOUT)

    # The caller's side.

    def call(self, method: str, args: Any, timeout: float | None,
             metadata: dict[str, Any] | None, deadline: float | None) -> Any:
        """
        Send a call and wait for its reply.

        @param method: C{Service.Method} (checked by the caller).
        @param timeout: the seconds sent to the server (checked), or None.
        @param deadline: when to give up, on L{time.monotonic}'s clock.
        @return: the result.
        @raise rpcd.errors.RPCError: the server's error, L{DeadlineExceeded}
            (the call is cancelled on the server), L{ConnectionLost}, or
            L{NotRun} when the server goes away before running it.
        """
        waiter = _Waiter()
        with self.lock:
            if not self.reading and self.lost is None:
                self._read_idle()
            # Going away first: the client sends it on a new connection,
            # even when this one is gone already.
            if self.going_away is not None:
                raise NotSent(f"{self.peer_name} is going away ({self.going_away}); "
                              f"{method} was not sent")
            if self.lost is not None:
                raise ConnectionLost(f"connection to {self.peer_name} is closed; "
                                     f"cannot call {method}")
            call_id = next(self.ids)
            try:
                self.conn.send_call(call_id, method, args, timeout, metadata)
            except Exception as e:
                raise EncodeError(f"cannot send {method}: the native codec cannot encode "
                                  f"its argument: {type(e).__name__}: {e}") from e
            self.pending[call_id] = waiter
            data = b""
            if not self.writing:  # else the thread writing now writes it too
                data = self.conn.data_to_send()
                self.writing = bool(data)
        if data:
            try:
                self._write(data, waiter)
            except BaseException:
                # Interrupted (the connection is lost): the lead may have
                # been handed to this call meanwhile; leave it.
                with self.lock:
                    self._give_up(waiter, call_id)
                raise
        if not self._wait(waiter, call_id, deadline):
            self.flush()  # the CANCEL
            assert timeout is not None
            raise DeadlineExceeded(f"{method} did not answer within {timeout:g} s "
                                   f"(cancelled on {self.peer_name})")
        if waiter.error is not None:
            raise waiter.error
        return waiter.value

    def _wait(self, waiter: _Waiter, call_id: int, deadline: float | None) -> bool:
        """
        Wait for C{waiter}'s reply: read the socket while this thread
        leads, else wait to be handed the reply or the lead.

        @return: whether the call has its outcome (False: the deadline
            passed; the call is given up and its CANCEL queued).
        """
        lock = self.lock
        lock.acquire()
        try:
            while not waiter.done:
                if not waiter.lead:
                    if not self.reading and self.lost is None:
                        self.reading = waiter.lead = True
                    elif waiter.latch is None:
                        waiter.latch = allocate_lock()
                        waiter.latch.acquire()
                lock.release()
                try:
                    if waiter.lead:
                        timed_out = self._read(deadline, waiter)
                    elif deadline is None:
                        waiter.latch.acquire()
                        timed_out = False
                    else:
                        left = deadline - _monotonic()
                        timed_out = not (left > 0 and waiter.latch.acquire(True, left))
                except BaseException:
                    # Interrupted (KeyboardInterrupt in the main thread):
                    # give the call up, and the lead to another thread.
                    lock.acquire()
                    self._give_up(waiter, call_id)
                    raise
                lock.acquire()
                if timed_out and not waiter.done:
                    self._give_up(waiter, call_id)
                    return False
            if waiter.lead:
                self._pass_lead(waiter)
            return True
        finally:
            lock.release()

    def _give_up(self, waiter: _Waiter, call_id: int) -> None:
        """
        The thread of call C{call_id} stops waiting: forget the call, queue
        its CANCEL, and pass the lead on if it had it.  Under C{lock}.
        """
        if self.pending.pop(call_id, None) is not None and self.lost is None:
            self.conn.send_cancel(call_id)
        if waiter.lead:
            self._pass_lead(waiter)

    def _pass_lead(self, waiter: _Waiter) -> None:
        """
        The leader leaves: hand the reading to a thread still waiting for
        its reply, or stop reading (closing a lost socket).  Under C{lock}.
        """
        waiter.lead = False
        self._hand_on()

    def _hand_on(self) -> None:
        """
        Nobody reads now: hand the reading to a thread still waiting for
        its reply, or stop reading (closing a lost socket).  Under C{lock}.
        """
        for other in self.pending.values():
            if not other.woken:
                other.lead = other.woken = True
                if other.latch is not None:
                    other.latch.release()
                return
        self.reading = False
        if self.retired and not self.pending and self.lost is None:
            self._lose(CLOSED_CLEANLY)
        self._close_if_lost()

    # Writing.

    def flush(self) -> None:
        """
        Write what the connection has queued (calls, CANCELs, PONGs), unless
        another thread is writing (it writes this too).
        """
        with self.lock:
            if self.writing or self.lost is not None:
                return
            data = self.conn.data_to_send()
            if not data:
                return
            self.writing = True
        self._write(data)

    def _write(self, data: bytes, waiter: _Waiter | None = None) -> None:
        """
        As the writer (C{writing} set by this thread): send C{data}, then
        what was queued meanwhile, until nothing is left.

        @param waiter: the writing thread's call, if it has one in flight
            (it may be handed the lead while it writes).
        """
        try:
            while True:
                self._send_all(data, waiter)
                with self.lock:
                    data = self.conn.data_to_send()
                    if self.lost is not None or self.write_failed:
                        data = b""
                    if not data:
                        self.writing = False
                        self._close_if_lost()
                        return
        except BaseException:
            # Interrupted (KeyboardInterrupt in the main thread), maybe in
            # the middle of a frame: the connection cannot go on.
            with self.lock:
                self.writing = False
                self._lose(LOST_NON_CLEANLY)
            raise

    def _send_all(self, data: bytes, waiter: _Waiter | None) -> None:
        """
        Send every byte, blocking until the socket takes them (nothing
        once a send failed: the connection is ending).  While the socket
        takes no more, the writer reads if nobody else does (see
        L{_wait_writable}).
        """
        if self.write_failed:
            return
        sock = self.sock
        try:
            sent = sock.send(data)
            if sent == len(data):
                return
        except BlockingIOError:
            sent = 0
        except OSError:
            self._send_failed()
            return
        view = memoryview(data)
        while sent < len(data):
            try:
                self._wait_writable(waiter)
                sent += sock.send(view[sent:])
            except BlockingIOError:
                continue
            except OSError:
                self._send_failed()
                return

    def _wait_writable(self, waiter: _Waiter | None) -> None:
        """
        Wait until the socket may take more (or a while), reading meanwhile
        when this thread leads or nobody reads: a server whose write buffer is full
        stops reading until its replies are read, so a writer that only
        waited while no thread reads (it holds the lead, or the calls in
        flight are all its own) would wait for ever.
        """
        with self.lock:
            may_read = self.lost is None and (
                not self.reading or (waiter is not None and waiter.lead))
        if not may_read:
            # Not for long: the reader may leave, the lead then handed to
            # this thread or to nobody, with no way to wake this poll.
            self._writable.poll(_RECHECK_MS)
            return
        for _, events in self._either.poll():
            if events & _POLLIN:
                self._read_while_writing(waiter)

    def _read_while_writing(self, waiter: _Waiter | None) -> None:
        """
        As the writer: one read, if this thread leads or nobody reads (it
        reads then, and hands the reading on after).
        """
        with self.lock:
            if self.lost is not None:
                return
            borrowed = False
            if waiter is None or not waiter.lead:
                if self.reading:
                    return  # another thread reads
                self.reading = borrowed = True
        try:
            self._receive()
        finally:
            if borrowed:
                with self.lock:
                    self._hand_on()

    def _send_failed(self) -> None:
        """
        The socket refused our bytes (the server is gone, or going): write
        nothing more, and leave the end to the reading, which first reads
        what the server sent before it went (a GOAWAY saying which calls
        it did not run, replies), as the reactor would have read it.  The
        write side is shut so that a server still there ends the
        connection too.
        """
        with self.lock:
            self.write_failed = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    # Reading.

    def _read(self, deadline: float | None, waiter: _Waiter | None = None) -> bool:
        """
        The leader's wait: one read from the socket (or none by the
        deadline), its events handled.  Called without C{lock}.

        @param waiter: the leader's call (None during the handshake).
        @return: whether the deadline passed first.
        """
        if deadline is None:
            ready = self._readable.poll()
        else:
            left = deadline - _monotonic()
            if left <= 0:
                return True
            ready = self._readable.poll(math.ceil(left * 1000))
            if not ready:
                return _monotonic() >= deadline
        data = self._receive()
        if data:
            self._write(data, waiter)
        return False

    def _receive(self) -> bytes:
        """
        As the reader: one read from the socket, its events handled.
        Called without C{lock}.

        @return: what to write now (PONGs, a GOAWAY), C{writing} then set
            for this thread; nothing when another thread writes.
        """
        try:
            n = self.sock.recv_into(self._buffer)
        except BlockingIOError:
            return b""
        except OSError:
            with self.lock:
                self._lose(LOST_NON_CLEANLY)
            return b""
        with self.lock:
            if self.lost is not None:
                return b""
            if n == 0:
                self._lose(CLOSED_CLEANLY)
                return b""
            self.heard = True
            self._events(self.conn.receive_data(self._view[:n].tobytes()))
            if self.writing or self.lost is not None:
                return b""
            data = self.conn.data_to_send()  # PONGs, a GOAWAY
            if data:
                self.writing = True
            return data

    def _read_idle(self) -> None:
        """
        Read what came while no call was in flight (PINGs, a GOAWAY, the
        end), without waiting.  Under C{lock}, with nobody reading.
        """
        pinged = False
        while self.lost is None and self._readable.poll(0):
            try:
                n = self.sock.recv_into(self._buffer)
            except BlockingIOError:
                return
            except OSError:
                self._lose(LOST_NON_CLEANLY)
                n = -1
            if n == 0:
                self._lose(CLOSED_CLEANLY)
            if n <= 0:
                self.dropped_idle = pinged
                return
            self.heard = True
            events = self.conn.receive_data(self._view[:n].tobytes())
            pinged = pinged or any(event[0] == PING for event in events)
            self._events(events)

    def handshake(self, deadline: float | None, where: str, seconds: float | None) -> None:
        """
        Wait for the server's preface (reading what comes with it).

        @param deadline: when to give up, on L{time.monotonic}'s clock.
        @param where: the endpoint, for messages.
        @param seconds: the connect timeout, for messages.
        @raise ConnectionLost: the server closed the connection first.
        @raise Unavailable: no preface by the deadline.
        """
        while not self.ready:
            if self.lost is not None:
                raise ConnectionLost(f"connection to {self.peer_name} closed during the "
                                     f"handshake: {self._describe(self.lost)}")
            if self._read(deadline):
                self.close()
                raise Unavailable(f"no native connection to {where} within {seconds:g} s "
                                  "(is the server up, and does it speak this protocol?)")

    def _describe(self, why: str) -> str:
        if not self.heard:
            return (f"the server closed the connection without a word ({why}): it may "
                    "expect TLS on this port (use a tls: endpoint), or not be an rpcd server")
        return why

    # Events (under lock).

    def _events(self, events: list[Any]) -> None:
        pending = self.pending
        for event in events:
            if len(event) == 3 and event[0] == RESULT:
                waiter = pending.pop(event[1], None)
                if waiter is not None:
                    waiter.value = event[2]
                    waiter.finish()
                continue
            if self._event(event):
                return

    def _settle(self, call_id: int, error: BaseException) -> None:
        waiter = self.pending.pop(call_id, None)
        if waiter is not None:
            waiter.error = error
            waiter.finish()

    def _event(self, event: Any) -> bool:
        """
        One event other than a plain RESULT (as
        L{rpcd.client.native.NativeClientProtocol} handles it).

        @return: whether the connection is closing.
        """
        kind = event[0]
        if kind == RESULT:
            waiter = self.pending.get(event[1])
            if waiter is not None:
                self.pending.pop(event[1])
                waiter.value = event[2]
                waiter.finish()
        elif kind == ERROR:
            _, call_id, code, message, details = event
            if call_id in self.pending:
                self._settle(call_id, error_from_wire(code, message, details))
        elif kind == BAD_FRAME:
            _, call_id, bad, why = event
            if bad != MESSAGE and bad != CREDIT and call_id in self.pending:
                self._settle(call_id, Internal(f"bad {frame_name(bad)} frame from "
                                               f"{self.peer_name} for call {call_id}: {why}"))
        elif kind == PING:
            self.conn.send_pong(event[1])
        elif kind == PREFACE_RECEIVED:
            self.ready = True
        elif kind == GOAWAY:
            _, last_id, _, message, graceful = event
            if graceful:
                self.going_away = message
                for call_id in [k for k in self.pending if k > last_id]:
                    self._settle(call_id, NotRun(f"{self.peer_name} went away before running "
                                                 f"call {call_id} ({message})"))
                return False
            self._fail_all(Unavailable(f"{self.peer_name}: {message}"))
            self._lose(CLOSED_CLEANLY)
            return True
        elif kind == CONNECTION_ERROR:
            error = event[1]
            if isinstance(error, PrefaceError):
                why = f"{self.peer_name} does not speak rpcd's native protocol ({error})"
            else:
                why = f"bad frame from {self.peer_name}: {error}"
            log.error("{why}", why=why)
            self._fail_all(Unavailable(why))
            self.conn.close(int(Code.INVALID_ARGUMENT), f"protocol error: {why}")
            self._send_last(self.conn.data_to_send())
            self._lose(CLOSED_CLEANLY)
            return True
        # MESSAGE, CREDIT (this client opens no streams), PONG: nothing.
        return False

    def _send_last(self, data: bytes) -> None:
        """
        Send a last frame (a GOAWAY) if the socket takes it now.
        """
        if data and not self.writing:
            try:
                self.sock.send(data)
            except OSError:
                pass

    def _fail_all(self, error: BaseException) -> None:
        for call_id in list(self.pending):
            self._settle(call_id, error)

    def _lose(self, why: str) -> None:
        """
        The connection is gone: fail every call, stop the socket (closed
        now if nobody reads it, else by the reader as it leaves).  Under
        C{lock}.
        """
        if self.lost is not None:
            return
        self.lost = why
        self._fail_all(ConnectionLost(f"connection to {self.peer_name} lost before the call "
                                      f"was answered: {self._describe(why)}"))
        self.conn.clear()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._close_if_lost()

    def _close_if_lost(self) -> None:
        """
        Close the socket of a lost connection once no thread reads or
        writes it (closing it under a thread in a system call could close
        another file that takes its number).  Under C{lock}.
        """
        if self.lost is not None and not self._socket_closed and not self.reading and (
                not self.writing):
            self._socket_closed = True
            self.sock.close()

    # Ending.

    def close(self) -> None:
        """
        Close the connection; calls in flight fail with L{ConnectionLost}.
        """
        with self.lock:
            self._lose(CLOSED_CLEANLY)

    def forget(self) -> None:
        """
        Leave a connection made by the parent process, in a child after
        C{fork()}: close this process's copy of the socket only, sending
        nothing and taking no lock (a thread of the parent may have held
        one), so that the parent's calls go on undisturbed.
        """
        if not self._socket_closed:
            self._socket_closed = True
            try:
                os.close(self.sock.detach())
            except OSError:
                pass

    def retire(self) -> None:
        """
        A new connection replaces this one (the server went away): close it
        once its last call is answered.
        """
        with self.lock:
            self.retired = True
            if not self.pending and not self.reading:
                self._lose(CLOSED_CLEANLY)


def dial(address: Address, connect_timeout: float | None) -> Connection:
    """
    Connect and wait for the server's preface.

    @param connect_timeout: seconds for both, or None.
    @return: the connection, ready for calls.
    @raise Exception: as L{open_socket} and L{Connection.handshake}.
    """
    deadline = None if connect_timeout is None else _monotonic() + connect_timeout
    sock = open_socket(address, connect_timeout)
    conn = NativeConnection(client_side=True)
    conn.initiate_connection()
    try:
        sock.sendall(conn.data_to_send())
    except OSError:
        pass  # read below: the error the server's end gives
    connection = Connection(sock, conn, peer_name(sock))
    connection.handshake(deadline, address.text, connect_timeout)
    return connection


class DirectClient:
    """
    The blocking client's calls over L{Connection}s to one endpoint: a new
    connection when the server goes away gracefully (GOAWAY), the calls it
    did not run sent again there (up to L{REDIALS} times, within each
    call's timeout), as L{rpcd.client.Client} does.
    """

    def __init__(self, address: Address, default_timeout: float | None,
                 connect_timeout: float | None = 30.0) -> None:
        """
        @param address: where to connect.
        @param default_timeout: seconds for calls that give none (checked).
        @raise Exception: the connection error (see L{dial}).
        """
        self.address = address
        self.default_timeout = default_timeout
        self.connect_timeout = connect_timeout
        self.connection = dial(address, connect_timeout)
        self._dial_lock = threading.Lock()
        self._closed = False

    def call(self, method: str, args: Any = None, timeout: float | None = None,
             metadata: dict[str, Any] | None = None) -> Any:
        """
        Call a remote method and wait for the answer.

        @return: the result.
        @raise rpcd.errors.RPCError: the server's error, a timeout, a lost
            connection.
        @raise TypeError: a method, timeout or metadata of the wrong type.
        @raise ValueError: a timeout or metadata out of range.
        """
        if type(method) is not str:
            check_method(method)
        timeout = self.default_timeout if timeout is None else check_timeout(timeout)
        if metadata is not None:
            metadata = check_metadata(metadata)
        connection = self.connection
        if connection.generation != _generation[0]:
            connection = self._after_fork()
        tries = moves = REDIALS
        redialled = False
        while True:
            if (connection.going_away is not None or connection.dropped_idle) and not self._closed:
                connection = self._redial(connection)
            deadline = None if timeout is None else _monotonic() + timeout
            try:
                return connection.call(method, args, timeout, metadata, deadline)
            except NotSent:
                if self._closed:
                    raise ConnectionLost(f"connection to {connection.peer_name} is closed; "
                                         f"cannot call {method}") from None
                moves -= 1
                if moves < 0:
                    raise  # a server that goes away as each new connection comes
                continue  # it went away since: on a new connection
            except ConnectionLost:
                # Found dropped as the call was about to go: not sent, so
                # on a new connection (once).
                if not connection.dropped_idle or self._closed or redialled:
                    raise
                redialled = True
            except NotRun:
                left = None if deadline is None else deadline - _monotonic()
                if tries <= 0 or (left is not None and left <= 0) or self._closed:
                    raise
                tries -= 1
                timeout = left

    def _after_fork(self) -> Connection:
        """
        In a child after C{fork()}: leave the parent's connection to the
        parent (its socket and ids are the parent's) and dial one of our own.

        @raise Exception: the connection error (see L{dial}).
        """
        self._dial_lock = threading.Lock()  # the parent's may have been held
        old = self.connection
        if old.generation != _generation[0]:
            old.forget()
            if self._closed:
                raise ConnectionLost(f"connection to {old.peer_name} is closed")
            self.connection = dial(self.address, self.connect_timeout)
        return self.connection

    def _redial(self, old: Connection) -> Connection:
        """
        Dial the endpoint again (once for every caller waiting) and make
        the new connection the current one.

        @raise Unavailable: the dial failed, naming why the old one was left.
        """
        with self._dial_lock:
            if self.connection is not old:
                return self.connection
            why = old.going_away or "it dropped the idle connection"
            try:
                new = dial(self.address, self.connect_timeout)
            except Exception as e:
                raise Unavailable(f"{old.peer_name} went away ({why}) and reconnecting "
                                  f"failed: {e}") from e
            self.connection = new
            if self._closed:  # close() came during the dial: it may have closed the old one only
                new.close()
            else:
                log.info("reconnected to {peer} ({why})", peer=new.peer_name, why=why)
        old.retire()
        return new

    def close(self) -> None:
        """
        Close the connection; calls in flight fail with L{ConnectionLost}.
        """
        self._closed = True
        connection = self.connection
        if connection.generation != _generation[0]:
            connection.forget()  # the parent's: its to close
        else:
            connection.close()


__all__ = ["AVAILABLE", "Connection", "DirectClient", "dial", "REDIALS"]
