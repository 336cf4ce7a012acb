"""
The standard gRPC services every daemon serves beside its own:
C{grpc.health.v1.Health} and server reflection (C{grpc.reflection.v1} and
C{v1alpha}), so that stock health checkers, C{grpcurl} and other
reflection clients work against rpcd.

They are ordinary rpcd services (C{GrpcHealth}, C{GrpcReflection},
C{GrpcReflectionV1alpha}), callable over every protocol.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, AsyncIterator

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor

from rpcd.errors import NotFound
from rpcd.core.health import health_of
from rpcd.pb import health_pb2, reflection_v1_pb2, reflection_v1alpha_pb2
from rpcd.core.protos import grpc_service, grpc_services, service_descriptor
from rpcd.core.service import ServiceRegistry, exposed

_Status = health_pb2.HealthCheckResponse.ServingStatus


@grpc_service(health_pb2, "grpc.health.v1.Health")
class GrpcHealth:
    """
    gRPC health checks: C{""} (the server) and every service served are
    SERVING unless L{set_status} says otherwise; others are unknown.
    """

    def __init__(self, registry: ServiceRegistry) -> None:
        """
        @param registry: the daemon's services.
        """
        self.registry = registry

    def _names(self) -> set[str]:
        names = {""}
        for spec in self.registry.services():
            names.add(spec.name)
            descriptor = service_descriptor(spec.cls)
            if descriptor is not None:
                names.add(descriptor.full_name)
        return names

    def _rpcd_name(self, service: str) -> str:
        if service == "" or self.registry.spec(service) is not None:
            return service
        for spec in self.registry.services():
            descriptor = service_descriptor(spec.cls)
            if descriptor is not None and descriptor.full_name == service:
                return spec.name
        return service

    def status(self, service: str) -> Any:
        """
        @param service: a gRPC full service name, an rpcd service name, or
            C{""} for the whole server.
        @return: its C{ServingStatus} (from the daemon's
            L{rpcd.core.health.HealthState}, shared with rpcd's own C{Health}
            service), or None when it is not served here.
        """
        health = health_of(self.registry)
        name = self._rpcd_name(service)
        if service not in self._names() and not health.known(name):
            return None
        serving = health.serving(name)
        if serving is None:
            serving = health.serving("")
        return _Status.SERVING if serving else _Status.NOT_SERVING

    def set_status(self, service: str, serving: bool) -> None:
        """
        Change what a service reports (in the daemon's shared
        L{rpcd.core.health.HealthState}); watchers are told at once.

        @param service: as for L{status}.
        @param serving: SERVING or NOT_SERVING.
        """
        health_of(self.registry).set_status(self._rpcd_name(service), serving)

    @exposed
    def Check(self, request: health_pb2.HealthCheckRequest) -> health_pb2.HealthCheckResponse:
        """Return SERVING for the server ("") or a service it serves."""
        status = self.status(request.service)
        if status is None:
            raise NotFound(f"unknown service {request.service}")
        return health_pb2.HealthCheckResponse(status=status)

    @exposed
    def List(self, request: health_pb2.HealthListRequest) -> health_pb2.HealthListResponse:
        """Return the status of every service served."""
        response = health_pb2.HealthListResponse()
        for name in sorted(self._names()):
            status = self.status(name)
            if status is not None:
                response.statuses[name].status = status
        return response

    @exposed
    async def Watch(self, request: health_pb2.HealthCheckRequest
                    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """Send the status now and whenever it changes, until cancelled or the daemon drains."""
        last = None
        while True:
            status = self.status(request.service)
            if status is None:
                status = _Status.SERVICE_UNKNOWN
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if health_of(self.registry).draining:
                return
            await health_of(self.registry).changed()


class _Reflection:
    """
    Server reflection, answered from protobuf's default descriptor pool
    (where compiled and loaded .proto files are).
    """

    pb: ModuleType

    def __init__(self, registry: ServiceRegistry) -> None:
        """
        @param registry: the daemon's services.
        """
        self.registry = registry

    def _answer(self, request: Any) -> Any:
        pb = self.pb
        response = pb.ServerReflectionResponse(valid_host=request.host, original_request=request)
        which = request.WhichOneof("message_request")
        pool = descriptor_pool.Default()
        try:
            if which == "list_services":
                for descriptor in grpc_services(self.registry):
                    response.list_services_response.service.add(name=descriptor.full_name)
            elif which == "file_by_filename":
                self._files(response, pool.FindFileByName(request.file_by_filename))
            elif which == "file_containing_symbol":
                self._files(response, pool.FindFileContainingSymbol(request.file_containing_symbol))
            elif which == "file_containing_extension":
                raise KeyError(f"no extension {request.file_containing_extension.extension_number} "
                               f"of {request.file_containing_extension.containing_type}")
            elif which == "all_extension_numbers_of_type":
                pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
                response.all_extension_numbers_response.base_type_name = \
                    request.all_extension_numbers_of_type
            else:
                response.error_response.error_code = 3
                response.error_response.error_message = "empty reflection request"
        except KeyError as e:
            response.ClearField("message_response")
            response.error_response.error_code = 5  # NOT_FOUND
            response.error_response.error_message = f"not found: {e.args[0] if e.args else e}"
        return response

    def _files(self, response: Any, file: FileDescriptor) -> None:
        """
        Answer with a file and, after it, every file it imports.
        """
        from google.protobuf import descriptor_pb2
        seen: set[str] = set()
        todo = [file]
        files = response.file_descriptor_response.file_descriptor_proto
        while todo:
            current = todo.pop(0)
            if current.name in seen:
                continue
            seen.add(current.name)
            proto = descriptor_pb2.FileDescriptorProto()
            current.CopyToProto(proto)
            files.append(proto.SerializeToString())
            todo.extend(current.dependencies)

    async def _serve(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            yield self._answer(request)


@grpc_service(reflection_v1_pb2, "grpc.reflection.v1.ServerReflection")
class GrpcReflection(_Reflection):
    """gRPC server reflection, C{grpc.reflection.v1}."""

    pb = reflection_v1_pb2

    @exposed
    async def ServerReflectionInfo(
            self, requests: AsyncIterator[reflection_v1_pb2.ServerReflectionRequest]
    ) -> AsyncIterator[reflection_v1_pb2.ServerReflectionResponse]:
        """Answer each reflection request: services, and the files that define symbols."""
        async for response in self._serve(requests):
            yield response


@grpc_service(reflection_v1alpha_pb2, "grpc.reflection.v1alpha.ServerReflection")
class GrpcReflectionV1alpha(_Reflection):
    """gRPC server reflection, C{grpc.reflection.v1alpha} (what older tools ask)."""

    pb = reflection_v1alpha_pb2

    @exposed
    async def ServerReflectionInfo(
            self, requests: AsyncIterator[reflection_v1alpha_pb2.ServerReflectionRequest]
    ) -> AsyncIterator[reflection_v1alpha_pb2.ServerReflectionResponse]:
        """Answer each reflection request: services, and the files that define symbols."""
        async for response in self._serve(requests):
            yield response


STANDARD = (GrpcHealth, GrpcReflection, GrpcReflectionV1alpha)
"""The standard services' classes, each built as C{cls(registry)}."""
