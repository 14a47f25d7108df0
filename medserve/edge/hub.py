"""The hub's side of model distribution: releases published per edge group, pins and rollbacks, the
signed manifest each group pulls, the artifacts it downloads and what each edge last reported."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medserve.edge.manifest import Release, sign_manifest, valid_name
from medserve.repository.repository import ModelRepository
from medserve.security.signing import TrustedKeys, signature_path
from medserve.store.database import Database
from medserve.store.tables import HubAuditHeadRow, HubEdgeRow, HubPinRow, HubReleaseRow, HubUplinkRow
from medserve.values.digest import sha256_file
from medserve.values.errors import (
    Conflict,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    PermissionDenied,
)
from medserve.values.times import as_utc

log = logging.getLogger(__name__)


def iso(value: datetime) -> str:
    return as_utc(value).isoformat(timespec="seconds").replace("+00:00", "Z")


def _release(row: HubReleaseRow) -> Release:
    return Release(
        row.model,
        row.version,
        row.artifact,
        row.digest,
        dict(row.signature),
        row.config,
        iso(row.published_at),
        row.published_by,
    )


@dataclass(frozen=True, slots=True)
class HubSettings:
    signing_key: Ed25519PrivateKey
    edges: Mapping[str, str]  # principal name (token name or certificate CN) -> edge group


class Hub:
    """Publications and edges in the store; each call its own transaction (blocking)."""

    def __init__(
        self, database: Database, repository: ModelRepository, keys: TrustedKeys, settings: HubSettings
    ) -> None:
        self._db = self.database = database
        self._repository = repository
        self._keys = keys
        self._settings = settings

    # -- who is an edge ---------------------------------------------------------------------------
    def group_of(self, principal: str) -> str:
        """The edge group of an authenticated principal; ``PermissionDenied`` when it is no edge."""
        group = self._settings.edges.get(principal)
        if group is None:
            raise PermissionDenied(f"'{principal}' is not an edge of this hub (hub_edges names none such)")
        return group

    # -- publishing -------------------------------------------------------------------------------
    def publish(self, group: str, model: str, version: int, by: str) -> Release:
        """Publish version ``version`` of ``model`` in this hub's repository to ``group``: its artifact
        must be signed by a trusted key (the signature travels with it); versions are immutable."""
        valid_name(group, "group")
        valid_name(model, "model")
        config = self._repository.config(model)
        artifact = self._repository.model_dir(model) / str(version) / config.artifact
        if not artifact.is_file():
            raise ModelNotFound(f"model '{model}' has no version {version} artifact {artifact.name}")
        digest = sha256_file(artifact)
        sig = signature_path(artifact)
        if not sig.is_file():
            raise InvalidInput(
                f"model '{model}' version {version}: {sig.name} is missing; edges install signed "
                "artifacts only (medserve models sign)"
            )
        try:
            self._keys.verify(sig, digest)
        except ModelLoadError as exc:
            raise InvalidInput(f"model '{model}' version {version}: {exc}") from None
        document = json.loads(sig.read_text(encoding="utf-8"))
        config_text = (self._repository.model_dir(model) / "config.yaml").read_text(encoding="utf-8")
        with self._db.transaction("hub store") as s:
            row = s.get(HubReleaseRow, (group, model, version))
            if row is not None:
                if row.digest != digest:
                    raise Conflict(
                        f"model '{model}' version {version} was published to '{group}' with digest "
                        f"{row.digest}; the artifact now has {digest}: publish a new version"
                    )
                return _release(row)
            row = HubReleaseRow(
                group=group,
                model=model,
                version=version,
                artifact=artifact.name,
                digest=digest,
                signature=document,
                config=config_text,
                published_at=datetime.now(UTC),
                published_by=by[:128],
            )
            s.add(row)
            s.flush()
            log.info("hub: published %s version %s (sha256 %s) to group %s", model, version, digest, group)
            return _release(row)

    def _published(self, s: Session, group: str, model: str) -> list[int]:
        query = select(HubReleaseRow.version).where(
            HubReleaseRow.group == group, HubReleaseRow.model == model
        )
        return sorted(s.scalars(query).all())

    def pin(self, group: str, model: str, version: int | None, by: str) -> dict[str, Any]:
        """Make ``group`` serve ``version`` of ``model`` (a published one); None removes the pin."""
        with self._db.transaction("hub store") as s:
            published = self._published(s, group, model)
            if not published:
                raise ModelNotFound(f"model '{model}' is not published to group '{group}'")
            row = s.get(HubPinRow, (group, model))
            if version is None:
                if row is not None:
                    s.delete(row)
            elif version not in published:
                raise InvalidInput(
                    f"model '{model}' version {version} is not published to group '{group}' "
                    f"(published: {published})"
                )
            elif row is None:
                s.add(
                    HubPinRow(
                        group=group, model=model, version=version, pinned_at=datetime.now(UTC), pinned_by=by
                    )
                )
            else:
                row.version, row.pinned_at, row.pinned_by = version, datetime.now(UTC), by[:128]
            serving = version if version is not None else published[-1]
        return {"group": group, "model": model, "pinned": version, "serving": serving}

    def rollback(self, group: str, model: str, by: str) -> dict[str, Any]:
        """Pin ``group`` to the published version of ``model`` before the one it serves now."""
        with self._db.transaction("hub store") as s:
            published = self._published(s, group, model)
            pin = s.get(HubPinRow, (group, model))
            current = pin.version if pin is not None else (published[-1] if published else 0)
        earlier = [v for v in published if v < current]
        if not earlier:
            raise InvalidInput(
                f"model '{model}' in group '{group}': no published version before {current} to roll back to"
            )
        return self.pin(group, model, earlier[-1], by)

    def releases(self, group: str) -> list[Release]:
        """What ``group`` serves: per model its pinned version, else its newest release."""
        with self._db.transaction("hub store") as s:
            rows = s.scalars(select(HubReleaseRow).where(HubReleaseRow.group == group)).all()
            pins = {p.model: p.version for p in s.scalars(select(HubPinRow).where(HubPinRow.group == group))}
            chosen: dict[str, HubReleaseRow] = {}
            for row in rows:
                wanted = pins.get(row.model)
                if wanted is not None:
                    if row.version == wanted:
                        chosen[row.model] = row
                elif row.model not in chosen or row.version > chosen[row.model].version:
                    chosen[row.model] = row
            return [_release(chosen[m]) for m in sorted(chosen)]

    def manifest(self, group: str) -> dict[str, Any]:
        """The signed manifest of ``group``."""
        body = {
            "group": group,
            "issued_at": iso(datetime.now(UTC)),
            "releases": [r.to_json() for r in self.releases(group)],
        }
        return sign_manifest(body, self._settings.signing_key)

    def artifact(self, group: str, model: str, version: int) -> Path:
        """The file of a release of ``group`` (``ModelNotFound`` for anything not published to it)."""
        with self._db.transaction("hub store") as s:
            row = s.get(HubReleaseRow, (group, model, version))
            if row is None:
                raise ModelNotFound(f"model '{model}' version {version} is not published to group '{group}'")
            name = row.artifact
        path = self._repository.model_dir(model) / str(version) / name
        if not path.is_file():
            raise ModelNotFound(f"model '{model}' version {version}: the hub no longer has {name}")
        return path

    # -- edges ------------------------------------------------------------------------------------
    def record_sync(self, edge: str, group: str, status: dict[str, Any]) -> None:
        with self._db.transaction("hub store") as s:
            row = s.get(HubEdgeRow, edge)
            now = datetime.now(UTC)
            if row is None:
                s.add(HubEdgeRow(edge=edge, group=group, last_sync_at=now, status=status))
            else:
                row.group, row.last_sync_at, row.status = group, now, status

    def edges(self) -> list[dict[str, Any]]:
        """Every edge seen: its group, last sync, what it reported, and the uplinks received from it."""
        with self._db.transaction("hub store") as s:
            counts: dict[str, dict[str, int]] = {}
            query = select(HubUplinkRow.edge, HubUplinkRow.kind, func.count()).group_by(
                HubUplinkRow.edge, HubUplinkRow.kind
            )
            for edge, kind, count in s.execute(query):
                counts.setdefault(edge, {})[kind] = int(count)
            heads: dict[str, dict[str, int]] = {}
            for head in s.scalars(select(HubAuditHeadRow)):
                heads.setdefault(head.edge, {})[head.chain] = head.seq
            return [
                {
                    "edge": row.edge,
                    "group": row.group,
                    "last_sync_at": iso(row.last_sync_at),
                    "versions": row.status.get("versions", {}),
                    "backlog": row.status.get("backlog", {}),
                    "refused": row.status.get("refused", []),
                    "received": counts.get(row.edge, {}),
                    "audit_verified_to": heads.get(row.edge, {}),
                }
                for row in s.scalars(select(HubEdgeRow).order_by(HubEdgeRow.edge))
            ]
