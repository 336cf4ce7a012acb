"""
C{rpcd schema} and C{rpcd stubs}: a daemon's OpenRPC document (fetched with
C{rpc.discover}, L{rpcd.core.schema}), as JSON or Go types, and the typed Python
client module written from it (L{rpcd.cli.stubs}).

    rpcd schema ENDPOINT [--go [--go-package NAME]]
    rpcd stubs ENDPOINT -o FILE
    rpcd stubs --document openrpc.json -o FILE     from a saved document

Exit status as for C{rpcd call}: 0, 1 when C{rpc.discover} failed
remotely, 2 for usage, connection and file errors.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

from rpcd.cli.common import EXIT_OK, EXIT_USAGE, check_codec_options
from rpcd.cli.stubs import python_module
from rpcd.core.gostructs import go_source

_GO_PACKAGE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def add_commands(commands: Any, add_connection_options: Callable[[argparse.ArgumentParser], None],
                 remote: Callable[..., int]) -> None:
    """
    Add the C{schema} and C{stubs} subcommands.

    @param commands: the C{rpcd} parser's subparsers.
    @param add_connection_options: adds the codec, timeout and accept
        options every calling subcommand takes.
    @param remote: calls a method as C{rpcd call} does:
        C{remote(args, method, value, show)} returns the exit status.
    """
    schema = commands.add_parser("schema", help="print the OpenRPC document of a daemon's "
                                                "methods (or Go types with --go)")
    schema.add_argument("endpoint", nargs="?", help="client endpoint string, e.g. tcp:127.0.0.1:1234")
    _add_document_option(schema)
    schema.add_argument("--go", action="store_true",
                        help="print Go struct declarations for its types and a Call for each method")
    schema.add_argument("--go-package", default="rpcdtypes", metavar="NAME",
                        help="the Go package name with --go (default rpcdtypes)")
    add_connection_options(schema)
    schema.set_defaults(run=run_schema, remote=remote)

    stubs = commands.add_parser("stubs", help="write a typed Python client module "
                                              "(dataclasses and typed methods) for a daemon")
    stubs.add_argument("endpoint", nargs="?", help="client endpoint string")
    _add_document_option(stubs)
    stubs.add_argument("-o", "--output", required=True, metavar="FILE",
                       help="the module to write, e.g. rpcd_api.py ('-' for standard output)")
    add_connection_options(stubs)
    stubs.set_defaults(run=run_stubs, remote=remote)


def _add_document_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--document", metavar="FILE",
                        help="read the OpenRPC document (or a JSON-RPC response carrying it, "
                             "as curl gets it) from FILE ('-' for standard input) instead of "
                             "asking ENDPOINT")


def read_document(path: str) -> tuple[int, dict[str, Any] | None]:
    """
    Read a document saved from C{rpc.discover} or C{GET /openrpc.json}.

    @param path: the file, or C{-} for standard input.
    @return: C{(status, document)} as L{fetch_document}.
    """
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        value = json.loads(text)
    except OSError as e:
        print(f"rpcd: cannot read {path}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE, None
    except ValueError as e:
        print(f"rpcd: {path} is not JSON: {e}", file=sys.stderr)
        return EXIT_USAGE, None
    if isinstance(value, dict) and isinstance(value.get("result"), dict):
        value = value["result"]  # a JSON-RPC response to rpc.discover
    if not isinstance(value, dict) or not isinstance(value.get("methods"), list):
        print(f"rpcd: {path} is not an OpenRPC document (no 'methods' list)", file=sys.stderr)
        return EXIT_USAGE, None
    return EXIT_OK, value


def fetch_document(args: argparse.Namespace) -> tuple[int, dict[str, Any] | None]:
    """
    Call C{rpc.discover} on the daemon C{args} name, or read C{--document}.

    @param args: the parsed options (endpoint, codec, timeout, accept,
        document).
    @return: C{(status, document)}: the document with status 0, or None
        with the exit status after printing why.
    """
    if (args.endpoint is None) == (args.document is None):
        print("rpcd: give either ENDPOINT or --document FILE", file=sys.stderr)
        return EXIT_USAGE, None
    if args.document is not None:
        return read_document(args.document)
    problem = check_codec_options(args)
    if problem is not None:
        print(f"rpcd: {problem}", file=sys.stderr)
        return EXIT_USAGE, None
    answers: list[Any] = []
    status = args.remote(args, "rpc.discover", None, answers.append)
    if status != EXIT_OK:
        return status, None
    if not answers or not isinstance(answers[0], dict) or "methods" not in answers[0]:
        print(f"rpcd: rpc.discover on {args.endpoint} did not answer an OpenRPC document",
              file=sys.stderr)
        return EXIT_USAGE, None
    return EXIT_OK, answers[0]


def run_schema(args: argparse.Namespace) -> int:
    """
    Print the document, or Go declarations with C{--go}.

    @return: the exit status.
    """
    if args.go and not _GO_PACKAGE.match(args.go_package):
        print(f"rpcd: --go-package {args.go_package!r} is not a Go identifier", file=sys.stderr)
        return EXIT_USAGE
    status, document = fetch_document(args)
    if document is None:
        return status
    if args.go:
        sys.stdout.write(go_source(document, args.go_package))
    else:
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return EXIT_OK


def run_stubs(args: argparse.Namespace) -> int:
    """
    Write the typed client module.

    @return: the exit status.
    """
    status, document = fetch_document(args)
    if document is None:
        return status
    text = python_module(document)
    if args.output == "-":
        sys.stdout.write(text)
        return EXIT_OK
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as e:
        print(f"rpcd: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"rpcd: wrote {args.output}: {len(document['methods'])} methods, "
          f"{len(document.get('components', {}).get('schemas', {}))} types", file=sys.stderr)
    return EXIT_OK
