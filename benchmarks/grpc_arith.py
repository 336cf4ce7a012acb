"""
The anchors' C{anchors.Arith} (their C{py/arith.proto}) as an rpcd gRPC
service, for L{bench_grpc}: the daemon imports this module with the stubs
grpcio-tools generated (C{arith_pb2}) on its path.
"""

from __future__ import annotations

from typing import AsyncIterator

import arith_pb2 as pb  # type: ignore[import-not-found]

from rpcd.protos import grpc_service
from rpcd.service import exposed


@grpc_service(pb, "anchors.Arith")
class Arith:
    """
    Unary C{Multiply} and server-streaming C{Stream}, answering as the
    anchors' C{grpc_server.py} does.
    """

    @exposed
    def Multiply(self, request: pb.Args) -> pb.Reply:
        """
        @return: C{Reply(result=a*b)}.
        """
        return pb.Reply(result=request.a * request.b)

    @exposed
    async def Stream(self, request: pb.StreamReq) -> AsyncIterator[pb.Reply]:
        """
        @return: C{Reply(result=i)} for i in 0..count-1.
        """
        reply = pb.Reply
        for i in range(request.count):
            yield reply(result=i)
