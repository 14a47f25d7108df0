"""Profiles in the store (table ``model_profiles``), and the live estimates that keep them current.

A profile holds for one artifact on one machine: :meth:`ProfileStore.latest` finds one only for the
same artifact digest and hardware fingerprint, so a changed artifact or machine reads as no profile
(stale: profile again). :meth:`ProfileStore.update_live` folds a latency measured by live traffic into
the newest profile's estimates, kept as ``live`` rows beside the measured ones; saving a new profile
starts the live estimates afresh.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError

from medserve.hardware.profile import ModelProfile, PointSource, PointStatus, ProfilePoint
from medserve.store.database import Database
from medserve.store.sql import describe_error
from medserve.store.tables import ModelProfileRow
from medserve.values.errors import StoreUnavailable
from medserve.values.times import as_utc

#: the p99 tracker's quantile
_TAIL = 0.99


def blend_live(point: ProfilePoint, latency_ms: float, alpha: float = 0.2) -> ProfilePoint:
    """``point``'s estimates after one live execution that took ``latency_ms`` (pure).

    p50 is an exponentially weighted moving average (weight ``alpha``). p99 is a stochastic quantile
    tracker: a latency above it moves it up by ``alpha`` × 99 % of itself (never past the latency), one
    at or below moves it down by ``alpha`` × 1 %, so it settles where 1 % of executions are slower; it
    never falls below p50. Throughput scales inversely with p50. A point without numbers is returned
    as it is.
    """
    if point.p50_ms is None or point.p99_ms is None or latency_ms < 0:
        return point
    p50 = point.p50_ms + alpha * (latency_ms - point.p50_ms)
    if latency_ms > point.p99_ms:
        p99 = min(latency_ms, point.p99_ms * (1 + alpha * _TAIL))
    else:
        p99 = point.p99_ms * (1 - alpha * (1 - _TAIL))
    throughput = point.throughput
    if throughput is not None and p50 > 0:
        throughput = throughput * point.p50_ms / p50
    return replace(
        point,
        p50_ms=p50,
        p99_ms=max(p99, p50),
        throughput=throughput,
        samples=point.samples + 1,
        source="live",
    )


def _point(row: ModelProfileRow) -> ProfilePoint:
    return ProfilePoint(
        runtime=row.runtime,
        device=row.device,
        batch_size=row.batch_size,
        p50_ms=row.p50_ms,
        p99_ms=row.p99_ms,
        throughput=row.throughput,
        peak_memory_bytes=row.peak_memory_bytes,
        joules_per_inference=row.joules_per_inference,
        energy_source=row.energy_source,
        status=cast(PointStatus, row.status),
        error=row.error,
        artifact=row.artifact,
        samples=row.samples,
        source=cast(PointSource, row.source),
    )


def _key(point: ProfilePoint) -> tuple[str, str, int]:
    return (point.runtime, point.device, point.batch_size)


class ProfileStore:
    """Saves and finds model profiles; every method raises ``StoreUnavailable`` when the store is."""

    def __init__(self, database: Database, *, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.database = database
        self.alpha = alpha

    def save(self, profile: ModelProfile) -> str:
        """Store ``profile`` (its points as ``profiler`` rows); returns the run id. Live estimates of the
        same model, artifact and machine are dropped: the new measurement replaces them."""
        run_id = uuid.uuid4().hex
        rows = [
            self._row(profile, point, run_id, "profiler", profile.measured_at) for point in profile.points
        ]
        try:
            with self.database.session() as session, session.begin():
                session.execute(
                    delete(ModelProfileRow).where(
                        ModelProfileRow.model == profile.model,
                        ModelProfileRow.artifact_digest == profile.artifact_digest,
                        ModelProfileRow.fingerprint == profile.fingerprint,
                        ModelProfileRow.source == "live",
                    )
                )
                session.add_all(rows)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"cannot save the profile: {describe_error(exc)}") from exc
        return run_id

    @staticmethod
    def _row(
        profile: ModelProfile, point: ProfilePoint, run_id: str, source: str, when: datetime
    ) -> ModelProfileRow:
        return ModelProfileRow(
            run_id=run_id,
            model=profile.model,
            version=profile.version,
            artifact=point.artifact,
            artifact_digest=profile.artifact_digest,
            fingerprint=profile.fingerprint,
            runtime=point.runtime,
            device=point.device,
            batch_size=point.batch_size,
            p50_ms=point.p50_ms,
            p99_ms=point.p99_ms,
            throughput=point.throughput,
            peak_memory_bytes=point.peak_memory_bytes,
            joules_per_inference=point.joules_per_inference,
            energy_source=point.energy_source,
            samples=point.samples,
            status=point.status,
            error=point.error,
            source=source,
            measured_at=when,
        )

    def _newest(self, model: str, digest: str | None, fingerprint: str | None) -> ModelProfile | None:
        query = select(ModelProfileRow).where(
            ModelProfileRow.model == model, ModelProfileRow.source == "profiler"
        )
        if digest is not None:
            query = query.where(ModelProfileRow.artifact_digest == digest)
        if fingerprint is not None:
            query = query.where(ModelProfileRow.fingerprint == fingerprint)
        try:
            with self.database.session() as session:
                newest = session.scalars(
                    query.order_by(ModelProfileRow.measured_at.desc(), ModelProfileRow.id.desc()).limit(1)
                ).first()
                if newest is None:
                    return None
                rows = session.scalars(
                    select(ModelProfileRow)
                    .where(ModelProfileRow.run_id == newest.run_id)
                    .order_by(ModelProfileRow.id)
                ).all()
                live = session.scalars(
                    select(ModelProfileRow)
                    .where(
                        ModelProfileRow.model == model,
                        ModelProfileRow.artifact_digest == newest.artifact_digest,
                        ModelProfileRow.fingerprint == newest.fingerprint,
                        ModelProfileRow.source == "live",
                    )
                    .order_by(ModelProfileRow.measured_at, ModelProfileRow.id)
                ).all()
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"cannot read profiles: {describe_error(exc)}") from exc
        overlay = {_key(p): p for p in map(_point, live)}
        points = [overlay.get(_key(p), p) for p in map(_point, rows)]
        return ModelProfile(
            model=model,
            version=newest.version,
            artifact_digest=newest.artifact_digest,
            fingerprint=newest.fingerprint,
            measured_at=as_utc(newest.measured_at),
            points=tuple(points),
        )

    def latest(self, model: str, digest: str, fingerprint: str) -> ModelProfile | None:
        """The newest profile of ``model`` for this artifact on this machine, live estimates applied;
        None when there is none (never profiled, or the artifact or the hardware changed since)."""
        return self._newest(model, digest, fingerprint)

    def newest(self, model: str) -> ModelProfile | None:
        """The newest profile of ``model`` whatever its artifact and machine (to say why one is stale)."""
        return self._newest(model, None, None)

    def staleness(self, model: str, digest: str, fingerprint: str) -> str | None:
        """None when a current profile exists; else why not: never profiled, artifact or hardware changed."""
        if self.latest(model, digest, fingerprint) is not None:
            return None
        newest = self.newest(model)
        if newest is None:
            return "never profiled"
        reasons = []
        if newest.artifact_digest != digest:
            reasons.append(
                f"the artifact changed (profiled {newest.artifact_digest[:12]}, now {digest[:12]})"
            )
        if newest.fingerprint != fingerprint:
            reasons.append("the hardware changed (another machine, device or engine version)")
        return " and ".join(reasons) or "no profile for this artifact on this machine"

    def update_live(
        self,
        model: str,
        runtime: str,
        device: str,
        batch_size: int,
        latency_ms: float | Sequence[float],
        *,
        digest: str | None = None,
        fingerprint: str | None = None,
    ) -> ProfilePoint | None:
        """Fold live executions' latencies (one, or several in the order they ran) into the newest
        profile's point for this runtime, device and batch size (exact batch size only), in one
        transaction; returns the new estimate, or None when there is no such usable point. Call it off
        the event loop (``medserve.hardware.live.LiveProfiles`` batches the calls)."""
        latencies = [latency_ms] if isinstance(latency_ms, int | float) else list(latency_ms)
        profile = self._newest(model, digest, fingerprint)
        if profile is None or not latencies:
            return None
        wanted = (runtime, device, batch_size)
        current = next((p for p in profile.points if _key(p) == wanted and p.usable), None)
        if current is None:
            return None
        updated = current
        for latency in latencies:
            updated = blend_live(updated, float(latency), self.alpha)
        now = datetime.now(UTC)
        conditions = (
            ModelProfileRow.model == model,
            ModelProfileRow.artifact_digest == profile.artifact_digest,
            ModelProfileRow.fingerprint == profile.fingerprint,
            ModelProfileRow.source == "live",
            ModelProfileRow.runtime == runtime,
            ModelProfileRow.device == device,
            ModelProfileRow.batch_size == batch_size,
        )
        try:
            with self.database.session() as session, session.begin():
                session.execute(delete(ModelProfileRow).where(*conditions))
                session.add(self._row(profile, updated, uuid.uuid4().hex, "live", now))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"cannot update the live profile: {describe_error(exc)}") from exc
        return updated
