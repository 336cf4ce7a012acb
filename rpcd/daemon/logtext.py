"""
The daemon's text log lines, written at a fraction of the cost of
Twisted's own formatting.

twistd writes each event with C{textFileLogObserver}, whose formatting
parses the event's format string with the pure-Python C{string.Formatter}
and builds the timestamp with three C{datetime} conversions: about 100 us
an event, 20 times the cost of a call (the access log writes a line per
call).  L{ClassicText} produces the same line, byte for byte, with
C{str.format_map} (in C) and a timestamp made once a second; anything
unusual (a failure's traceback, the C{{name()}} call syntax, flattened
events, a field that does not format) is handed to Twisted's own
formatter.  L{faster_text_logs} puts it in place of twistd's text
observers.
"""

from __future__ import annotations

from threading import get_ident
from typing import Any, Callable

from twisted.logger import FileLogObserver, FilteringLogObserver, formatTime, globalLogPublisher
from twisted.logger import formatEventAsClassicLogText, timeFormatRFC3339
from twisted.python.compat import ioType

from rpcd.core.twistedcompat import NOT_TEXT, log_observers, observer_file, text_log_time_format

__all__ = ["ClassicText", "TurnFlushedObserver", "faster_text_logs"]


class ClassicText:
    """
    C{formatEventAsClassicLogText(event, formatTime=...)} for a time
    format, the same lines, faster.

    @ivar time_format: the C{strftime} format of the timestamp, or None
        for C{"-"}.
    """

    def __init__(self, time_format: str | None = timeFormatRFC3339) -> None:
        self.time_format = time_format
        # The timestamp is made once per second, unless the format shows
        # fractions of a second.
        self._per_second = time_format is not None and "%f" not in time_format
        self._second: int | None = None
        self._stamp = ""

    def _time(self, when: float | None) -> str:
        if when is None or not self._per_second:
            return formatTime(when, self.time_format)
        second = int(when)
        if second != self._second or when < 0:
            self._stamp = formatTime(when, self.time_format)
            self._second = second
        return self._stamp

    def _twisted(self, event: dict[str, Any]) -> str | None:
        return formatEventAsClassicLogText(
            event, formatTime=lambda when: formatTime(when, self.time_format))

    def __call__(self, event: dict[str, Any]) -> str | None:
        """
        @param event: a log event.
        @return: its line (ending in a newline), or None for an event with
            nothing to show.
        """
        text_format = event.get("log_format")
        if type(text_format) is not str or "()" in text_format or "log_failure" in event \
                or "log_flattened" in event:
            return self._twisted(event)
        try:
            text = text_format.format_map(event)
        except Exception:
            return self._twisted(event)  # it says why the event did not format
        if not text:
            return None
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
        elif type(system) is not str:
            return self._twisted(event)
        line = f"{self._time(event.get('log_time'))} [{system}] {text}"
        return line.replace("\n", "\n\t") + "\n"


class TurnFlushedObserver(FileLogObserver):
    """
    A C{FileLogObserver} that flushes its file once per reactor iteration
    instead of after every line: the first line written in an iteration
    asks the reactor for a flush at its next one (C{callLater(0)}).  Lines
    written outside the reactor thread, or while the reactor is not
    running, are flushed at once; and the file is flushed after the
    reactor shuts down, so no line is lost when the daemon stops.

    Make it in the reactor's thread.
    """

    def __init__(self, out: Any, format_event: Callable[[Any], str | None], reactor: Any) -> None:
        """
        @param out: the file (text or binary, as C{FileLogObserver} takes).
        @param format_event: makes an event's text, or None for no line.
        @param reactor: schedules the flushes.
        """
        super().__init__(out, format_event)
        self.out = out
        self._format = format_event
        self._binary = ioType(out) is not str
        self._reactor = reactor
        self._pending = False
        self._thread = get_ident()  # the reactor's
        reactor.addSystemEventTrigger("after", "shutdown", self.flush)

    def __call__(self, event: Any) -> None:
        text = self._format(event)
        if not text:
            return
        out = self.out
        out.write(text.encode("utf-8") if self._binary else text)
        if self._pending:
            return
        if getattr(self._reactor, "running", False) and get_ident() == self._thread:
            self._pending = True
            self._reactor.callLater(0, self.flush)
        else:
            out.flush()

    def flush(self) -> None:
        """
        Flush the file now.
        """
        self._pending = False
        self.out.flush()


def _faster(observer: Any, reactor: Any) -> Any:
    """
    @return: a faster observer writing what C{observer} writes, or
        C{observer} itself when it is not a C{textFileLogObserver}.
    """
    if isinstance(observer, FilteringLogObserver):
        return observer  # already wrapped by someone: left alone
    time_format = text_log_time_format(observer)
    if time_format is NOT_TEXT:
        return observer
    out = observer_file(observer)
    if out is None:
        return observer
    if reactor is None:
        return FileLogObserver(out, ClassicText(time_format))
    return TurnFlushedObserver(out, ClassicText(time_format), reactor)


def faster_text_logs(publisher: Any = globalLogPublisher, reactor: Any = None) -> int:
    """
    Put a L{ClassicText} observer (flushed once per reactor iteration) in place of each of a publisher's
    C{textFileLogObserver}s (twistd's C{--logfile} or stdout), writing the
    same lines to the same file.  Observers of other kinds (JSON, a
    C{--logger} of the user's) are left as they are.

    @param publisher: the publisher (twistd's global one).
    @param reactor: flushes the files once per iteration
        (L{TurnFlushedObserver}); None to flush each line.
    @return: how many observers were replaced.
    """
    observers = log_observers(publisher)
    if observers is None:
        return 0
    replaced = 0
    for index, observer in enumerate(list(observers)):
        faster = _faster(observer, reactor)
        if faster is not observer:
            observers[index] = faster
            replaced += 1
    return replaced
