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
    python benchmarks/micro_grpc.py --floor        # rpcd beside bare h2 servers
    python benchmarks/micro_grpc.py --floor --profile   # cProfile of the bare h2 server

C{--floor} puts rpcd beside the thinnest servers C{h2} allows, in the same
process, rounds alternating, each fed the same client bytes (checked equal):
C{H2Connection} with the cheapest C{H2Configuration} (no header validation or
normalisation, bytes headers, no logger), C{receive_data}, and per request
C{acknowledge_received_data}, C{send_headers} (rpcd's reply headers),
C{send_data} (a fixed reply message), C{send_headers} (C{grpc-status: 0},
C{end_stream}), and one C{data_to_send} per read.  No routing, protobuf,
dispatch or flow-control bookkeeping: the best any C{h2}-based server can
do.  C{h2 floor} uses h2's own HPACK coders, C{h2 floor + caches} the same
with rpcd's HPACK caches (L{rpcd.wire.hpackfast}) plugged in, as rpcd's
server does.  It prints the median over C{--repeat} of each server's us per
call, and rpcd's overhead above each floor (medians of the runs' differences
and ratios).

The socket benchmark beside grpcio's server is C{benchmarks/bench_grpc.py}.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
import types
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from google.protobuf import descriptor_pb2, descriptor_pool  # noqa: E402
from google.protobuf.message_factory import GetMessageClass  # noqa: E402
from h2.config import H2Configuration  # noqa: E402
from h2.connection import H2Connection  # noqa: E402
from h2.events import DataReceived, StreamEnded  # noqa: E402
from h2.settings import SettingCodes, Settings  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.protocol import Protocol  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from rpcd.server.limits import Limits  # noqa: E402
from rpcd.server import RPCServer  # noqa: E402
from rpcd.core.service import ServiceRegistry  # noqa: E402
from rpcd.wire.grpcmsg import encode_message  # noqa: E402
from rpcd.server.grpcserver import (  # noqa: E402
    CONNECTION_WINDOW,
    MAX_HEADER_LIST,
    GrpcServerProtocol,
)
from rpcd.wire.hpackfast import install as install_hpack_caches  # noqa: E402


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


REQUEST_HEADERS = [
    (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"127.0.0.1"),
    (b":path", b"/anchors.Arith/Multiply"), (b"te", b"trailers"),
    (b"content-type", b"application/grpc"),
    (b"grpc-accept-encoding", b"identity,deflate,gzip"),
    (b"user-agent", b"grpc-python/1.60 grpc-c/37.0.0 (linux; chttp2)")]
"""A unary call's headers, as grpcio's client sends them."""


class Bench:
    """
    The server on a StringTransport and an h2 client in front of it.
    """

    name = "rpcd"

    def __init__(self) -> None:
        self.pb = pb_module()
        self.clock = Clock()
        self.protocol = self.make_protocol()
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        self.protocol.dataReceived(self.client.data_to_send())
        self.replies = 0
        self.sent: bytes = b""
        self._read_replies()

    def make_protocol(self) -> Any:
        """
        @return: the server's protocol (rpcd's gRPC server).
        """
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from grpc_arith import Arith
        registry = ServiceRegistry()
        registry.add(Arith())
        server = RPCServer(registry, self.clock, Limits())
        return GrpcServerProtocol(server)

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
        for _ in range(batch):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, REQUEST_HEADERS)
            client.send_data(sid, body, end_stream=True)
        self.sent = client.data_to_send()
        return self.sent

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


def pb_module() -> types.ModuleType:
    """
    @return: the C{arith_pb2} module (made once, importable by C{grpc_arith}).
    """
    module = sys.modules.get("arith_pb2")
    if module is None:
        module = sys.modules["arith_pb2"] = arith_pb2()
    return module


class FloorProtocol(Protocol):
    """
    The thinnest gRPC server C{h2} allows (no rpcd code unless
    C{caches}): every request is answered with the same C{Reply} once its
    stream ends.
    """

    REPLY_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc"),
                     (b"grpc-accept-encoding", b"identity,gzip")]
    TRAILERS = [(b"grpc-status", b"0")]

    def __init__(self, caches: bool) -> None:
        self.conn = H2Connection(H2Configuration(
            client_side=False, header_encoding=None,
            validate_inbound_headers=False, normalize_inbound_headers=False,
            validate_outbound_headers=False, normalize_outbound_headers=False))
        if caches:
            install_hpack_caches(self.conn, MAX_HEADER_LIST)
        self.reply = encode_message(pb_module().Reply(result=42).SerializeToString())

    def connectionMade(self) -> None:
        conn = self.conn
        conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: 1000,
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            SettingCodes.ENABLE_PUSH: 0,
        })
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW)
        self.transport.write(conn.data_to_send())

    def dataReceived(self, data: bytes) -> None:
        conn = self.conn
        reply, headers, trailers = self.reply, self.REPLY_HEADERS, self.TRAILERS
        for event in conn.receive_data(data):
            kind = type(event)
            if kind is DataReceived:
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif kind is StreamEnded:
                sid = event.stream_id
                conn.send_headers(sid, headers)
                conn.send_data(sid, reply)
                conn.send_headers(sid, trailers, end_stream=True)
        out = conn.data_to_send()
        if out:
            self.transport.write(out)


class Floor(Bench):
    """
    L{FloorProtocol} in L{Bench}'s place.
    """

    def __init__(self, caches: bool) -> None:
        self.caches = caches
        self.name = "h2 floor + caches" if caches else "h2 floor"
        super().__init__()

    def make_protocol(self) -> Any:
        return FloorProtocol(self.caches)


def floor(args: argparse.Namespace) -> None:
    """
    rpcd and the floors, rounds alternating, the same client bytes.
    """
    benches = [Bench(), Floor(caches=False), Floor(caches=True)]
    for _ in range(20):
        for bench in benches:
            bench.round(args.batch)
    if args.profile:
        target = benches[1]
        profiler = target.profiler = cProfile.Profile()
        for _ in range(args.rounds):
            target.round(args.batch)
        pstats.Stats(profiler).sort_stats(os.environ.get("SORT", "tottime")).print_stats(
            int(os.environ.get("TOP", "35")))
        return
    calls = args.rounds * args.batch
    results: dict[str, list[float]] = {bench.name: [] for bench in benches}
    for _ in range(args.repeat):
        spent = dict.fromkeys(results, 0.0)
        for _ in range(args.rounds):
            for bench in benches:
                spent[bench.name] += bench.round(args.batch)
            if len({bench.sent for bench in benches}) != 1:
                raise SystemExit("the servers were not sent the same bytes")
        for name, total in spent.items():
            results[name].append(total / calls * 1e6)
    assert all(bench.replies >= calls for bench in benches)
    median = {name: statistics.median(runs) for name, runs in results.items()}
    print(f"us server CPU per unary call ({args.batch} per read, median of {args.repeat} "
          f"x {calls} calls, rounds alternating):")
    for name, runs in results.items():
        print(f"  {name:<20} {median[name]:7.1f}   runs: "
              + " ".join(f"{r:.1f}" for r in runs))
    # Each run's servers saw the same moments of a shared machine: the
    # median of per-run differences and ratios is steadier than either
    # server's own median.
    for name in list(results)[1:]:
        pairs = list(zip(results["rpcd"], results[name]))
        above = statistics.median(r - f for r, f in pairs)
        ratio = statistics.median(r / f for r, f in pairs)
        print(f"  rpcd above {name:<20} {above:+7.1f} us ({ratio:.2f}x)   (medians of per-run "
              "differences and ratios)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="calls per read")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--floor", action="store_true",
                        help="rpcd beside bare h2 servers, alternating (see above)")
    args = parser.parse_args()
    if args.floor:
        floor(args)
        return
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
