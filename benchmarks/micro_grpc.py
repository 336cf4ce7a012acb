"""
In-process micro-benchmark of rpcd's gRPC server on unary calls: no
sockets, no reactor loop.

One L{GrpcServerProtocol} on a L{StringTransport}, serving the anchors'
C{anchors.Arith} as C{benchmarks/grpc_arith.py} declares it (the message
classes built here from the same C{.proto} text), and an C{h2} client
connection: each round the client opens C{--batch} streams, each a
C{Multiply} request, and their bytes go to the server in one
C{dataReceived}, as a read of grpcio's 64 calls in flight would arrive.  Only
the server's side is timed (CPU time of C{dataReceived} and the timers it
runs); the client reads the replies outside the timer::

    python benchmarks/micro_grpc.py                # 64 calls per read, us/call
    python benchmarks/micro_grpc.py --profile      # cProfile of the server's side
    SORT=cumulative TOP=60 python benchmarks/micro_grpc.py --profile

The socket benchmark beside grpcio's server is C{benchmarks/bench_grpc.py}.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
import types
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from google.protobuf import descriptor_pb2, descriptor_pool  # noqa: E402
from google.protobuf.message_factory import GetMessageClass  # noqa: E402
from h2.config import H2Configuration  # noqa: E402
from h2.connection import H2Connection  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from rpcd.server.limits import Limits  # noqa: E402
from rpcd.server import RPCServer  # noqa: E402
from rpcd.core.service import ServiceRegistry  # noqa: E402
from rpcd.wire.grpcmsg import encode_message  # noqa: E402
from rpcd.server.grpcserver import GrpcServerProtocol  # noqa: E402


def arith_pb2() -> types.ModuleType:
    """
    @return: a module like protoc's C{arith_pb2} for the anchors'
        C{arith.proto} (built from its descriptor, so no file is needed).
    """
    fd = descriptor_pb2.FileDescriptorProto(name="bench_arith.proto", package="anchors",
                                            syntax="proto3")
    i64 = descriptor_pb2.FieldDescriptorProto.TYPE_INT64
    opt = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    for name, fields in (("Args", ("a", "b")), ("Reply", ("result",)), ("StreamReq", ("count",))):
        message = fd.message_type.add(name=name)
        for number, field in enumerate(fields, 1):
            message.field.add(name=field, number=number, type=i64, label=opt)
    service = fd.service.add(name="Arith")
    service.method.add(name="Multiply", input_type=".anchors.Args", output_type=".anchors.Reply")
    service.method.add(name="Stream", input_type=".anchors.StreamReq",
                       output_type=".anchors.Reply", server_streaming=True)
    pool = descriptor_pool.Default()
    try:
        file = pool.FindFileByName(fd.name)
    except KeyError:
        file = pool.Add(fd) or pool.FindFileByName(fd.name)
    module = types.ModuleType("arith_pb2")
    module.DESCRIPTOR = file  # type: ignore[attr-defined]
    for name in ("Args", "Reply", "StreamReq"):
        setattr(module, name, GetMessageClass(file.message_types_by_name[name]))
    return module


class Bench:
    """
    The server on a StringTransport and an h2 client in front of it.
    """

    def __init__(self) -> None:
        sys.modules.setdefault("arith_pb2", arith_pb2())
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from grpc_arith import Arith
        self.pb = sys.modules["arith_pb2"]
        registry = ServiceRegistry()
        registry.add(Arith())
        self.clock = Clock()
        self.server = RPCServer(registry, self.clock, Limits())
        self.protocol = GrpcServerProtocol(self.server)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        self.protocol.dataReceived(self.client.data_to_send())
        self.replies = 0
        self._read_replies()

    def _read_replies(self) -> None:
        data = self.transport.value()
        self.transport.clear()
        for event in self.client.receive_data(data):
            name = type(event).__name__
            if name == "DataReceived":
                self.client.acknowledge_received_data(event.flow_controlled_length,
                                                      event.stream_id)
            elif name == "TrailersReceived":
                self.replies += 1

    def requests(self, batch: int) -> bytes:
        """
        @return: the bytes of C{batch} new unary calls.
        """
        client = self.client
        body = encode_message(self.pb.Args(a=6, b=7).SerializeToString())
        headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"127.0.0.1"),
                   (b":path", b"/anchors.Arith/Multiply"), (b"te", b"trailers"),
                   (b"content-type", b"application/grpc"),
                   (b"grpc-accept-encoding", b"identity,deflate,gzip"),
                   (b"user-agent", b"grpc-python/1.60 grpc-c/37.0.0 (linux; chttp2)")]
        for _ in range(batch):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, headers)
            client.send_data(sid, body, end_stream=True)
        return client.data_to_send()

    profiler: cProfile.Profile | None = None

    def round(self, batch: int) -> float:
        """
        One read of C{batch} calls.

        @return: the server's CPU seconds for it.
        """
        data = self.requests(batch)
        if self.profiler is not None:
            self.profiler.enable()
        t0 = time.process_time()
        self.protocol.dataReceived(data)
        self.clock.advance(0)
        spent = time.process_time() - t0
        if self.profiler is not None:
            self.profiler.disable()
        self._read_replies()
        self.protocol.dataReceived(self.client.data_to_send())  # window updates
        self._read_replies()
        return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="calls per read")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    bench = Bench()
    for _ in range(20):
        bench.round(args.batch)
    if args.profile:
        profiler = bench.profiler = cProfile.Profile()
        for _ in range(args.rounds):
            bench.round(args.batch)
        pstats.Stats(profiler).sort_stats(os.environ.get("SORT", "tottime")).print_stats(int(os.environ.get("TOP", "35")))
        return
    best = min(sum(bench.round(args.batch) for _ in range(args.rounds))
               for _ in range(args.repeat))
    calls = args.rounds * args.batch
    assert bench.replies >= calls, (bench.replies, calls)
    print(f"{best / calls * 1e6:.1f} us server CPU per unary call ({args.batch} per read)")


if __name__ == "__main__":
    main()
