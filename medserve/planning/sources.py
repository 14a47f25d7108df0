"""Where the planner's measurements come from: the newest stored profile of each model (this
machine's, or another's sharing the store) and each model's batching from its config.yaml; and an
example plan for a repository's models."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from medserve.hardware.profile import ModelProfile
from medserve.hardware.profile_store import ProfileStore
from medserve.planning.inputs import BatchSettings
from medserve.repository.repository import ModelRepository
from medserve.store.database import Database
from medserve.values.errors import MedserveError


def stored_profiles(database: Database, models: Iterable[str]) -> dict[str, ModelProfile]:
    """The newest profile of each of ``models`` that has one."""
    store = ProfileStore(database)
    found = {}
    for model in sorted(set(models)):
        profile = store.newest(model)
        if profile is not None:
            found[model] = profile
    return found


def repository_batching(
    repository: Path, models: Iterable[str]
) -> tuple[dict[str, BatchSettings], list[str]]:
    """Each model's batching from its config.yaml, and a note for each model whose config cannot be
    read (the planner then assumes no batching for it)."""
    repo = ModelRepository(repository)
    settings: dict[str, BatchSettings] = {}
    notes = []
    for model in sorted(set(models)):
        try:
            config = repo.config(model)
        except MedserveError as exc:
            notes.append(f"{model}: batching unknown ({exc}); planned without batching")
            continue
        batching = config.dynamic_batching
        settings[model] = BatchSettings(
            max(1, config.max_batch_size),
            batching.max_queue_delay_us / 1e6 if batching else 0.0,
            tuple(batching.preferred_batch_sizes) if batching else (),
        )
    return settings, notes


_DEMANDS = {
    "chest_xray_classifier": (
        "chest X-rays",
        "studies_per_day: 3000\n    profile: daytime\n    class: urgent\n    slo_p99_ms: 5000",
    ),
    "ct_lesion_segmentation": (
        "CT lesion segmentation (patches)",
        "studies_per_day: 400\n    requests_per_study: 200\n    profile: daytime\n    class: routine\n"
        "    slo_p99_ms: 30000",
    ),
    "ecg_rhythm_classifier": (
        "ward ECG (a window every 2 s)",
        "beds: 300\n    requests_per_bed_per_hour: 1800\n    class: stat\n    slo_p99_ms: 1000",
    ),
    "variant_scorer": ("nightly variant scoring", "job_items: 2000000\n    batch: 4096\n    window: [0, 6]"),
}


def example_plan(models: Iterable[str]) -> str:
    """A plan file for ``models``: a day of a mid-sized hospital for the example models among them
    (one request a second for each model when there are none); this machine (measured) against a
    spec-sheet GPU server."""
    names = sorted(set(models))
    known = [m for m in names if m in _DEMANDS]
    lines = ["workload:"]
    for model in known or names:
        name, body = _DEMANDS.get(model, (model, "requests_per_second: 1\n    slo_p99_ms: 1000"))
        lines += [f"  - name: {name}", f"    model: {model}", f"    {body}"]
    lines += [
        "servers:",
        "  - name: this machine (measured)",
        "    devices: {cpu: 1}",
        "    capex: 6000",
        "    life_years: 5",
        "    idle_watts: 60",
        "  - name: GPU server (spec sheet)",
        "    devices: {cuda: 1}",
        "    capex: 35000",
        "    life_years: 5",
        "    idle_watts: 150",
        "    profiles: none",
        "    spec_sheet:",
        "      default: {from_device: cpu, speedup: 12, watts: 300}",
        "economics:",
        "  electricity_per_kwh: 0.25",
        "  currency: EUR",
        "  import_tariffs: [0, 0.25]",
        "request_overhead_ms: 1.0",
        "",
    ]
    return "\n".join(lines)
