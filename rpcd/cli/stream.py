"""
C{rpcd stream ENDPOINT Service.Method [JSON] [--stdin]}: open a streaming
call, print each message from the server as one JSON line, and with
C{--stdin} send each JSON line read from standard input as a message
(end of input half-closes the stream).  A final value other than null (the
answer of a client-streaming method) is printed as the last line.

Exit status as for C{rpcd call}: 0 when the stream ends well, 1 when it
ends with an error (printed), 2 for usage and connection errors.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

from rpcd.cli.common import (
    EXIT_OK,
    EXIT_REMOTE,
    EXIT_USAGE,
    add_codec_options,
    check_codec_options,
    describe_error,
    dumps,
    parse_argument,
    seconds,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """
    @param parser: the C{stream} subcommand's parser.
    """
    parser.add_argument("endpoint", help="client endpoint string, e.g. tcp:127.0.0.1:1234")
    parser.add_argument("method", help="Service.Method")
    parser.add_argument("argument", nargs="?",
                        help="the call's argument as JSON (the request of a server stream; "
                             "default: null)")
    parser.add_argument("--stdin", action="store_true",
                        help="send each JSON line of standard input as a message; "
                             "end of input half-closes the stream")
    parser.add_argument("--timeout", type=seconds, default=None,
                        help="seconds the whole stream may take (default: no limit)")
    parser.add_argument("--window", type=int, default=None,
                        help="messages the server may send ahead of printing (default 512)")
    parser.add_argument("--accept", action="store_true",
                        help="ENDPOINT is a server endpoint: wait for a daemon to dial in "
                             "(a reverse connection) and stream over it")
    add_codec_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """
    Run C{rpcd stream}.

    @param args: the parsed arguments.
    @return: the exit status.
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    problem = check_codec_options(args)
    if problem is not None:
        print(f"rpcd: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        value = parse_argument(args.argument)
    except ValueError as e:
        print(f"rpcd: the argument is not valid JSON: {e}", file=sys.stderr)
        return EXIT_USAGE
    status = [EXIT_OK]

    async def go(reactor: Any) -> None:
        from rpcd.cli.interrupt import exit_on_interrupt
        exit_on_interrupt()
        status[0] = await _stream(reactor, args, value)

    try:
        react(lambda reactor: Deferred.fromCoroutine(go(reactor)), [])
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    return status[0]


async def _stream(reactor: Any, args: argparse.Namespace, value: Any) -> int:
    from rpcd.client import client as client_module
    from rpcd.errors import EncodeError, RPCError, code_name

    try:
        if args.accept:
            from rpcd.daemon.reverse import accept_one
            client = await accept_one(args.endpoint, reactor=reactor, timeout=args.timeout)
        else:
            client = await client_module.connect(args.endpoint, reactor=reactor, codec=args.codec,
                                                 proto=args.proto)
    except Exception as e:
        print(f"rpcd: cannot connect to {args.endpoint}: {describe_error(e)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        stream = client.stream(args.method, value, timeout=args.timeout, window=args.window)
    except ValueError as e:
        print(f"rpcd: {e}", file=sys.stderr)
        await client.close()
        return EXIT_USAGE
    if args.stdin:
        _LineReader(reactor, stream).start()
    elif args.codec == "grpc":
        stream.close_send()  # A client stream with no requests (the native codec's stays open).
    try:
        async for message in stream:
            sys.stdout.write(dumps(message) + "\n")
            sys.stdout.flush()
        final = await stream.result()
    except EncodeError as e:  # local: nothing was sent
        print(f"rpcd: {e}; nothing was sent", file=sys.stderr)
        return EXIT_USAGE
    except RPCError as e:
        print(f"rpcd: {args.method} failed: {code_name(e.code)}: {e.message}", file=sys.stderr)
        return EXIT_REMOTE
    finally:
        await client.close()
    if final is not None:
        print(dumps(final))
    return EXIT_OK


class _LineReader:
    """
    Reads standard input in a daemon thread (so that an unfinished read
    never holds up the exit) and sends each JSON line as a message, one at
    a time, waiting for credit.
    """

    def __init__(self, reactor: Any, stream: Any) -> None:
        from twisted.internet.defer import DeferredQueue
        self.reactor = reactor
        self.stream = stream
        self.lines: DeferredQueue[bytes] = DeferredQueue()

    def start(self) -> None:
        from twisted.internet.defer import Deferred
        threading.Thread(target=self._read, name="rpcd-stdin", daemon=True).start()
        Deferred.fromCoroutine(self._send()).addErrback(lambda _: None)

    def _read(self) -> None:
        for line in sys.stdin.buffer:
            self.reactor.callFromThread(self.lines.put, line)
        self.reactor.callFromThread(self.lines.put, b"")

    async def _send(self) -> None:
        while True:
            line = await self.lines.get()
            if not line:
                self.stream.close_send()
                return
            if not line.strip():
                continue
            try:
                message = parse_argument(line.decode("utf-8"))
            except ValueError as e:
                print(f"rpcd: a line of standard input is not valid JSON: {e}", file=sys.stderr)
                self.stream.cancel()
                return
            await self.stream.send(message)
