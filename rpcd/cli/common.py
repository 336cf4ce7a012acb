"""
What the C{rpcd} subcommands share: JSON in and out, the codec and timeout
options, and describing an error to the user.
"""

from __future__ import annotations

import argparse
import base64
import json
from typing import Any

from rpcd.tls.tlsinfo import describe_tls_failure
from rpcd.wire.fields import check_timeout

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
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    try:
        check_timeout(number, "the timeout")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return number


def describe_error(error: Exception) -> str:
    """
    @param error: why a call or a connection failed.
    @return: words for the user: a TLS handshake failure explained, else
        the error's message (or its type's name).
    """
    try:
        text = describe_tls_failure(error, side="client")
        if text:
            return text
    except Exception:
        pass
    return str(error) or type(error).__name__
