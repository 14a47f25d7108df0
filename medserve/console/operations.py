"""The Jobs and Imaging pages and the result viewer."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path
from typing import Any

from medserve.console.map_overlay import MapImage, render_map_overlay
from medserve.console.parts import ConsoleParts
from medserve.console.viewer import SliceImage, render_seg_slice, sr_findings
from medserve.values.access import Action, Caller
from medserve.values.errors import ModelNotFound, Unsupported


async def jobs(parts: ConsoleParts, caller: Caller) -> dict[str, Any]:
    if parts.jobs is None:
        raise Unsupported("this server runs no jobs")
    recent = await parts.jobs.recent(caller, 100)
    return {"jobs": recent, "manage": caller.principal.may(Action.MANAGE)}


async def failures_csv(parts: ConsoleParts, caller: Caller, job_id: str) -> str:
    """A job's item failures as CSV (index, locator, reason), at most 100 000 rows."""
    if parts.jobs is None:
        raise Unsupported("this server runs no jobs")
    rows = await parts.jobs.failures(job_id, caller, 0, 100_000)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["index", "locator", "reason"])
    for failure in rows:
        writer.writerow([failure.index, failure.locator, failure.reason])
    return out.getvalue()


def _imaging(parts: ConsoleParts) -> Any:
    if parts.imaging is None:
        raise Unsupported("imaging is not running on this server")
    return parts.imaging


async def imaging(parts: ConsoleParts, caller: Caller) -> dict[str, Any]:
    """The studies with only the series the caller may see, as ``/dicom/studies`` lists them."""
    caller.principal.require(Action.READ)
    studies = await asyncio.to_thread(_imaging(parts).visible_studies, caller.principal)
    return {"studies": studies[-50:][::-1], "manage": caller.principal.may(Action.MANAGE)}


async def _visible_result(
    parts: ConsoleParts, caller: Caller, result_id: str, kind: str = ""
) -> tuple[Path, dict[str, Any]]:
    """The file of result ``result_id`` (of ``kind`` when given) and its series as ``/dicom/series``
    shows it to the caller: a result of a series the caller may not see is not found, one of a
    model it has no grant for is refused."""
    caller.principal.require(Action.READ)
    service = _imaging(parts)
    found = await asyncio.to_thread(service.result_file, result_id)
    names = {"seg": "segmentation", "pm": "explanation map"}
    missing = ModelNotFound(f"no {names.get(kind, 'imaging')} result {result_id}")
    if found is None or (kind and found[0] != kind):
        raise missing
    _, path, series_uid = found
    studies = await asyncio.to_thread(service.visible_studies, caller.principal, None, series_uid)
    if not studies:
        raise missing
    series: dict[str, Any] = studies[0]["series"][0]
    mine = next((r for r in series["results"] if r["id"] == result_id), None)
    if mine is None:
        raise missing
    caller.principal.require(Action.READ, str(mine["model"]))
    readable = [r for r in series["results"] if caller.principal.may(Action.READ, str(r["model"]))]
    return path, {**series, "results": readable}


async def result(parts: ConsoleParts, caller: Caller, result_id: str) -> dict[str, Any]:
    """A result and its series' other results the caller may read: the SEG to view, the SR's findings."""
    _, series = await _visible_result(parts, caller, result_id)
    results = series["results"]
    seg = next((r for r in results if r["kind"] == "seg"), None)
    sr = next((r for r in results if r["kind"] == "sr"), None)
    findings = []
    if sr is not None:
        sr_file = await asyncio.to_thread(_imaging(parts).result_file, sr["id"])
        if sr_file is not None and sr_file[1].is_file():
            findings = await asyncio.to_thread(sr_findings, sr_file[1])
    maps = [r for r in results if r["kind"] == "pm"]
    return {"id": result_id, "series": series, "seg": seg, "sr": sr, "findings": findings, "maps": maps}


async def slice_image(parts: ConsoleParts, caller: Caller, result_id: str, index: int | None) -> SliceImage:
    path, series = await _visible_result(parts, caller, result_id, "seg")
    service = _imaging(parts)
    sources = await asyncio.to_thread(service.store.instance_paths, series["series_instance_uid"])
    return await asyncio.to_thread(render_seg_slice, path, sources, index)


async def map_image(parts: ConsoleParts, caller: Caller, result_id: str, overlay: bool) -> MapImage:
    """The source image of explanation map ``result_id`` with the map over it (``overlay``) or not."""
    path, series = await _visible_result(parts, caller, result_id, "pm")
    service = _imaging(parts)
    sources = await asyncio.to_thread(service.store.instance_paths, series["series_instance_uid"])
    return await asyncio.to_thread(render_map_overlay, path, sources, overlay)
