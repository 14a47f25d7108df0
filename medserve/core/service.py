"""InferenceService: the one dataplane every door (HTTP, gRPC, ...) calls.

Doors decode their wire format into ``core.types`` values, call this service, and encode what it
returns; they map ``MedserveError`` subclasses to their own status codes and hold no other logic.
"""

from __future__ import annotations

from typing import Any, Protocol

from medserve import __version__
from medserve.core.errors import ModelNotFound
from medserve.core.registry import ModelRegistry
from medserve.core.types import InferenceRequest, InferenceResponse, ModelMetadata, RepositoryEntry

#: Open Inference Protocol / Triton extensions this server implements.
EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "model_repository",
    "statistics",
    "model_configuration",
)


class Pipeline(Protocol):
    """A served model made of server-side logic over other models (e.g. the patient monitor)."""

    name: str

    async def infer(self, request: InferenceRequest) -> InferenceResponse: ...

    def metadata(self) -> ModelMetadata: ...


class InferenceService:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._ready = False
        self._pipelines: dict[str, Pipeline] = {}

    def add_pipeline(self, pipeline: Pipeline) -> None:
        self._pipelines[pipeline.name] = pipeline

    # -- server -----------------------------------------------------------------------------
    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "medserve", "version": __version__, "extensions": list(EXTENSIONS)}

    # -- models -----------------------------------------------------------------------------
    def model_ready(self, name: str, version: str = "") -> bool:
        if name in self._pipelines and version in ("", "1"):
            return True
        try:
            return self.registry.get(name, version).ready()
        except ModelNotFound:
            self.registry.repository.model_dir(name)
            return False

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        pipeline = self._pipelines.get(name)
        if pipeline is not None and version in ("", "1"):
            return pipeline.metadata()
        return self.registry.get(name, version).metadata(self.registry.versions(name))

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        return self.registry.get(name, version).triton_config()

    def model_statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        if name:
            if version:
                models = [self.registry.get(name, version)]
            else:
                self.registry.get(name)
                models = [m for m in self.registry.loaded_models() if m.name == name]
        else:
            if version:
                raise ModelNotFound("a version was given without a model name")
            models = self.registry.loaded_models()
        return {"model_stats": [m.stats.to_dict(m.name, m.version) for m in models]}

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        pipeline = self._pipelines.get(request.model_name)
        if pipeline is not None:
            if request.model_version not in ("", "1"):
                raise ModelNotFound(f"pipeline '{request.model_name}' has only version '1'")
            return await pipeline.infer(request)
        return await self.registry.get(request.model_name, request.model_version).infer(request)

    # -- repository -------------------------------------------------------------------------
    def repository_index(self, ready_only: bool = False) -> list[RepositoryEntry]:
        return self.registry.index(ready_only)

    async def load_model(self, name: str) -> None:
        await self.registry.load(name)

    async def unload_model(self, name: str) -> None:
        await self.registry.unload(name)
