"""docs/COMPATIBILITY.md names every protocol extension of Triton with its status and reason, and the
extensions the server metadata advertises are exactly those it marks supported."""

from __future__ import annotations

import re
from pathlib import Path

from medserve.core.service import EXTENSIONS

DOC = Path(__file__).resolve().parents[2] / "docs" / "COMPATIBILITY.md"

#: Triton's protocol extensions (its server metadata's names) and the KServe V2 features besides.
TRITON_EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "sequence",
    "system_shared_memory",
    "cuda_shared_memory",
    "statistics",
    "trace",
    "logging",
    "parameters",
    "generate",
)
PROTOCOL_FEATURES = (
    "server live / ready",
    "server metadata",
    "model ready / metadata",
    "inference, JSON tensors",
    "streaming inference",
    "model versions in the path",
    "requested outputs",
    "request `id`",
    "request cancellation",
    "decoupled models",
    "Prometheus metrics",
    "KServe V1 protocol",
)


def _table(title: str) -> dict[str, list[str]]:
    text = DOC.read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


def test_every_triton_extension_has_a_status_and_a_reason() -> None:
    rows = _table("Extensions")
    named = {name: cells for key, cells in rows.items() for name in re.findall(r"`([^`]+)`", key)}
    for extension in TRITON_EXTENSIONS:
        assert extension in named, f"{extension} is missing from the Extensions table"
        status, why = named[extension][0], named[extension][-1]
        assert status and why, extension
    supported = {name for name, cells in named.items() if cells[0].startswith("supported")}
    assert supported & set(TRITON_EXTENSIONS) == set(EXTENSIONS), "server metadata and the table disagree"


def test_every_protocol_feature_is_listed_with_reasons_for_what_is_missing() -> None:
    rows = _table("Protocol features")
    for feature in PROTOCOL_FEATURES:
        found = [cells for key, cells in rows.items() if key.startswith(feature)]
        assert found, f"{feature} is missing from the Protocol features table"
        rest, grpc, notes = found[0]
        if "not supported" in (rest + grpc):
            assert notes, f"{feature}: not supported without a reason"


def test_cuda_shared_memory_is_stated_as_refused_with_its_reason() -> None:
    (cuda,) = [cells for key, cells in _table("Extensions").items() if "`cuda_shared_memory`" in key]
    assert cuda[0] == "not supported on this build"
    for words in ("501", "UNIMPLEMENTED", "not supported by this server; use system shared memory"):
        assert words in cuda[1], words
    assert "cuda_shared_memory" not in EXTENSIONS
