"""What the server and its models are, and the model repository's control: metadata, health,
readiness, the Triton-style model configuration, index, load and unload."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from service.errors import VerdictError
from service.models.codecs import DTYPE_TO_DATATYPE
from service.models.repository import Repository
from service.models.version import ModelVersion

SERVER_NAME = "verdict"
EXTENSIONS = ["binary_tensor_data", "model_repository", "parameters"]
PLATFORM = "onnxruntime_onnx"


def server_version() -> str:
    """The installed package's version."""
    try:
        return package_version("verdict")
    except PackageNotFoundError:
        return "0.1.0"


class Metadata:
    """The metadata and repository half of the data plane."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository

    def server(self) -> dict[str, Any]:
        """Name, version and the protocol extensions this server supports."""
        return {"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS}

    def readiness(self) -> tuple[bool, str]:
        """(True, "") once every configured model serves; else (False, why)."""
        repo = self.repository
        if repo.ready:
            return True, ""
        waiting = repo.not_ready() if repo.started else ["(loading)"]
        return False, f"models not ready: {waiting}"

    def model(self, model: str, version: str | None = None) -> dict[str, Any]:
        """Inputs, outputs, served versions, the providers in use, classes and threshold."""
        mv = self.repository.resolve(model, version)
        inp, out = mv.manifest["input"], mv.manifest["output"]
        return {
            "name": mv.name,
            "versions": [str(v) for v in self.repository.versions(mv.name)],
            "platform": PLATFORM,
            "inputs": [
                {
                    "name": inp["name"],
                    "datatype": DTYPE_TO_DATATYPE["float32"],
                    "shape": inp["shape"],
                }
            ],
            "outputs": [
                {
                    "name": out["name"],
                    "datatype": DTYPE_TO_DATATYPE["float32"],
                    "shape": out["shape"],
                }
            ],
            "parameters": {
                "version": str(mv.version),
                "providers": mv.providers,
                "task": mv.task,
                "classes": mv.classes,
                "threshold": mv.threshold,
                "positive_class": out.get("positive_class"),
                "feature_names": inp.get("feature_names"),
                "batching": mv.batcher.enabled,
                "conformance": mv.conformance.record(mv.manifest),
            },
        }

    def config(self, model: str, version: str | None = None) -> dict[str, Any]:
        """The Triton model configuration of a version (for tools such as perf_analyzer)."""
        mv: ModelVersion = self.repository.resolve(model, version)
        inp, out = mv.manifest["input"], mv.manifest["output"]
        batcher = mv.batcher
        return {
            "name": mv.name,
            "platform": PLATFORM,
            "backend": "onnxruntime",
            # Shapes include the batch axis (-1), as Triton writes them for max_batch_size 0.
            "max_batch_size": 0,
            "input": [{"name": inp["name"], "data_type": "TYPE_FP32", "dims": inp["shape"]}],
            "output": [{"name": out["name"], "data_type": "TYPE_FP32", "dims": out["shape"]}],
            "dynamic_batching": {
                "max_queue_delay_microseconds": int(batcher.max_queue_delay_s * 1e6)
            }
            if batcher.enabled
            else None,
            "parameters": {"providers": {"string_value": ",".join(mv.providers)}},
        }

    def model_ready(
        self, model: str, version: str | None = None
    ) -> tuple[str, VerdictError | None]:
        """(name, None) when the model (version) serves, (name, why) when it is known but not
        ready yet; an unknown model or version raises."""
        try:
            mv = self.repository.resolve(model, version)
        except VerdictError as exc:
            if exc.status_code == 503:
                return model, exc
            raise
        return mv.name, None

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every model version on disk or served, with its state (and why not READY)."""
        rows = self.repository.index()
        return [r for r in rows if r["state"] == "READY"] if ready_only else rows

    async def load(self, model: str) -> list[str]:
        """(Re)load a model from disk; returns the versions it serves."""
        return [str(v) for v in await self.repository.load_model(model)]

    async def unload(self, model: str) -> None:
        """Stop serving a model; requests in flight finish first."""
        await self.repository.unload_model(model)
