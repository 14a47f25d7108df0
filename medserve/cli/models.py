"""``medserve models``: every model and version in a repository, its state and artifact digest."""

from __future__ import annotations

from pathlib import Path

from medserve.values.errors import MedserveError

Row = tuple[str, str, str, str, str]


def inspect_repository(root: Path, *, load: bool = True) -> list[Row]:
    """(model, version, state, sha256, reason) rows; loading checks that each engine accepts the artifact."""
    from medserve.core.model import load_version
    from medserve.repository.repository import ModelRepository
    from medserve.values.digest import sha256_file

    repository = ModelRepository(root)
    rows: list[Row] = []
    for name in repository.model_names():
        try:
            config = repository.config(name)
            artifacts = repository.artifacts(name, config)
        except MedserveError as exc:
            rows.append((name, "-", "INVALID", "-", str(exc)))
            continue
        if not artifacts:
            rows.append((name, "-", "UNAVAILABLE", "-", "no version folder selected by the version policy"))
        for artifact in artifacts:
            version = str(artifact.version)
            if not artifact.path.is_file():
                rows.append((name, version, "UNAVAILABLE", "-", f"{artifact.path} does not exist"))
                continue
            digest = sha256_file(artifact.path)
            if not load:
                rows.append((name, version, "VALID", digest, ""))
                continue
            try:
                loaded = load_version(name, artifact.version, config, artifact.path)
            except MedserveError as exc:
                rows.append((name, version, "UNAVAILABLE", digest, str(exc)))
                continue
            for instance in loaded.instances:
                instance.unload()
            rows.append((name, version, "READY", digest, ""))
    return rows
