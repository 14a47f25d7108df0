"""The model registry: which versions of which models are loaded, and their lifecycle.

Loading reads the repository, builds the selected versions off the event loop and only then swaps them
in: a version that fails to load leaves the previously loaded one serving, with the reason recorded.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from medserve.core.metrics import ServingMetrics
from medserve.core.model import LoadedVersion, Placer, ServedModel, load_version
from medserve.repository.repository import ModelRepository, VersionArtifact
from medserve.repository.triton_config import apply_triton_config
from medserve.scheduling.arbiter import DEFAULT_MAX_WAIT_S, DeviceArbiter
from medserve.scheduling.priority import DEFAULT_CLASSES, PriorityClasses
from medserve.values.errors import MedserveError, ModelLoadError, ModelNotFound
from medserve.values.types import RepositoryEntry

log = logging.getLogger(__name__)

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"
UNLOADING = "UNLOADING"


@dataclass(slots=True)
class _Entry:
    versions: dict[int, ServedModel] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    error: str = ""
    state: str = UNAVAILABLE
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(slots=True)
class _Attempt:
    loaded: list[LoadedVersion]
    failures: dict[int, str]


class LineageBook(Protocol):
    """What the registry needs of ``medserve.repository.lineage.Lineage``."""

    def check(self, model: str, version: int, artifact: Path, digest: str) -> Any: ...

    def pinned(self, model: str) -> int | None: ...

    def pin(self, model: str, version: int, by: str) -> None: ...

    def unpin(self, model: str) -> bool: ...

    def rollback_target(self, model: str, current: int, available: list[int]) -> int: ...


class ModelRegistry:
    def __init__(
        self,
        repository: ModelRepository,
        metrics: ServingMetrics,
        lineage: LineageBook | None = None,
        *,
        priority_classes: PriorityClasses = DEFAULT_CLASSES,
        placer: Placer | None = None,
        cross_model_wait_s: float = DEFAULT_MAX_WAIT_S,
    ) -> None:
        self.repository = repository
        self.metrics = metrics
        self.lineage = lineage
        self.priority_classes = priority_classes
        #: automatic placement, device-fault failover, energy metering and live profiles (None: off)
        self.placer = placer
        #: precedence across the models that share a device (None: each model's batcher on its own)
        self.arbiter = DeviceArbiter(cross_model_wait_s) if cross_model_wait_s > 0 else None
        self._entries: dict[str, _Entry] = {}

    def _check(self, name: str, version: int, artifact: Path, digest: str) -> dict[str, Any]:
        if self.lineage is None:
            return {}
        params: dict[str, Any] = self.lineage.check(name, version, artifact, digest).to_parameters()
        return params

    def _selected(self, name: str) -> list[VersionArtifact]:
        """The versions to serve: the pinned one after a rollback, else what the version policy selects."""
        config = self.repository.config(name)
        pinned = self.lineage.pinned(name) if self.lineage is not None else None
        if pinned is None:
            return self.repository.artifacts(name, config)
        if pinned not in self.repository.versions_on_disk(name):
            raise ModelLoadError(f"model '{name}' is pinned to version {pinned}, which is not on disk")
        return [VersionArtifact(pinned, self.repository.model_dir(name) / str(pinned) / config.artifact)]

    def _entry(self, name: str) -> _Entry:
        return self._entries.setdefault(name, _Entry())

    def _read(self, name: str, override: dict[str, Any] | None = None) -> _Attempt:
        """Blocking: validate the config (with ``override``, Triton's configuration as JSON, applied
        over it) and load every version its policy selects."""
        config = self.repository.config(name)
        if override is not None:
            config = apply_triton_config(config, override)
        artifacts = self._selected(name)
        if not artifacts:
            raise ModelLoadError(
                f"model '{name}' has no version folder selected by its version policy "
                f"(folders on disk: {self.repository.versions_on_disk(name) or 'none'})"
            )
        attempt = _Attempt([], {})
        for artifact in artifacts:
            try:
                attempt.loaded.append(
                    load_version(name, artifact.version, config, artifact.path, self._check, self.placer)
                )
            except MedserveError as exc:
                attempt.failures[artifact.version] = str(exc)
        return attempt

    async def load(self, name: str, override: dict[str, Any] | None = None) -> None:
        """Load (or reload) a model, with ``override`` (Triton's configuration as JSON) applied over its
        config.yaml for this load; raises when any selected version failed to load."""
        self.repository.model_dir(name)
        entry = self._entry(name)
        async with entry.lock:
            entry.state = LOADING
            try:
                attempt = await asyncio.to_thread(self._read, name, override)
            except MedserveError as exc:
                entry.error = str(exc)
                entry.state = READY if entry.versions else UNAVAILABLE
                log.error("loading model %s failed: %s", name, exc)
                raise
            retired = [m for v, m in entry.versions.items() if v not in attempt.failures]
            kept = {v: m for v, m in entry.versions.items() if v in attempt.failures}
            fresh = {
                lv.version: ServedModel(lv, self.metrics, self.priority_classes, self.placer, self.arbiter)
                for lv in attempt.loaded
            }
            entry.versions = {**kept, **fresh}
            entry.failures = attempt.failures
            entry.error = ""
            entry.state = READY if entry.versions else UNAVAILABLE
            for model in retired:
                asyncio.get_running_loop().create_task(model.close())
            for version, reason in attempt.failures.items():
                log.error("loading %s version %s failed: %s", name, version, reason)
            log.info("model %s: serving version(s) %s", name, sorted(entry.versions) or "none")
        if attempt.failures:
            reasons = "; ".join(f"version {v}: {r}" for v, r in sorted(attempt.failures.items()))
            raise ModelLoadError(f"failed to load '{name}': {reasons}")

    async def unload(self, name: str) -> None:
        entry = self._entries.get(name)
        if entry is None or not entry.versions:
            self.repository.model_dir(name)
            return
        async with entry.lock:
            entry.state = UNLOADING
            versions, entry.versions = list(entry.versions.values()), {}
            entry.failures = {}
            await asyncio.gather(*(m.close() for m in versions))
            entry.state = UNAVAILABLE
            entry.error = "unloaded"
        log.info("model %s unloaded", name)

    async def load_all(self) -> None:
        for name in self.repository.model_names():
            try:
                await self.load(name)
            except MedserveError as exc:
                log.error("model %s is not serving: %s", name, exc)

    def known(self) -> set[str]:
        """Every model name the server knows: in the repository, or loaded (its folder may be gone)."""
        try:
            names = set(self.repository.model_names())
        except MedserveError:
            names = set()
        return names | {name for name, entry in self._entries.items() if entry.versions}

    def get(self, name: str, version: str = "") -> ServedModel:
        entry = self._entries.get(name)
        if entry is None or not entry.versions:
            if name not in self.known():
                raise ModelNotFound(f"model '{name}' does not exist")
            raise ModelNotFound(f"model '{name}' is not loaded")
        if not version:
            return entry.versions[max(entry.versions)]
        model = entry.versions.get(int(version)) if version.isdigit() else None
        if model is None:
            loaded = ", ".join(str(v) for v in sorted(entry.versions))
            raise ModelNotFound(f"model '{name}' has no version '{version}' loaded (loaded: {loaded})")
        return model

    def versions(self, name: str) -> list[str]:
        entry = self._entries.get(name)
        return [str(v) for v in sorted(entry.versions)] if entry else []

    def loaded_models(self) -> list[ServedModel]:
        return [m for e in self._entries.values() for _, m in sorted(e.versions.items())]

    def index(self, ready_only: bool = False) -> list[RepositoryEntry]:
        try:
            names = set(self.repository.model_names())
        except MedserveError:
            names = set()
        rows: list[RepositoryEntry] = []
        for name in sorted(names | set(self._entries)):
            entry = self._entries.get(name)
            if entry is None:
                rows.append(RepositoryEntry(name, "", UNAVAILABLE, "not loaded"))
                continue
            for version in sorted(set(entry.versions) | set(entry.failures)):
                failure = entry.failures.get(version, "")
                if version in entry.versions:
                    if entry.error:
                        reason = f"serving the previous configuration; reload failed: {entry.error}"
                    elif failure:
                        reason = f"serving the previously loaded version; reload failed: {failure}"
                    else:
                        reason = ""
                    state = LOADING if entry.state == LOADING else READY
                    rows.append(RepositoryEntry(name, str(version), state, reason))
                else:
                    rows.append(RepositoryEntry(name, str(version), UNAVAILABLE, failure))
            if not entry.versions and not entry.failures:
                rows.append(RepositoryEntry(name, "", entry.state, entry.error))
        if ready_only:
            rows = [r for r in rows if r.state == READY]
        return rows

    async def close(self) -> None:
        """Unload every model, then write what live traffic measured back to the profiles.

        Only models with a version loaded are unloaded: a model whose load failed and whose folder has
        since been removed has nothing to unload (``unload`` would ask the repository for it).
        """
        loaded = [name for name, entry in self._entries.items() if entry.versions]
        await asyncio.gather(*(self.unload(name) for name in loaded))
        if self.placer is not None:
            await asyncio.to_thread(self.placer.flush)
