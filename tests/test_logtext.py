"""
Tests for L{rpcd.daemon.logtext}: the daemon's text log lines, made faster.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.logger import (
    LogLevel,
    LogPublisher,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rpcd.daemon.logtext import ClassicText, TurnFlushedObserver, faster_text_logs


class CountingFile(io.StringIO):
    """A text file that counts its flushes."""

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def _events() -> list[dict[str, Any]]:
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    return [
        dict(log_format="{method} {code} {duration_ms:.3f} ms {protocol} {peer}", method="A.B",
             code="OK", duration_ms=0.0123, protocol="native", peer="1.2.3.4:5",
             log_namespace="rpcd.access", log_level=LogLevel.info, log_time=1764780000.25),
        dict(log_format="{x!r} {y[0]} {z.real}", x="s", y=[1], z=3, log_namespace="n",
             log_level=LogLevel.warn, log_time=1764780000.75),
        dict(log_format="missing {nope}", log_namespace="n", log_level=LogLevel.info, log_time=2.5),
        dict(log_format="call {f()}", f=lambda: "yes", log_namespace="n", log_level=LogLevel.info,
             log_time=3.5),
        dict(log_format="multi\nline", log_system="legacy", log_time=4.0),
        dict(log_format="", log_time=4.0),
        dict(log_format=None, log_time=4.0),
        dict(log_format="no time", log_level=LogLevel.error),
        dict(log_format="{}", log_time=5.0),
        dict(log_format="fail", log_failure=failure, log_time=5.0, log_level=LogLevel.critical,
             log_namespace="q"),
        dict(log_format=b"bytes format", log_time=6.0),
        dict(log_format="system not text", log_system=5, log_time=6.0),
        dict(log_format="t {log_time}", log_time=6.7),
    ]


class ClassicTextTests(SynchronousTestCase):
    """
    L{faster_text_logs} and L{ClassicText}.
    """

    def test_same_lines_as_twisted(self) -> None:
        """Every kind of event is written byte for byte as Twisted's text observer writes it."""
        twisted_out, rpcd_out = io.StringIO(), io.StringIO()
        twisted_log = LogPublisher(textFileLogObserver(twisted_out))
        rpcd_log = LogPublisher(textFileLogObserver(rpcd_out))
        self.assertEqual(faster_text_logs(rpcd_log), 1)
        for event in _events():
            twisted_log(dict(event))
            rpcd_log(dict(event))
        self.assertEqual(rpcd_out.getvalue(), twisted_out.getvalue())
        self.assertIn("[rpcd.access#info] A.B OK 0.012 ms native 1.2.3.4:5\n", rpcd_out.getvalue())

    def test_time_format_kept(self) -> None:
        """A text observer's own time format is kept, fractions of a second included."""
        twisted_out, rpcd_out = io.StringIO(), io.StringIO()
        twisted_log = LogPublisher(textFileLogObserver(twisted_out, timeFormat="%H:%M:%S.%f"))
        rpcd_log = LogPublisher(textFileLogObserver(rpcd_out, timeFormat="%H:%M:%S.%f"))
        faster_text_logs(rpcd_log)
        for when in (10.25, 10.5, 11.0):
            event = dict(log_format="hi", log_time=when, log_level=LogLevel.info, log_namespace="n")
            twisted_log(dict(event))
            rpcd_log(dict(event))
        self.assertEqual(rpcd_out.getvalue(), twisted_out.getvalue())

    def test_timestamp_each_second(self) -> None:
        """The timestamp follows the event's second, made again when the second changes."""
        text = ClassicText()
        lines = [text(dict(log_format="x", log_time=when)) for when in (100.1, 100.9, 101.0)]
        self.assertEqual(lines[0], lines[1])
        self.assertNotEqual(lines[1], lines[2])

    def test_other_observers_left(self) -> None:
        """JSON and other observers are not replaced."""
        json_observer = jsonFileLogObserver(io.StringIO())
        events: list[dict[str, Any]] = []
        publisher = LogPublisher(json_observer, events.append)
        self.assertEqual(faster_text_logs(publisher), 0)
        publisher(dict(log_format="x"))
        self.assertEqual(len(events), 1)


class TurnFlushedObserverTests(SynchronousTestCase):
    """
    L{TurnFlushedObserver}: one flush per reactor iteration, none lost.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.running = True
        self.out = CountingFile()
        self.observer = TurnFlushedObserver(self.out, ClassicText(), self.reactor)

    def test_one_flush_per_iteration(self) -> None:
        """Lines logged in one reactor iteration are flushed once, at the next."""
        for n in range(3):
            self.observer(dict(log_format="line {n}", n=n, log_time=1.0))
        self.assertEqual(self.out.flushes, 0)
        self.reactor.advance(0)
        self.assertEqual(self.out.flushes, 1)
        self.assertEqual(self.out.getvalue().count("line"), 3)
        self.observer(dict(log_format="again", log_time=1.0))
        self.reactor.advance(0)
        self.assertEqual(self.out.flushes, 2)

    def test_flushed_at_once_when_not_running(self) -> None:
        """Without a running reactor each line is flushed as it is written."""
        self.reactor.running = False
        self.observer(dict(log_format="stopped", log_time=1.0))
        self.assertEqual(self.out.flushes, 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_flushed_after_shutdown(self) -> None:
        """The reactor's shutdown flushes what the last iteration wrote."""
        self.observer(dict(log_format="last words", log_time=1.0))
        for when, event, f, args, kwargs in [("after", "shutdown", *t)
                                             for t in self.reactor.triggers["after"]["shutdown"]]:
            f(*args, **kwargs)
        self.assertEqual(self.out.flushes, 1)

    def test_binary_file(self) -> None:
        """A binary file gets the lines as UTF-8."""
        out = io.BytesIO()
        observer = TurnFlushedObserver(out, ClassicText(), self.reactor)
        observer(dict(log_format="caf\u00e9", log_time=1.0))
        self.assertIn("caf\u00e9".encode("utf-8"), out.getvalue())

    def test_installed_with_reactor(self) -> None:
        """With a reactor, faster_text_logs puts turn-flushed observers in place."""
        publisher = LogPublisher(textFileLogObserver(self.out))
        faster_text_logs(publisher, self.reactor)
        publisher(dict(log_format="hello", log_time=1.0))
        self.assertEqual(self.out.flushes, 0)
        self.reactor.advance(0)
        self.assertIn("hello\n", self.out.getvalue())
