"""
The .proto files of the standard gRPC services rpcd serves (health and
server reflection), and their generated C{_pb2} modules.

Regenerate after editing a .proto (from the checkout's root)::

    python -m grpc_tools.protoc -I. --python_out=. rpcd/pb/health.proto \
        rpcd/pb/reflection_v1alpha.proto rpcd/pb/reflection_v1.proto
"""
