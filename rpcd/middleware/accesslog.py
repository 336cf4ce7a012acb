"""
The access log: one structured event per call, through C{twisted.logger}.

Turned on in the daemon's config::

    [[interceptors]]
    use = "access_log"
    options = { sample = 0.1, slow_ms = 250 }

Each event is logged in the namespace C{rpcd.access} with the format
C{"{method} {code} {duration_ms} ms {protocol} {peer}"} and these fields:
C{method}, C{kind}, C{protocol}, C{peer}, C{user} (the login, or None),
C{identity} (the client certificate's CN, or None), C{code} (the code's
name: C{OK}, C{NOT_FOUND}, ...), C{duration_ms}, C{bytes_in},
C{bytes_out}, C{messages_in} / C{messages_out} (streams), C{trace_id}
(when the C{tracing} interceptor is in the chain), C{slow}.

C{bytes_in} and C{bytes_out} are B{approximate}: the size of the request
argument and of the result (and of each stream message) encoded as msgpack,
as rpcd's native protocol carries them, without framing, call ids or
metadata; on gob, JSON-RPC and HTTP the wire size differs by the encoding
(and by HTTP headers).  They are None for values msgpack cannot encode.

To keep it on under load:
  - C{sample} (0 to 1, default 1): the share of successful calls logged;
  - C{slow_ms} (default None): a call at least this slow is always logged,
    at level C{warn} with C{slow=True};
  - errors (any code but OK) are always logged unless C{errors = false}.

With C{twistd rpcd}, events go where twistd logs (C{--logfile}, or stdout
with C{-n}).  For JSON lines, pass C{--logger=rpcd.middleware.accesslog.json_observer}:
every event of the daemon (the access log's included) is written as one
JSON object per line (C{twisted.logger.jsonFileLogObserver}) to the file
named by C{RPCD_LOG_JSON}, or to stdout.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any, Callable

import msgpack
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import ILogObserver, Logger, jsonFileLogObserver
from twisted.python.failure import Failure
from zope.interface import implementer

from rpcd.errors import Code, RPCError
from rpcd.core.interfaces import IClientInterceptor, IServerInterceptor

log = Logger(namespace="rpcd.access")

_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def _size(value: Any) -> int | None:
    try:
        return len(_packb(value))
    except Exception:
        return None


@implementer(IServerInterceptor, IClientInterceptor)
class AccessLog:
    """
    Logs each call once it ends (the built-in C{access_log}).

    @ivar logged: events logged so far; C{skipped}: calls not logged
        because of sampling.
    """

    def __init__(self, sample: float = 1.0, slow_ms: float | None = None, errors: bool = True,
                 sizes: bool = True, clock: Any = None, rng: random.Random | None = None,
                 logger: Logger | None = None) -> None:
        """
        @param sample: the share (0 to 1) of successful calls logged.
        @param slow_ms: calls at least this long are always logged (at
            C{warn}); None: no threshold.
        @param errors: log every failed call, whatever C{sample} says.
        @param sizes: work out C{bytes_in} / C{bytes_out} (msgpack sizes).
        @param clock: unused (the call's clock times it); accepted for the
            config loader.
        @param rng: the source of sampling decisions.
        @param logger: where events go (the C{rpcd.access} namespace by
            default).
        @raise ValueError: C{sample} outside 0..1 or C{slow_ms} negative.
        """
        if isinstance(sample, bool) or not isinstance(sample, (int, float)) or not 0 <= sample <= 1:
            raise ValueError(f"sample must be a number from 0 to 1, got {sample!r}")
        if slow_ms is not None and (isinstance(slow_ms, bool) or not isinstance(slow_ms, (int, float))
                                    or slow_ms < 0):
            raise ValueError(f"slow_ms must be a number of milliseconds >= 0, got {slow_ms!r}")
        self.sample = float(sample)
        self.slow = None if slow_ms is None else slow_ms / 1000.0
        self.errors = bool(errors)
        self.sizes = bool(sizes)
        self.rng = rng or random.Random()
        self.log = logger or log
        self.logged = 0
        self.skipped = 0

    def intercept(self, call: Any, proceed: Callable[[Any], Deferred[Any]]) -> Deferred[Any]:
        """
        Pass the call on and log it when it ends.
        """
        counts: list[int] | None = None
        if call.kind != "unary":
            counts = [0, 0, 0, 0]  # messages in, out; bytes in, out
            sizes = self.sizes

            def received(message: Any) -> Any:
                counts[0] += 1
                if sizes:
                    counts[2] += _size(message) or 0
                return message

            def sent(message: Any) -> Any:
                counts[1] += 1
                if sizes:
                    counts[3] += _size(message) or 0
                return message
            call.wrap_messages(received=received, sent=sent)

        def ended(outcome: Any) -> Any:
            self._ended(call, outcome, counts)
            return outcome
        return proceed(call).addBoth(ended)

    def _ended(self, call: Any, outcome: Any, counts: list[int] | None) -> None:
        duration = call.elapsed()
        failed = isinstance(outcome, Failure)
        code = code_name(outcome.value) if failed else "OK"
        slow = self.slow is not None and duration >= self.slow
        if not (slow or (failed and self.errors)):
            if self.sample < 1.0 and (self.sample == 0.0 or self.rng.random() >= self.sample):
                self.skipped += 1
                return
        self.logged += 1
        bytes_in = bytes_out = None
        if self.sizes:
            bytes_in = _size(call.value)
            bytes_out = None if failed else _size(outcome)
        messages_in = messages_out = None
        if counts is not None:
            messages_in, messages_out = counts[0], counts[1]
            if self.sizes:
                bytes_in = (bytes_in or 0) + counts[2]
                bytes_out = (bytes_out or 0) + counts[3]
        identity = getattr(call, "tls_identity", None)
        emit = self.log.warn if slow else self.log.info
        emit("{method} {code} {duration_ms:.3f} ms {protocol} {peer}",
             method=call.method, kind=call.kind, side=call.side, protocol=call.protocol,
             peer=call.peer, user=getattr(call, "user", None),
             identity=getattr(identity, "common_name", None) if identity is not None else None,
             code=code, duration_ms=duration * 1000.0, bytes_in=bytes_in, bytes_out=bytes_out,
             messages_in=messages_in, messages_out=messages_out,
             trace_id=call.data.get("trace_id"), slow=slow, access=True)


def code_name(error: BaseException | None) -> str:
    """
    @param error: what a call failed with.
    @return: its code's name (C{NOT_FOUND}), or the number for a code rpcd
        does not name; C{UNKNOWN} for an exception that is not an
        L{RPCError}.
    """
    if not isinstance(error, RPCError):
        return "CANCELLED" if isinstance(error, CancelledError) else "UNKNOWN"
    try:
        return Code(error.code).name
    except ValueError:
        return str(error.code)


def json_observer() -> ILogObserver:
    """
    A log observer writing JSON lines, for twistd's C{--logger} option
    (C{twistd --logger=rpcd.middleware.accesslog.json_observer rpcd ...}).

    @return: a C{jsonFileLogObserver} on the file named by the
        C{RPCD_LOG_JSON} environment variable (appended to), or on stdout.
    """
    path = os.environ.get("RPCD_LOG_JSON")
    stream = open(path, "a", encoding="utf-8") if path else sys.stdout
    return jsonFileLogObserver(stream)
