"""Model version lineage: artifact digests recorded on first load, signatures, validation records, pins.

A version's artifact is immutable once served: a later load with a different digest is refused.
Signatures (``<artifact>.sig``) and validation records (``<version>/validation.yaml``) describe the
artifact and may be added after the first load. A pin makes a model serve one version (rollback).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from datetime import date as Date
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from medserve.security.signing import TrustedKeys, signature_path
from medserve.store.database import Database
from medserve.store.tables import ModelPinRow, ModelVersionRow
from medserve.values.errors import InvalidConfig, InvalidInput, ModelLoadError
from medserve.values.times import as_utc

log = logging.getLogger(__name__)

VALIDATION_FILE = "validation.yaml"


class ValidationRecord(BaseModel):
    """One entry of ``validation.yaml``: a metric measured on a dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field(min_length=1)
    metric: str = Field(min_length=1)
    value: float = Field(strict=True, allow_inf_nan=False)
    date: Date
    author: str = Field(min_length=1)
    notes: str | None = None

    @field_validator("date", mode="before")
    @classmethod
    def _iso_date(cls, value: object) -> Date:
        if isinstance(value, Date) and not isinstance(value, datetime):
            return value
        if isinstance(value, str):
            try:
                return Date.fromisoformat(value)
            except ValueError:
                pass
        raise ValueError("expected an ISO date such as 2025-01-31")


def _problem(err: Any) -> str:
    loc = list(err["loc"])
    where = f"record {loc[0] + 1}" if loc and isinstance(loc[0], int) else "(top level)"
    name = ".".join(str(p) for p in loc[1:])
    return f"{where}, field '{name}': {err['msg']}" if name else f"{where}: {err['msg']}"


def read_validation(path: Path) -> list[dict[str, Any]] | None:
    """The records in a ``validation.yaml`` (JSON-able dicts), or None when the file is absent."""
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidConfig(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidConfig(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidConfig(f"{path}: expected a list of validation records, got {type(raw).__name__}")
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    for index, item in enumerate(raw):
        try:
            record = ValidationRecord.model_validate(item)
        except ValidationError as exc:
            problems += [_problem({**err, "loc": (index, *err["loc"])}) for err in exc.errors()]
            continue
        records.append(record.model_dump(mode="json", exclude_none=True))
    if problems:
        raise InvalidConfig(f"{path}: {'; '.join(problems)}")
    return records


def _iso(value: datetime) -> str:
    return as_utc(value).isoformat(timespec="seconds").replace("+00:00", "Z")


def _refuse_changed(prefix: str, recorded: str, first_loaded_at: str, found: str) -> None:
    if recorded != found:
        raise ModelLoadError(
            f"{prefix}: artifact digest mismatch: recorded {recorded} on {first_loaded_at}, found {found}; "
            "versions are immutable, publish the change as a new version"
        )


@dataclass(frozen=True, slots=True)
class VersionLineage:
    """What is recorded about one model version."""

    model: str
    version: int
    artifact: str
    digest: str
    first_loaded_at: str  # ISO 8601 UTC, "Z"
    signer: str  # key fingerprint, "" if unsigned
    validation: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: ModelVersionRow) -> VersionLineage:
        return cls(
            row.model,
            row.version,
            row.artifact,
            row.digest,
            _iso(row.first_loaded_at),
            row.signer,
            list(row.validation or []),
        )

    def to_parameters(self) -> dict[str, Any]:
        """JSON-able model metadata parameters."""
        return {
            "artifact_sha256": self.digest,
            "first_loaded_at": self.first_loaded_at,
            "signed_by": self.signer,
            "validation": [dict(r) for r in self.validation],
        }


class Lineage:
    """Records and checks version lineage in the database; each call uses its own session."""

    def __init__(
        self, database: Database, trusted_keys: TrustedKeys | None = None, require_signatures: bool = False
    ) -> None:
        self._db = database
        self._keys = trusted_keys if trusted_keys is not None else TrustedKeys({})
        self.require_signatures = require_signatures

    def _signer(self, prefix: str, artifact: Path, digest: str) -> str:
        sig = signature_path(artifact)
        if not sig.is_file():
            if self.require_signatures:
                raise ModelLoadError(
                    f"{prefix}: signature file {sig} is missing; signatures are required, "
                    "sign the artifact with a trusted key"
                )
            return ""
        try:
            return self._keys.verify(sig, digest)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{prefix}: {exc}") from None

    def check(self, model: str, version: int, artifact: Path, digest: str) -> VersionLineage:
        """Blocking: verify the artifact against its lineage, record it on first load, return it."""
        prefix = f"model '{model}' version {version}"
        digest = digest.lower()
        recorded = self.get(model, version)
        if recorded is not None:
            _refuse_changed(prefix, recorded.digest, recorded.first_loaded_at, digest)
        signer = self._signer(prefix, artifact, digest)
        validation = read_validation(artifact.parent / VALIDATION_FILE)
        try:
            return self._record(prefix, model, version, artifact.name, digest, signer, validation)
        except IntegrityError:
            log.debug("%s: recorded concurrently by another loader; checking again", prefix)
        return self._record(prefix, model, version, artifact.name, digest, signer, validation)

    def _record(
        self,
        prefix: str,
        model: str,
        version: int,
        artifact: str,
        digest: str,
        signer: str,
        validation: list[dict[str, Any]] | None,
    ) -> VersionLineage:
        with self._db.transaction("lineage store") as s:
            row = s.get(ModelVersionRow, (model, version))
            if row is None:
                row = ModelVersionRow(
                    model=model,
                    version=version,
                    artifact=artifact,
                    digest=digest,
                    first_loaded_at=datetime.now(UTC),
                    signer=signer,
                    validation=validation,
                )
                s.add(row)
                s.flush()
                log.info("%s: first load, artifact %s sha256 %s recorded", prefix, artifact, digest)
            else:
                _refuse_changed(prefix, row.digest, _iso(row.first_loaded_at), digest)
                row.signer = signer
                row.validation = validation
            return VersionLineage.from_row(row)

    def get(self, model: str, version: int) -> VersionLineage | None:
        """The recorded lineage of one version, or None when it was never loaded."""
        with self._db.transaction("lineage store") as s:
            row = s.get(ModelVersionRow, (model, version))
            return VersionLineage.from_row(row) if row is not None else None

    def versions(self, model: str) -> list[VersionLineage]:
        """Every recorded version of the model, oldest version first."""
        with self._db.transaction("lineage store") as s:
            query = select(ModelVersionRow).where(ModelVersionRow.model == model)
            rows = s.scalars(query.order_by(ModelVersionRow.version)).all()
            return [VersionLineage.from_row(r) for r in rows]

    def pin(self, model: str, version: int, by: str) -> None:
        """Make the model serve ``version`` instead of what its version policy selects."""
        if version < 1:
            raise InvalidInput(f"model '{model}': cannot pin version {version}; versions are positive")
        if len(by) > 128:
            raise InvalidInput(f"model '{model}': 'by' is longer than 128 characters")
        with self._db.transaction("lineage store") as s:
            row = s.get(ModelPinRow, model)
            if row is None:
                s.add(ModelPinRow(model=model, version=version, pinned_at=datetime.now(UTC), pinned_by=by))
            else:
                row.version, row.pinned_at, row.pinned_by = version, datetime.now(UTC), by

    def unpin(self, model: str) -> bool:
        """Remove the model's pin; False when it had none."""
        with self._db.transaction("lineage store") as s:
            row = s.get(ModelPinRow, model)
            if row is None:
                return False
            s.delete(row)
            return True

    def pinned(self, model: str) -> int | None:
        """The version the model is pinned to, or None."""
        with self._db.transaction("lineage store") as s:
            row = s.get(ModelPinRow, model)
            return row.version if row is not None else None

    def rollback_target(self, model: str, current: int, available: list[int]) -> int:
        """The highest available version below ``current`` that was served before."""
        candidates = sorted((v for v in set(available) if v < current), reverse=True)
        with self._db.transaction("lineage store") as s:
            query = select(ModelVersionRow.version).where(ModelVersionRow.model == model)
            served = set(s.scalars(query).all())
        for version in candidates:
            if version in served:
                return version
        if not candidates:
            raise InvalidInput(
                f"model '{model}': cannot roll back from version {current}: no earlier version is available"
            )
        raise InvalidInput(
            f"model '{model}': cannot roll back from version {current}: earlier versions "
            f"{sorted(candidates)} are available but none was served before, so none has a recorded "
            "artifact digest"
        )
