"""
gRPC's interop C{TestService} (L{rpcd.examples.interop}) over real gRPC as
well: the same methods, which take and return plain mappings, declared
against C{rpcd/examples/protos/grpc_testing.proto} (package
C{grpc.testing}); rpcd hands them each request message as a mapping and
builds the reply messages from theirs (L{rpcd.core.protos.wants_plain}).

Serve it with::

    [services.TestService]
    class = "rpcd.examples.interop_grpc:GrpcTestService"

C{CacheableUnaryCall} and C{UnimplementedCall} are not implemented (the
C{unimplemented_method} case expects UNIMPLEMENTED).
"""

from __future__ import annotations

from rpcd.examples.interop import TestService
from rpcd.examples.protos import grpc_testing_pb2
from rpcd.core.protos import grpc_service


@grpc_service(grpc_testing_pb2, "grpc.testing.TestService")
class GrpcTestService(TestService):
    """gRPC's interop test service, on gRPC and on rpcd's own protocols."""
