"""Per-runtime throughput and p99 latency of ``chest_xray_classifier`` on this machine's CPU.

The trained example's ONNX file is written in every engine's format from the same weights
(:func:`medserve.demo.models.runtime_artifacts.write_runtime_variants`: TorchScript ``.pt`` and
``torch.export`` ``.pt2`` through the ONNX-to-torch converter, OpenVINO IR), once, into a cache
folder. Each runtime is loaded through medserve's own runtime class with its default options (one
instance, the engine's default threads), checked against ONNX Runtime's outputs, and run back to back
on random images at each batch size for ``--seconds``. Each engine runs in a process of its own (the
spinning worker threads of one engine would slow the next), and the runtimes take turns in
``--rounds`` rounds so that drift on a shared machine hits all of them alike (the median is kept).
Prints a markdown table and replaces the ``runtimes`` section of ``docs/BENCHMARKS.md``:

    python benchmarks/runtimes.py [--seconds 2] [--rounds 3] [--batch-sizes 1 2 4 8] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import DEFAULT_REPOSITORY, machine, write_section  # noqa: E402

from medserve.demo.models.repository import build_example_repository  # noqa: E402
from medserve.hardware.profiler import summarise  # noqa: E402
from medserve.runtimes import Runtime, runtime_class  # noqa: E402

MODEL, INPUT, OUTPUT = "chest_xray_classifier", "image", "probabilities"
SHAPE = (1, 224, 224)
VARIANTS_ROOT = Path.home() / ".cache" / "medserve" / "bench_variants"


@dataclass(frozen=True)
class Engine:
    label: str
    runtime: str
    variant: str  # key of write_runtime_variants' result
    options: dict[str, Any]


ENGINES = (
    Engine("ONNX Runtime", "onnxruntime", "onnx", {}),
    Engine("torch, TorchScript (.pt)", "torch", "torchscript", {}),
    Engine("torch, torch.export (.pt2)", "torch", "torch_export", {}),
    Engine("OpenVINO IR, LATENCY hint", "openvino", "openvino", {}),
    Engine("OpenVINO IR, THROUGHPUT hint", "openvino", "openvino", {"performance_hint": "THROUGHPUT"}),
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def variants(onnx_file: Path) -> dict[str, Path]:
    """The model in every engine's format, cached by the ONNX file's digest."""
    from medserve.demo.models.runtime_artifacts import openvino_available, write_runtime_variants

    digest = hashlib.sha256(onnx_file.read_bytes()).hexdigest()[:16]
    folder = VARIANTS_ROOT / digest
    done = folder / "complete"
    names = {
        "onnx": "model.onnx",
        "torchscript": "model.pt",
        "torch_export": "model.pt2",
        "openvino": "model.xml",
    }
    if not done.exists():
        log(f"writing {onnx_file.name} in every engine's format into {folder} (once)")
        write_runtime_variants(onnx_file, folder, openvino=openvino_available())
        done.write_text("ok")
    return {key: folder / name for key, name in names.items() if (folder / name).exists()}


def measure(
    instance: Runtime, batch: int, seconds: float, rng: np.random.Generator
) -> tuple[float, float, float, int]:
    """p50 ms, p99 ms, images/s and number of runs of back-to-back runs at ``batch``."""
    x = rng.random((batch, *SHAPE), dtype=np.float32)
    for _ in range(2):
        instance.run({INPUT: x}, [OUTPUT])
    samples: list[int] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < 5 or time.perf_counter() < deadline:
        started = time.perf_counter_ns()
        instance.run({INPUT: x}, [OUTPUT])
        samples.append(time.perf_counter_ns() - started)
    p50, p99, throughput = summarise(samples, batch)
    return p50, p99, throughput, len(samples)


def worker(label: str, artifact: Path, batch_sizes: list[int], seconds: float) -> dict[str, Any]:
    """In a process of its own: load one engine, measure every batch size, return JSON-able results."""
    engine = next(e for e in ENGINES if e.label == label)
    instance = runtime_class(engine.runtime)(artifact, {"device": "cpu", **engine.options})
    instance.load()
    rng = np.random.default_rng(0)
    probe = rng.random((2, *SHAPE), dtype=np.float32)
    outputs = instance.run({INPUT: probe}, [OUTPUT])[OUTPUT]
    cells = {str(b): measure(instance, b, seconds, rng) for b in batch_sizes}
    described = {k: str(v) for k, v in instance.describe().items()}
    instance.unload()
    return {"cells": cells, "outputs": outputs.tolist(), "describe": described}


def run_worker(label: str, artifact: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        label,
        "--artifact",
        str(artifact),
        "--seconds",
        str(args.seconds),
        "--batch-sizes",
        *map(str, args.batch_sizes),
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="measured seconds per runtime and batch size"
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--rounds", type=int, default=3, help="turns of every runtime")
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--output", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--artifact", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.artifact, args.batch_sizes, args.seconds)))
        return 0
    command = "python benchmarks/runtimes.py " + shlex.join(argv if argv is not None else sys.argv[1:])

    build_example_repository(args.repository, models=[MODEL])
    files = variants(args.repository / MODEL / "1" / "model.onnx")
    labels: list[str] = []
    notes: list[str] = []
    for engine in ENGINES:
        if engine.variant in files:
            labels.append(engine.label)
        else:
            notes.append(f"{engine.label}: not measured ({engine.variant} artifact unavailable)")
    artifact = {e.label: files[e.variant] for e in ENGINES if e.label in labels}
    rounds: dict[tuple[str, int], list[tuple[float, float, float, int]]] = {}
    outputs: dict[str, np.ndarray] = {}
    described: dict[str, dict[str, str]] = {}
    load_before = os.getloadavg()[0]
    for round_no in range(args.rounds):
        for label in labels:
            result = run_worker(label, artifact[label], args)
            outputs[label] = np.asarray(result["outputs"], dtype=np.float32)
            described[label] = result["describe"]
            for batch in args.batch_sizes:
                p50, p99, throughput, runs = result["cells"][str(batch)]
                rounds.setdefault((label, batch), []).append((p50, p99, throughput, runs))
                log(
                    f"round {round_no + 1} {label} batch {batch}: {throughput:.1f} images/s, "
                    f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({runs} runs)"
                )
    load_after = os.getloadavg()[0]
    diffs = {label: float(np.max(np.abs(outputs[label] - outputs["ONNX Runtime"]))) for label in labels}
    # per cell, the round with the median throughput (its p99 alongside)
    results = {key: sorted(cells, key=lambda c: c[2])[len(cells) // 2] for key, cells in rounds.items()}
    spread = {key: (min(c[2] for c in cells), max(c[2] for c in cells)) for key, cells in rounds.items()}
    instances = labels

    header = (
        "| runtime | "
        + " | ".join(f"batch {b}: images/s (p99 ms)" for b in args.batch_sizes)
        + " | max abs diff vs ORT |"
    )
    lines = [header, "|---|" + "---:|" * (len(args.batch_sizes) + 1)]
    for label in instances:
        cells = [
            f"{results[label, b][2]:.1f} ({results[label, b][1]:.0f}) "
            f"[{spread[label, b][0]:.0f}–{spread[label, b][1]:.0f}]"
            for b in args.batch_sizes
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {diffs[label]:.1e} |")
    best = {b: max(instances, key=lambda label: results[label, b][2]) for b in args.batch_sizes}
    details = "; ".join(
        f"{label}: "
        + ", ".join(
            f"{k} {v}"
            for k, v in d.items()
            if k
            in ("format", "precision", "threads", "providers", "performance_hint", "device", "num_requests")
        )
        for label, d in described.items()
    )
    body = "\n".join(
        [
            f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC with `{command}`.",
            f"Machine: {machine()}.",
            "",
            f"`{MODEL}` (DenseNet-121, FP32 1×224×224 in, 14 out), the same trained weights in each format "
            "(TorchScript and torch.export through the ONNX-to-torch converter, OpenVINO IR FP32); one "
            "instance through medserve's runtime class with its default options and the engine's default "
            "threads, each engine in a process of its own (no other engine's threads about); back-to-back "
            f"runs for {args.seconds:g} s per cell; runtimes take turns, "
            f"{args.rounds} rounds. Cells: median throughput over the rounds (p99 of that round) "
            f"[lowest–highest throughput]. 1-minute load average {load_before:.2f} before, "
            f"{load_after:.2f} after.",
            "",
            *lines,
            "",
            "Fastest per batch size: " + ", ".join(f"batch {b}: {label}" for b, label in best.items()) + ".",
            "",
            f"Engine settings reported: {details}." if details else "",
            *(f"- {note}" for note in notes),
        ]
    )
    print(body)
    if not args.no_write:
        write_section(args.output, body, "runtimes", "Runtimes on this CPU: chest_xray_classifier")
    return 0


if __name__ == "__main__":
    sys.exit(main())
