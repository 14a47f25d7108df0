"""Offline jobs benchmark: items per second for each example workload, served through the core
against the raw model at its best batch size on the same pre-featurised data, plus the
featurisation rates and whole jobs end to end.

For each workload (variant scoring, virtual screening, operations forecasting):

1. **featurisation**: the workload reads the synthetic example input and featurises it in chunks,
   as a job does (items/s of reading + featurising, no model);
2. **raw**: ONNX Runtime runs the model directly on the pre-featurised arrays at batch sizes
   64…4096; the best is the reference;
3. **served (model-bound)**: the job's scorer sends the same arrays through ``InferenceService`` (the
   batcher, the priority class ``bulk``, the audit trail) at the model's max batch size, chunk by
   chunk; ratio served / raw (target >= 0.9);
4. **job**: the whole job with ``medserve job run`` semantics (read, featurise, score, commit each
   chunk, write the sink), items/s.

``python benchmarks/jobs.py`` prints a markdown report and replaces the jobs section of
``docs/BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import log, write_section  # noqa: E402

from medserve.core.metrics import ServingMetrics  # noqa: E402
from medserve.core.registry import ModelRegistry  # noqa: E402
from medserve.core.service import InferenceService  # noqa: E402
from medserve.examples.repository import build_example_repository  # noqa: E402
from medserve.jobs.examples import write_example_jobs  # noqa: E402
from medserve.jobs.prepare import prepare  # noqa: E402
from medserve.jobs.scoring import CoreScorer  # noqa: E402
from medserve.jobs.spec import load_spec  # noqa: E402
from medserve.jobs.standalone import run_standalone  # noqa: E402
from medserve.jobs.workload import Item  # noqa: E402
from medserve.repository.repository import ModelRepository  # noqa: E402
from medserve.security.access import Caller  # noqa: E402
from medserve.settings import load_settings  # noqa: E402
from medserve.trust import build_trust  # noqa: E402

DEFAULT_REPOSITORY = Path.home() / ".cache" / "medserve" / "bench_repository"
WORKLOADS = ("variant_scoring", "virtual_screening", "operations_forecast")
CHUNK = 4096


@dataclass
class Result:
    workload: str
    model: str
    items: int
    featurise_per_s: float
    raw_best_per_s: float
    raw_best_batch: int
    served_per_s: float
    served_batch: int
    job_per_s: float
    job_failed: int


def featurise_all(spec_path: Path) -> tuple[dict[str, np.ndarray], int, float]:
    spec, workload = prepare(load_spec(spec_path), lambda model: None)
    started = time.perf_counter()
    parts: dict[str, list[np.ndarray]] = {}
    items: list[Item] = []
    seen = 0

    def flush() -> None:
        inputs, kept, _ = workload.featurise(items)
        for name, array in inputs.items():
            parts.setdefault(name, []).append(array)

    for entry in workload.items():
        seen += 1
        if isinstance(entry, Item):
            items.append(entry)
        if len(items) == CHUNK:
            flush()
            items = []
    if items:
        flush()
    elapsed = time.perf_counter() - started
    arrays = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    return arrays, seen, seen / elapsed


def raw_best(model_path: Path, arrays: dict[str, np.ndarray], rounds: int) -> tuple[float, int]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    rows = len(next(iter(arrays.values())))
    best = (0.0, 0)
    for batch in (64, 256, 1024, 4096):
        rates = []
        for _ in range(rounds):
            started = time.perf_counter()
            for start in range(0, rows, batch):
                session.run(None, {name: array[start : start + batch] for name, array in arrays.items()})
            rates.append(rows / (time.perf_counter() - started))
        best = max(best, (max(rates), batch))
    return best


def served_rate(
    repository: Path, data_dir: Path, model: str, arrays: dict[str, np.ndarray], rounds: int
) -> tuple[float, int]:
    settings = load_settings(None, data_dir=data_dir, repository=repository)
    trust = build_trust(settings)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        registry = ModelRegistry(ModelRepository(repository), ServingMetrics(), trust.lineage)
        service = InferenceService(
            registry, trust.authenticator, audit=trust.audit, pseudonyms=trust.pseudonyms
        )
        asyncio.run_coroutine_threadsafe(registry.load(model), loop).result()
        batch = max(1, registry.get(model).config.max_batch_size)
        scorer = CoreScorer(
            service, loop, Caller.system("job:benchmark"), model, batch_size=batch, priority_class="bulk"
        )
        rows = len(next(iter(arrays.values())))
        rates = []
        for _ in range(rounds):
            started = time.perf_counter()
            for start in range(0, rows, CHUNK):
                scorer.score({name: array[start : start + CHUNK] for name, array in arrays.items()})
            rates.append(rows / (time.perf_counter() - started))
        asyncio.run_coroutine_threadsafe(registry.close(), loop).result()
        return max(rates), batch
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        trust.close()


def job_rate(repository: Path, data_dir: Path, spec_path: Path) -> tuple[float, int]:
    settings = load_settings(None, data_dir=data_dir, repository=repository)
    spec = load_spec(spec_path)
    started = time.perf_counter()
    job_id, state = run_standalone(
        settings, spec, out=io.StringIO(), count_first=False, install_signals=False
    )
    elapsed = time.perf_counter() - started
    if state != "succeeded":
        raise RuntimeError(f"the {spec.workload} job ended {state}")
    from medserve.jobs.store import JobStore
    from medserve.trust import open_database

    database = open_database(settings)
    status = JobStore(database).get(job_id)
    database.dispose()
    return (status.items_done + status.items_failed) / elapsed, status.items_failed


def report(results: list[Result], items: int, command: str) -> str:
    lines = [
        f"Command: `{command}`. Synthetic example inputs ({items} variants, {items} compounds, "
        "three years of daily data for the example sites); one process, ONNX Runtime on the CPU.",
        "",
        "| workload | model | items | featurisation items/s | raw best items/s (batch) "
        "| served items/s (batch) | served / raw | whole job items/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.workload} | {r.model} | {r.items} | {r.featurise_per_s:,.0f} | {r.raw_best_per_s:,.0f} "
            f"({r.raw_best_batch}) | {r.served_per_s:,.0f} ({r.served_batch}) | "
            f"**{r.served_per_s / r.raw_best_per_s:.2f}** | {r.job_per_s:,.0f} |"
        )
    lines += [
        "",
        "*served / raw* is the model-bound part (target >= 0.9): the same pre-featurised arrays through the "
        "core (batcher, `bulk` priority class, one audited request per batch) against ONNX Runtime called "
        "directly at its best batch size. *Whole job* includes reading and featurising the source, "
        "committing every chunk to the store and writing the sink; where featurisation is slower than the "
        "model, it bounds the job.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20000, help="variants and compounds (20000)")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of the raw and served runs (3)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--repository", type=Path, help=f"model repository (default {DEFAULT_REPOSITORY})")
    parser.add_argument("--output", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only; leave --output alone")
    args = parser.parse_args(argv)
    repository = args.repository or DEFAULT_REPOSITORY
    build_example_repository(
        repository, models=["variant_scorer", "solubility_predictor", "occupancy_forecaster"]
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="medserve-jobs-bench-") as scratch:
        root = Path(scratch)
        log(f"writing example inputs ({args.items} items)")
        write_example_jobs(root / "examples", items=args.items)
        for workload in args.workloads:
            spec_path = root / "examples" / f"{workload}.yaml"
            model = load_spec(spec_path).model
            log(f"{workload}: featurising")
            arrays, items, featurise_per_s = featurise_all(spec_path)
            log(f"{workload}: raw model")
            raw, raw_batch = raw_best(repository / model / "1" / "model.onnx", arrays, args.rounds)
            log(f"{workload}: served through the core")
            served, served_batch = served_rate(
                repository, root / f"data-{workload}", model, arrays, args.rounds
            )
            log(f"{workload}: whole job")
            job, failed = job_rate(repository, root / f"job-{workload}", spec_path)
            results.append(
                Result(
                    workload, model, items, featurise_per_s, raw, raw_batch, served, served_batch, job, failed
                )
            )
            log(f"{workload}: served/raw {served / raw:.2f}, job {job:,.0f} items/s")
    command = "python benchmarks/jobs.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    body = report(results, args.items, command.strip())
    print(body)
    if not args.no_write:
        write_section(args.output, body, key="jobs", title="Offline jobs: items per second, served vs raw")
    return 0


if __name__ == "__main__":
    sys.exit(main())
