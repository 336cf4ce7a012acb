"""
The C{rpcd} command.

    rpcd call ENDPOINT Service.Method [JSON]    call a method, print the result as JSON
    rpcd stream ENDPOINT Service.Method [JSON] [--stdin]
                                                open a stream: messages as JSON lines
    rpcd list ENDPOINT                          list every method with its signature
    rpcd schema ENDPOINT [--go]                 print the OpenRPC document (or Go types)
    rpcd stubs ENDPOINT -o FILE                 write a typed Python client module
    rpcd certs DIR                              make a development CA and certificates
    rpcd hash-password                          hash a password for [auth.users]

ENDPOINT is a Twisted client endpoint string (C{tcp:127.0.0.1:1234},
C{unix:/path}, C{tls:localhost:1234:trustRoots=DIR}).  Exit status: 0 on
success, 1 when the remote call failed (the error is printed), 2 for usage and
connection errors, 130 after Ctrl-C (printing nothing).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from rpcd.cli import schema as cli_schema
from rpcd.cli import stream as cli_stream
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
from rpcd.core.quickexit import freeze_at_exit

_describe = describe_error  # the old name


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
    cli_stream.add_arguments(streaming)

    listing = commands.add_parser("list", help="list every Service.Method with its signature")
    listing.add_argument("endpoint", help="client endpoint string")
    _add_connection_options(listing)

    cli_schema.add_commands(commands, _add_connection_options, _remote)  # rpcd schema, stubs

    certs = commands.add_parser("certs", help="create a development CA, server and client certificates")
    from rpcd.tls import certs as certs_module
    certs_module.add_arguments(certs)
    certs.set_defaults(run=certs_module.run)

    hashing = commands.add_parser("hash-password", help="hash a password for [auth.users]")
    from rpcd.daemon import auth as auth_module
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


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run the C{rpcd} command and exit with its status.

    @param argv: the arguments (C{sys.argv[1:]} by default).
    """
    freeze_at_exit()
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
    from rpcd.client.grpc_protos import load_protos
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

    from rpcd.errors import EncodeError, RPCError, code_name

    status = [EXIT_OK]

    async def go(reactor: Any) -> None:
        from rpcd.client import client as client_module
        from rpcd.cli.interrupt import exit_on_interrupt
        exit_on_interrupt()
        try:
            if args.accept:
                from rpcd.daemon.reverse import accept_one
                client = await accept_one(args.endpoint, codec=args.codec, reactor=reactor,
                                          timeout=args.timeout)
            elif getattr(args, "retries", 0) > 0:
                client = await _retrying(args, reactor)
            else:
                client = await client_module.connect(args.endpoint, codec=args.codec,
                                                     reactor=reactor, connect_timeout=args.timeout,
                                                     proto=args.proto)
        except Exception as e:
            print(f"rpcd: cannot connect to {args.endpoint}: {describe_error(e)}", file=sys.stderr)
            status[0] = EXIT_USAGE
            return
        try:
            result = await client.call(method, value, timeout=args.timeout)
        except EncodeError as e:  # local: nothing was sent
            print(f"rpcd: {e}; nothing was sent", file=sys.stderr)
            status[0] = EXIT_USAGE
        except RPCError as e:
            print(f"rpcd: {method} failed: {code_name(e.code)}: {e.message}", file=sys.stderr)
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
    from rpcd.cluster.balancer import connect_balanced
    from rpcd.cluster.retry import RetryPolicy
    return connect_balanced([args.endpoint], codec=args.codec, reactor=reactor, health=None,
                            breaker=None, retry=RetryPolicy(max_attempts=args.retries + 1),
                            connect_timeout=args.timeout,
                            reconnect=lambda attempt: min(0.1 * 2 ** attempt, 2.0))
