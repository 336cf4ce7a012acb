"""
The budget for input held in unfinished messages.

Every connection holds the bytes of a message (a native frame, a gob
message, a JSON value, an HTTP head or body) until it is complete.  Two
limits keep that bounded whatever peers do:

  - B{the daemon-wide budget}, C{limits.input_budget_bytes}: the bytes held
    in unfinished messages across all connections (L{InputBudget}); a
    connection whose next read would push the total over is closed, with
    the reason logged;
  - B{the message deadline}, C{limits.message_timeout}: a message must be
    complete within that many seconds of its first byte.  Unlike the idle
    timeout, more bytes of the same message do not restart it, so a peer
    that trickles a message (slow loris) is closed.

A wire protocol reports after each read through its connection's
L{InputGuard}::

    if not self.input_guard.update(self.conn.buffered(), completed=bool(frames)):
        return  # the connection is being closed

(C{RPCServer.input_guard} makes one; the sniffer hands one to each wire
protocol whose class has an C{input_guard} attribute.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime


class InputBudget:
    """
    The bytes held in unfinished messages across a daemon's connections.

    @ivar limit: the most that may be held (0: no limit).
    @ivar held: the bytes held now.
    @ivar refused: connections closed for going over it, since start.
    """

    def __init__(self, limit: int) -> None:
        """
        @param limit: C{limits.input_budget_bytes} (0: no limit).
        """
        self.limit = limit
        self.held = 0
        self.refused = 0

    def take(self, nbytes: int) -> bool:
        """
        Hold more bytes, if the budget allows.

        @param nbytes: how many more.
        @return: whether they fit (and are now counted).
        """
        held = self.held + nbytes
        if self.limit and held > self.limit:
            self.refused += 1
            return False
        self.held = held
        return True

    def give(self, nbytes: int) -> None:
        """
        Release bytes held.

        @param nbytes: how many.
        """
        self.held -= nbytes


class InputGuard:
    """
    One connection's unfinished message: its bytes count against the
    daemon's L{InputBudget}, and it must be complete within the message
    deadline of its first byte.

    @ivar held: bytes this connection holds in an unfinished message.
    """

    __slots__ = ("budget", "clock", "timeout", "close", "held", "_since", "_timer", "_stopped")

    def __init__(self, budget: InputBudget, clock: IReactorTime, timeout: float,
                 close: Callable[[str], None]) -> None:
        """
        @param budget: the daemon's budget.
        @param clock: the reactor's clock.
        @param timeout: C{limits.message_timeout} (0: no deadline).
        @param close: closes the connection, logging the reason given.
        """
        self.budget = budget
        self.clock = clock
        self.timeout = timeout
        self.close = close
        self.held = 0
        self._since: float | None = None
        self._timer: IDelayedCall | None = None
        self._stopped = False

    def update(self, held: int, completed: bool) -> bool:
        """
        Report the state after a read.

        @param held: bytes now held for an unfinished message (0: none; a
            message whose header arrived but none of its body may count 1).
        @param completed: whether a message was completed by the read (then
            the unfinished one, if any, is a new one: its deadline starts).
        @return: True, or False when the connection was closed for going
            over the budget (the caller then stops handling the read).
        """
        if not held and not self.held:
            return True
        if self._stopped:
            return False
        grow = held - self.held
        if grow > 0:
            if not self.budget.take(grow):
                limit = self.budget.limit
                self._stopped = True
                self.close(f"it would hold {held} bytes of an unfinished message while "
                           f"{self.budget.held} are held across all connections, over the "
                           f"daemon's budget of {limit} (limits.input_budget_bytes)")
                self.stop()
                return False
        elif grow:
            self.budget.give(-grow)
        self.held = held
        if not held:
            self._since = None
        elif completed or self._since is None:
            self._since = self.clock.seconds()
            if self._timer is None and self.timeout:
                self._timer = self.clock.callLater(self.timeout, self._check)
        return True

    def _check(self) -> None:
        self._timer = None
        since = self._since
        if since is None or self._stopped:
            return
        left = since + self.timeout - self.clock.seconds()
        if left > 0:
            self._timer = self.clock.callLater(left, self._check)
            return
        self._stopped = True
        self.close(f"a message was not complete within {self.timeout:g} s of its first byte "
                   f"({self.held} bytes held; limits.message_timeout)")
        self.stop()

    def stop(self) -> None:
        """
        The connection is gone (or reads no more): release what it held and
        stop the deadline.
        """
        self._stopped = True
        if self.held:
            self.budget.give(self.held)
            self.held = 0
        self._since = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
