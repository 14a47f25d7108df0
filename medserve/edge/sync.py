"""The edge's side of model distribution: pull the group's signed manifest, download what is new,
verify digest and signature against the trusted keys, install it as a new immutable version and serve
it. Anything that fails to verify is refused (logged, audited, reported to the hub) and the version
serving before keeps serving; so does everything while the hub cannot be reached."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medserve.core.service import InferenceService
from medserve.edge.client import HubClient, HubRefused, HubUnreachable
from medserve.edge.manifest import Release, verify_manifest
from medserve.edge.uplink import AlertSource, UplinkOutbox, read_state, write_state
from medserve.security.signing import TrustedKeys, signature_path
from medserve.store.database import Database
from medserve.values.access import Caller
from medserve.values.audit_event import AuditEvent
from medserve.values.digest import sha256_file
from medserve.values.errors import MedserveError, ModelLoadError

log = logging.getLogger(__name__)

MAX_ARTIFACT_BYTES = 8 << 30
STAGING = ".edge-staging"  # under the repository; names starting with "." are not models


@dataclass(frozen=True, slots=True)
class EdgeIdentity:
    edge: str  # this edge's name at the hub (its token's name or its certificate's CN)
    group: str
    repository: Path


class EdgeSync:
    def __init__(
        self,
        service: InferenceService,
        database: Database,
        client: HubClient,
        keys: TrustedKeys,
        outbox: UplinkOutbox,
        identity: EdgeIdentity,
        interval_s: float,
    ) -> None:
        self._service = service
        self._db = database
        self._client = client
        self._keys = keys
        self._outbox = outbox
        self.identity = identity
        self.interval_s = interval_s
        self.reachable: bool | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # -- state -------------------------------------------------------------------------------------
    def serving(self) -> dict[str, list[str]]:
        entries = self._service.repository_index(True, Caller.system())
        found: dict[str, list[str]] = {}
        for entry in entries:
            found.setdefault(entry.name, []).append(entry.version)
        return found

    def _state(self) -> dict[str, Any]:
        with self._db.session() as s:
            return read_state(s, "sync")

    def _save(self, value: dict[str, Any]) -> None:
        with self._db.session() as s, s.begin():
            write_state(s, "sync", value)

    async def status(self) -> dict[str, Any]:
        state = await asyncio.to_thread(self._state)
        return {
            "edge": self.identity.edge,
            "group": self.identity.group,
            "hub": self._client.link.url,
            "hub_reachable": self.reachable,
            "last_sync_at": state.get("last_sync_at", ""),
            "last_attempt_at": state.get("last_attempt_at", ""),
            "last_error": state.get("last_error", ""),
            "refused": state.get("refused", []),
            "versions": self.serving(),
            "backlog": await asyncio.to_thread(self._outbox.backlog),
        }

    # -- one sync --------------------------------------------------------------------------------
    async def sync(self) -> dict[str, Any]:
        """Pull, verify and install; returns what changed, what was refused and the versions serving."""
        async with self._lock:
            return await self._sync()

    async def _sync(self) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        state = await asyncio.to_thread(self._state)
        state["last_attempt_at"] = now
        report: dict[str, Any] = {"installed": [], "refused": [], "error": ""}
        try:
            backlog = await asyncio.to_thread(self._outbox.backlog)
            status = {"versions": self.serving(), "backlog": backlog, "refused": state.get("refused", [])}
            document = await self._client.sync(status)
            self.reachable = True
            self._outbox.wake()  # the hub answers: what waited for it goes now
        except (HubUnreachable, HubRefused) as exc:
            self.reachable = not isinstance(exc, HubUnreachable)
            state["last_error"] = report["error"] = str(exc)
            log.warning("edge sync: %s; serving what is installed", exc)
            await asyncio.to_thread(self._save, state)
            report["versions"] = self.serving()
            return report
        try:
            releases = verify_manifest(document, self._keys, self.identity.group)
        except ModelLoadError as exc:
            await self._refuse("manifest", 0, str(exc), report)
            releases = []
        for release in releases:
            try:
                if await self._install(release):
                    report["installed"].append({"model": release.model, "version": release.version})
            except (ModelLoadError, HubRefused) as exc:
                await self._refuse(release.model, release.version, str(exc), report)
            except HubUnreachable as exc:
                report["error"] = str(exc)
                self.reachable = False
            except MedserveError as exc:
                await self._refuse(release.model, release.version, str(exc), report)
        if report["installed"] and not report["error"]:  # the hub's view follows at once
            await self._report(state, report)
        state["last_attempt_at"] = now
        if not report["error"]:
            state["last_sync_at"] = now
        state["last_error"] = report["error"]
        if report["refused"]:
            state["refused"] = (state.get("refused", []) + report["refused"])[-20:]
        await asyncio.to_thread(self._save, state)
        report["versions"] = self.serving()
        return report

    async def _report(self, state: dict[str, Any], report: dict[str, Any]) -> None:
        backlog = await asyncio.to_thread(self._outbox.backlog)
        refused = (state.get("refused", []) + report["refused"])[-20:]
        try:
            await self._client.sync({"versions": self.serving(), "backlog": backlog, "refused": refused})
        except (HubUnreachable, HubRefused) as exc:
            log.info("edge sync: the report after installing did not reach the hub: %s", exc)

    async def _refuse(self, model: str, version: int, why: str, report: dict[str, Any]) -> None:
        log.error("edge sync refused %s version %s: %s", model, version, why)
        at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        refusal = {"model": model, "version": version, "reason": why[:1000], "at": at}
        report["refused"].append(refusal)
        await self._service.record(
            AuditEvent(
                event="edge.refused",
                principal="medserve",
                door="system",
                model=model if model != "manifest" else "",
                model_version=str(version or ""),
                status="ModelLoadError",
                detail=why[:1000],
            )
        )
        key = f"alert:refused:{model}:{version}:{uuid.uuid4().hex[:12]}"
        payload = {"what": "edge.refused", "edge": self.identity.edge, **refusal}
        await asyncio.to_thread(self._outbox.enqueue, "alert", key, payload)
        self._outbox.wake()

    async def _install(self, release: Release) -> bool:
        """Make ``release`` the version serving; True when anything changed."""
        model_dir = self.identity.repository / release.model
        version_dir = model_dir / str(release.version)
        artifact = version_dir / release.artifact
        if artifact.is_file():
            found = await asyncio.to_thread(sha256_file, artifact)
            if found != release.digest:
                raise ModelLoadError(
                    f"installed artifact {artifact} has digest {found}, the hub's release says "
                    f"{release.digest}; it changed on this edge after install"
                )
        else:
            await self._download(release, version_dir)
        config = model_dir / "config.yaml"
        if not config.is_file() or config.read_text(encoding="utf-8") != release.config:
            staging = config.with_name(f".config.{uuid.uuid4().hex}")
            staging.write_text(release.config, encoding="utf-8")
            staging.replace(config)
        if self.serving().get(release.model) == [str(release.version)]:
            return False
        caller = Caller.system("edge")
        await self._service.rollback_model(release.model, caller, version=release.version)
        await self._service.record(
            AuditEvent(
                event="edge.install",
                principal="medserve",
                door="system",
                model=release.model,
                model_version=str(release.version),
                model_digest=release.digest,
                detail=f"group {self.identity.group}; published by {release.published_by} "
                f"at {release.published_at}",
            )
        )
        log.info("edge: serving %s version %s (sha256 %s)", release.model, release.version, release.digest)
        return True

    async def _download(self, release: Release, version_dir: Path) -> None:
        """Download into a staging folder, verify, then move the version folder into place."""
        staging = self.identity.repository / STAGING / uuid.uuid4().hex
        staging.mkdir(parents=True)
        try:
            target = staging / release.artifact
            digest = await self._client.download(release.model, release.version, target, MAX_ARTIFACT_BYTES)
            if digest != release.digest:
                raise ModelLoadError(
                    f"downloaded artifact has digest {digest}, the signed manifest says {release.digest}; "
                    "refused (tampered or corrupted)"
                )
            sig = signature_path(target)
            sig.write_text(json.dumps(release.signature, indent=2) + "\n", encoding="utf-8")
            self._keys.verify(sig, digest)
            try:
                version_dir.parent.mkdir(parents=True, exist_ok=True)
                staging.replace(version_dir)
            except OSError as exc:  # e.g. a folder of that version left without its artifact
                raise ModelLoadError(f"cannot install into {version_dir}: {exc.strerror or exc}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def watch_alerts(self, source: AlertSource) -> None:
        """Send the ward alerts ``source`` lists up to the hub too (each once)."""
        self._outbox.alert_source = source

    # -- schedule --------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception:
                log.exception("edge sync failed")
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        """Pull on a schedule and deliver uplinks, from now on."""
        self._task = asyncio.get_running_loop().create_task(self.run())
        self._outbox.start()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._outbox.stop()
        await self._client.close()
