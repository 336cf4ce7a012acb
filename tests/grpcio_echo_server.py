"""
A grpcio server of C{tests/protos/echo.proto} for rpcd's gRPC client tests,
run as its own process:

    python tests/grpcio_echo_server.py [--gzip] [--tls CERT KEY [CLIENT_CA]]

It compiles the C{.proto} with grpcio-tools into a temporary directory,
listens on 127.0.0.1 (port from the OS), prints C{listening on
127.0.0.1:PORT}, and serves until killed.

  - C{Unary} answers C{text}, C{count} bytes of payload, the request
    metadata (text keys) and the time remaining; it echoes C{x-trailer}
    metadata into the trailing metadata; C{fail_code} fails the call with
    that code, the message C{"failed: TEXT"} and C{grpc-status-details-bin}
    = C{payload}; C{sleep} waits first (and reports C{cancelled} if the
    client gave up meanwhile).
  - C{Count} streams C{count} replies numbered from 0; C{Collect} joins the
    texts of its requests; C{Chat} answers each request at once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_tools import protoc

PROTO = Path(__file__).resolve().parent / "protos" / "echo.proto"


def load_modules():  # type: ignore[no-untyped-def]
    out = tempfile.mkdtemp(prefix="rpcd-grpcio-")
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(["protoc", f"-I{PROTO.parent}", f"-I{include}", f"--python_out={out}",
                        f"--grpc_python_out={out}", str(PROTO)])
    if code != 0:
        raise SystemExit(f"protoc failed on {PROTO}")
    sys.path.insert(0, out)
    import echo_pb2
    import echo_pb2_grpc
    return echo_pb2, echo_pb2_grpc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--tls", nargs="+", metavar="FILE")
    args = parser.parse_args()
    pb, pb_grpc = load_modules()

    def fail(context, request):  # type: ignore[no-untyped-def]
        if request.payload:
            context.set_trailing_metadata([("grpc-status-details-bin", request.payload)])
        context.abort(grpc.StatusCode(next(c for c in grpc.StatusCode
                                           if c.value[0] == request.fail_code)),
                      f"failed: {request.text}")

    class Echo(pb_grpc.EchoServicer):  # type: ignore[misc, name-defined]
        def Unary(self, request, context):  # type: ignore[no-untyped-def]
            remaining = context.time_remaining()
            if request.sleep:
                # Simulated work that ends early when the caller cancels (no polling).
                ended = threading.Event()
                context.add_callback(ended.set)
                ended.wait(request.sleep)
                if not context.is_active():
                    print("cancelled", request.text, flush=True)
                    return pb.EchoReply()
            if request.fail_code:
                fail(context, request)
            metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
            trailer = [(k, v) for k, v in context.invocation_metadata() if k.startswith("x-trailer")]
            if trailer:
                context.set_trailing_metadata(trailer)
            return pb.EchoReply(text=request.text, payload=b"x" * request.count,
                                metadata=metadata,
                                time_remaining=remaining if remaining and remaining < 1e6 else 0)

        def Count(self, request, context):  # type: ignore[no-untyped-def]
            for i in range(request.count):
                yield pb.EchoReply(text=request.text, index=i)
            if request.fail_code:
                fail(context, request)

        def Collect(self, requests, context):  # type: ignore[no-untyped-def]
            texts = [r.text for r in requests]
            return pb.EchoReply(text=",".join(texts), index=len(texts))

        def Chat(self, requests, context):  # type: ignore[no-untyped-def]
            for i, request in enumerate(requests):
                yield pb.EchoReply(text=request.text.upper(), index=i)

    options = [("grpc.max_send_message_length", 16 << 20),
               ("grpc.max_receive_message_length", 16 << 20)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options,
                         compression=grpc.Compression.Gzip if args.gzip else None)
    pb_grpc.add_EchoServicer_to_server(Echo(), server)
    if args.tls:
        cert, key = Path(args.tls[0]).read_bytes(), Path(args.tls[1]).read_bytes()
        client_ca = Path(args.tls[2]).read_bytes() if len(args.tls) > 2 else None
        credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                                  require_client_auth=client_ca is not None)
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
