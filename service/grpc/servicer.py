"""What each RPC of `inference.GRPCInferenceService` means, over the data plane.

Each method takes the request's bytes (and the request's trace, or None) and returns the
response's bytes, or raises a `VerdictError`; `service.grpc.server` has checked the key and
admitted the request before, and maps errors to status codes after.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from google.protobuf.message import DecodeError, Message

from service.dataplane import DataPlane
from service.errors import BadRequestError
from service.grpc.generated import inference_pb2 as pb
from service.grpc.tensors import decode_infer, encode_infer

if TYPE_CHECKING:
    from service.monitoring.tracing import RequestTrace

M = TypeVar("M", bound=Message)
PROTOCOL = "grpc"


def parse(kind: type[M], data: bytes) -> M:
    """A request message, or 400 when the bytes are not one."""
    try:
        return kind.FromString(data)
    except DecodeError:
        raise BadRequestError(f"the request is not a valid {kind.__name__} message") from None


class Servicer:
    """The RPCs of one server, over its data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def server_live(self, data: bytes, trace: RequestTrace | None) -> bytes:
        """Always live while the process answers."""
        parse(pb.ServerLiveRequest, data)
        return pb.ServerLiveResponse(live=True).SerializeToString()

    async def server_ready(self, data: bytes, trace: RequestTrace | None) -> bytes:
        """Ready once every configured model serves."""
        parse(pb.ServerReadyRequest, data)
        ready, _ = self.plane.metadata.readiness()
        return pb.ServerReadyResponse(ready=ready).SerializeToString()

    async def model_ready(self, data: bytes, trace: RequestTrace | None) -> bytes:
        """Whether a model (version) serves; an unknown one is NOT_FOUND."""
        request = parse(pb.ModelReadyRequest, data)
        _, why = self.plane.metadata.model_ready(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=why is None).SerializeToString()

    async def server_metadata(self, data: bytes, trace: RequestTrace | None) -> bytes:
        """Name, version and protocol extensions."""
        parse(pb.ServerMetadataRequest, data)
        meta = self.plane.metadata.server()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        ).SerializeToString()

    async def model_metadata(self, data: bytes, trace: RequestTrace | None) -> bytes:
        """A model's inputs, outputs, versions and platform."""
        request = parse(pb.ModelMetadataRequest, data)
        meta = self.plane.metadata.model(request.name, request.version or None)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        ).SerializeToString()

    async def model_infer(self, data: bytes, trace: RequestTrace | None) -> bytes:
        """Inference: decode, the data plane (validation, batching, ids), encode."""
        if trace is None:
            call = decode_infer(data)
        else:
            with trace.stage("decode"):
                call = decode_infer(data)
        decided = await self.plane.inference.infer(
            call.model,
            call.version,
            call.inputs,
            call.outputs,
            call.with_ids,
            protocol=PROTOCOL,
            trace=trace,
        )
        if trace is None:
            return encode_infer(call, decided)
        with trace.stage("encode"):
            return encode_infer(call, decided)

    async def repository_index(self, data: bytes, trace: RequestTrace | None) -> bytes:
        """Every model version on disk or served, with its state (admin key)."""
        request = parse(pb.RepositoryIndexRequest, data)
        index = pb.RepositoryIndexResponse.ModelIndex
        rows = self.plane.metadata.index(request.ready)
        return pb.RepositoryIndexResponse(models=[index(**row) for row in rows]).SerializeToString()

    async def repository_model_load(self, data: bytes, trace: RequestTrace | None) -> bytes:
        """(Re)load a model from disk (admin key)."""
        request = parse(pb.RepositoryModelLoadRequest, data)
        name = _model_name(request)
        await self.plane.metadata.load(name)
        return pb.RepositoryModelLoadResponse(model_name=name, isLoaded=True).SerializeToString()

    async def repository_model_unload(self, data: bytes, trace: RequestTrace | None) -> bytes:
        """Stop serving a model; requests in flight finish first (admin key)."""
        request = parse(pb.RepositoryModelUnloadRequest, data)
        name = _model_name(request)
        await self.plane.metadata.unload(name)
        return pb.RepositoryModelUnloadResponse(
            model_name=name, isUnloaded=True
        ).SerializeToString()


def _model_name(
    request: pb.RepositoryModelLoadRequest | pb.RepositoryModelUnloadRequest,
) -> str:
    # Triton's clients send model_name (field 2); KServe's send it as field 1, which this
    # message calls repository_name (verdict serves one repository).
    name = request.model_name or request.repository_name
    if not name:
        raise BadRequestError("`model_name` is required")
    return name
