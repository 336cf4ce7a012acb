"""
The C{rpcd} command.

    rpcd call ENDPOINT Service.Method [JSON]    call a method, print the result as JSON
    rpcd stream ENDPOINT Service.Method [JSON] [--stdin]
                                                open a stream: messages as JSON lines
    rpcd list ENDPOINT                          list every method with its signature
    rpcd certs DIR                              make a development CA and certificates
    rpcd hash-password                          hash a password for [auth.users]

ENDPOINT is a Twisted client endpoint string (C{tcp:127.0.0.1:1234},
C{unix:/path}, C{tls:localhost:1234:trustRoots=DIR}).  Exit status: 0 on
success, 1 when the remote call failed (the error is printed), 2 for usage and
connection errors, 130 after Ctrl-C (printing nothing).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any, Sequence

EXIT_OK, EXIT_REMOTE, EXIT_USAGE = 0, 1, 2


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def dumps(value: Any) -> str:
    """
    @param value: a decoded result.
    @return: JSON text (bytes as base64, as Go's encoding/json does).
    """
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_argument(text: str | None) -> Any:
    """
    @param text: the JSON argument from the command line, or None.
    @return: the decoded value (None when absent).
    @raise ValueError: not strict JSON.
    """
    if text is None:
        return None
    return json.loads(text, parse_constant=_refuse_constant)


def build_parser() -> argparse.ArgumentParser:
    """
    @return: the argument parser for every subcommand.
    """
    parser = argparse.ArgumentParser(prog="rpcd", description="Call and manage rpcd servers.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    call = commands.add_parser("call", help="call a method and print its result as JSON")
    call.add_argument("endpoint", help="client endpoint string, e.g. tcp:127.0.0.1:1234")
    call.add_argument("method", help="Service.Method")
    call.add_argument("argument", nargs="?", help="the argument as JSON (default: null)")
    _add_connection_options(call)
    call.add_argument("--retries", type=int, default=0, metavar="N",
                      help="retry up to N times (with backoff, reconnecting) when the call fails "
                           "with UNAVAILABLE or RESOURCE_EXHAUSTED; --timeout bounds them all")

    streaming = commands.add_parser("stream", help="open a streaming call: print each message "
                                                   "as a JSON line, send JSON lines from stdin")
    from rpcd import cli_stream
    cli_stream.add_arguments(streaming)

    listing = commands.add_parser("list", help="list every Service.Method with its signature")
    listing.add_argument("endpoint", help="client endpoint string")
    _add_connection_options(listing)

    certs = commands.add_parser("certs", help="create a development CA, server and client certificates")
    from rpcd import certs as certs_module
    certs_module.add_arguments(certs)
    certs.set_defaults(run=certs_module.run)

    hashing = commands.add_parser("hash-password", help="hash a password for [auth.users]")
    from rpcd import auth as auth_module
    auth_module.add_arguments(hashing)
    hashing.set_defaults(run=auth_module.run)
    return parser


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    add_codec_options(parser)
    parser.add_argument("--timeout", type=seconds, default=30.0,
                        help="seconds to wait for the answer (default 30)")
    parser.add_argument("--accept", action="store_true",
                        help="ENDPOINT is a server endpoint: wait for a daemon to dial in "
                             "(a reverse connection) and call over it")


def add_codec_options(parser: argparse.ArgumentParser) -> None:
    """
    Add C{--codec} and C{--proto} (for C{call}, C{stream} and C{list}).
    """
    parser.add_argument("--codec", default="native",
                        help="wire protocol: native (default), gob, gob-http, jsonrpc, jsonrpc2, "
                             "grpc (with --proto)")
    parser.add_argument("--proto", action="append", metavar="FILE",
                        help="for --codec grpc: the server's .proto file (repeatable); "
                             "METHOD is [package.]Service.Method, arguments and results use "
                             "protobuf's JSON mapping")


def check_codec_options(args: argparse.Namespace) -> str | None:
    """
    @return: what is wrong with C{--codec}/C{--proto}/C{--accept}/C{--retries}
        together, or None.
    """
    if args.codec == "grpc":
        if not args.proto:
            return "--codec grpc needs the server's .proto file: --proto FILE"
        if getattr(args, "accept", False) or getattr(args, "retries", 0):
            return "--codec grpc does not work with --accept or --retries"
    elif args.proto:
        return "--proto is for --codec grpc"
    return None


def seconds(text: str) -> float:
    """
    The type of C{--timeout} options: a number of seconds from 0 to
    L{rpcd.wire.fields.MAX_TIMEOUT}.

    @raise argparse.ArgumentTypeError: anything else (argparse reports it).
    """
    from rpcd.wire.fields import check_timeout
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    try:
        check_timeout(number, "the timeout")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return number


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run the C{rpcd} command and exit with its status.

    @param argv: the arguments (C{sys.argv[1:]} by default).
    """
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    """
    Run the C{rpcd} command.

    @param argv: the arguments.
    @return: the exit status.
    """
    args = build_parser().parse_args(argv)
    if hasattr(args, "run"):
        return args.run(args)
    problem = check_codec_options(args)
    if problem is not None:
        print(f"rpcd: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "list" and args.codec == "grpc":
        return _list_proto(args)
    if args.command == "call":
        try:
            value = parse_argument(args.argument)
        except ValueError as e:
            print(f"rpcd: the argument is not valid JSON: {e}", file=sys.stderr)
            return EXIT_USAGE
        return _remote(args, args.method, value, _print_result)
    return _remote(args, "Introspection.List", None, _print_listing)


def _list_proto(args: argparse.Namespace) -> int:
    # A gRPC server need not list its methods: list the .proto's.
    from rpcd.grpc_client_protos import load_protos
    try:
        protos = load_protos(args.proto)
    except ValueError as e:
        print(f"rpcd: {e}", file=sys.stderr)
        return EXIT_USAGE
    for name, method in sorted(protos.methods.items()):
        print(f"{name}({method.request_class.DESCRIPTOR.full_name}) -> "
              f"{method.response_class.DESCRIPTOR.full_name}  {method.kind}")
    return EXIT_OK


def _print_result(result: Any) -> None:
    print(dumps(result))


def _print_listing(result: Any) -> None:
    for item in result:
        doc = f"  {item['doc']}" if item.get("doc") else ""
        print(f"{item['signature']}{doc}")


def _remote(args: argparse.Namespace, method: str, value: Any, show: Any) -> int:
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    from rpcd.errors import EncodeError, RPCError, _code_name

    status = [EXIT_OK]

    async def go(reactor: Any) -> None:
        from rpcd import client as client_module
        from rpcd.cli_interrupt import exit_on_interrupt
        exit_on_interrupt()
        try:
            if args.accept:
                from rpcd.reverse import accept_one
                client = await accept_one(args.endpoint, codec=args.codec, reactor=reactor,
                                          timeout=args.timeout)
            elif getattr(args, "retries", 0) > 0:
                client = await _retrying(args, reactor)
            else:
                client = await client_module.connect(args.endpoint, codec=args.codec,
                                                     reactor=reactor, connect_timeout=args.timeout,
                                                     proto=args.proto)
        except Exception as e:
            print(f"rpcd: cannot connect to {args.endpoint}: {_describe(e)}", file=sys.stderr)
            status[0] = EXIT_USAGE
            return
        try:
            result = await client.call(method, value, timeout=args.timeout)
        except EncodeError as e:  # local: nothing was sent
            print(f"rpcd: {e}; nothing was sent", file=sys.stderr)
            status[0] = EXIT_USAGE
        except RPCError as e:
            print(f"rpcd: {method} failed: {_code_name(e.code)}: {e.message}", file=sys.stderr)
            status[0] = EXIT_REMOTE
        else:
            show(result)
        finally:
            await client.close()

    try:
        react(lambda reactor: Deferred.fromCoroutine(go(reactor)), [])
    except SystemExit as e:  # react() always exits; keep our own status
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    return status[0]


def _retrying(args: argparse.Namespace, reactor: Any) -> Any:
    # One endpoint behind a balancer: it reconnects, and retries by the policy.
    from rpcd.balancer import connect_balanced
    from rpcd.retry import RetryPolicy
    return connect_balanced([args.endpoint], codec=args.codec, reactor=reactor, health=None,
                            breaker=None, retry=RetryPolicy(max_attempts=args.retries + 1),
                            connect_timeout=args.timeout,
                            reconnect=lambda attempt: min(0.1 * 2 ** attempt, 2.0))


def _describe(error: Exception) -> str:
    try:
        from rpcd.tlsinfo import describe_tls_failure
        text = describe_tls_failure(error, side="client")
        if text:
            return text
    except Exception:
        pass
    return str(error) or type(error).__name__
