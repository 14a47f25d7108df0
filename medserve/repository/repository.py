"""The model repository on disk: model folders, version folders, artifacts and their digests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medserve.repository.config import ModelConfig, load_model_config
from medserve.values.errors import InvalidConfig, ModelNotFound


@dataclass(frozen=True, slots=True)
class VersionArtifact:
    version: int
    path: Path


class ModelRepository:
    """Reads ``<root>/<model>/config.yaml`` and ``<root>/<model>/<version>/<artifact>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def model_names(self) -> list[str]:
        if not self.root.is_dir():
            raise InvalidConfig(f"model repository {self.root} is not a directory")
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))

    def model_dir(self, name: str) -> Path:
        path = self.root / name
        if "/" in name or name in ("", ".", "..") or not path.is_dir():
            raise ModelNotFound(f"model '{name}' is not in the repository")
        return path

    def config(self, name: str) -> ModelConfig:
        return load_model_config(self.model_dir(name))

    def versions_on_disk(self, name: str) -> list[int]:
        return sorted(int(p.name) for p in self.model_dir(name).iterdir() if p.is_dir() and p.name.isdigit())

    def artifacts(self, name: str, config: ModelConfig) -> list[VersionArtifact]:
        """The version folders the config's version policy selects, newest last."""
        chosen = config.version_policy.select(self.versions_on_disk(name))
        model_dir = self.model_dir(name)
        return [VersionArtifact(v, model_dir / str(v) / config.artifact) for v in chosen]
