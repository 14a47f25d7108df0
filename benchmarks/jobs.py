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
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import log, write_section  # noqa: E402

from medserve.core.metrics import ServingMetrics  # noqa: E402
from medserve.core.registry import ModelRegistry  # noqa: E402
from medserve.core.service import InferenceService  # noqa: E402
from medserve.demo.jobs import write_example_jobs  # noqa: E402
from medserve.demo.models.repository import build_example_repository  # noqa: E402
from medserve.jobs.prepare import prepare  # noqa: E402
from medserve.jobs.scoring import CoreScorer  # noqa: E402
from medserve.jobs.spec import load_spec  # noqa: E402
from medserve.jobs.standalone import run_standalone  # noqa: E402
from medserve.jobs.workload import Item  # noqa: E402
from medserve.repository.repository import ModelRepository  # noqa: E402
from medserve.settings import load_settings  # noqa: E402
from medserve.trust import build_trust  # noqa: E402
from medserve.values.access import Caller  # noqa: E402

DEFAULT_REPOSITORY = Path.home() / ".cache" / "medserve" / "bench_repository"
WORKLOADS = ("variant_scoring", "virtual_screening", "operations_forecast")
CHUNK = 16384
MODEL_ROWS = 65536  # featurised rows are repeated up to this many for the raw vs served comparison


@dataclass
class Result:
    workload: str
    model: str
    items: int
    featurise_per_s: float
    raw_best_per_s: float
    raw_best_batch: int
    served_per_s: float
    unaudited_per_s: float
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


class RawModel:
    """ONNX Runtime called directly, with the server's graph optimisation level."""

    def __init__(self, model_path: Path, intra_op_threads: int = 0) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads  # as the model's config.yaml says (0: ORT's default)
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    def rate(self, arrays: dict[str, np.ndarray], batch: int) -> float:
        rows = len(next(iter(arrays.values())))
        started = time.perf_counter()
        for start in range(0, rows, batch):
            self.session.run(None, {name: array[start : start + batch] for name, array in arrays.items()})
        return rows / (time.perf_counter() - started)

    def best_batch(self, arrays: dict[str, np.ndarray]) -> int:
        rates = {batch: max(self.rate(arrays, batch) for _ in range(2)) for batch in (64, 256, 1024, 4096)}
        return max(rates, key=lambda batch: rates[batch])


class ServedModel:
    """The job's scorer through the in-process core (registry, batcher, audit trail)."""

    def __init__(self, repository: Path, data_dir: Path, model: str, *, audit: bool = True) -> None:
        settings = load_settings(None, data_dir=data_dir, repository=repository)
        self.trust = build_trust(settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.registry = ModelRegistry(ModelRepository(repository), ServingMetrics(), self.trust.lineage)
        service = InferenceService(
            self.registry,
            self.trust.authenticator,
            audit=self.trust.audit if audit else None,
            pseudonyms=self.trust.pseudonyms,
        )
        asyncio.run_coroutine_threadsafe(self.registry.load(model), self.loop).result()
        self.batch = max(1, self.registry.get(model).config.max_batch_size)
        self.scorer = CoreScorer(
            service,
            self.loop,
            Caller.system("job:benchmark"),
            model,
            batch_size=self.batch,
            priority_class="bulk",
        )

    def rate(self, arrays: dict[str, np.ndarray]) -> float:
        rows = len(next(iter(arrays.values())))
        started = time.perf_counter()
        pending = None  # as the job runner does: the next chunk is submitted before the last one is awaited
        for start in range(0, rows, CHUNK):
            submitted = self.scorer.submit(
                {name: array[start : start + CHUNK] for name, array in arrays.items()}
            )
            if pending is not None:
                pending.result()
            pending = submitted
        if pending is not None:
            pending.result()
        return rows / (time.perf_counter() - started)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.registry.close(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.trust.close()


def model_bound(
    repository: Path, data_dir: Path, model: str, arrays: dict[str, np.ndarray], rounds: int
) -> tuple[float, int, float, float, int]:
    """Raw at its best batch size, served, and served with the audit trail off, in interleaved rounds
    (the machine is shared: the best round of each is compared). The raw session gets the model's
    configured thread count. Returns (raw/s, raw batch, served/s, served unaudited/s, served batch)."""
    config = yaml.safe_load((repository / model / "config.yaml").read_text())
    threads = int((config.get("runtime_options") or {}).get("intra_op_threads", 0))
    raw = RawModel(repository / model / "1" / "model.onnx", threads)
    batch = raw.best_batch(arrays)
    served = ServedModel(repository, data_dir / "audited", model)
    unaudited = ServedModel(repository, data_dir / "unaudited", model, audit=False)
    try:
        raw_rates, served_rates, unaudited_rates = [], [], []
        for _ in range(rounds):
            raw_rates.append(raw.rate(arrays, batch))
            served_rates.append(served.rate(arrays))
            unaudited_rates.append(unaudited.rate(arrays))
        return max(raw_rates), batch, max(served_rates), max(unaudited_rates), served.batch
    finally:
        served.close()
        unaudited.close()


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
        "| served items/s (batch) | served / raw | without audit: served / raw | whole job items/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.workload} | {r.model} | {r.items} | {r.featurise_per_s:,.0f} | {r.raw_best_per_s:,.0f} "
            f"({r.raw_best_batch}) | {r.served_per_s:,.0f} ({r.served_batch}) | "
            f"**{r.served_per_s / r.raw_best_per_s:.2f}** | {r.unaudited_per_s / r.raw_best_per_s:.2f} "
            f"| {r.job_per_s:,.0f} |"
        )
    lines += [
        "",
        "*served / raw* is the model-bound part (target >= 0.9): the same pre-featurised arrays through the "
        "core (batcher, `bulk` priority class, one audited request per batch) against ONNX Runtime called "
        "directly at its best batch size. *Whole job* includes reading and featurising the source, "
        "committing every chunk to the store and writing the sink; where featurisation is slower than the "
        "model, it bounds the job.",
        "",
        "Reading them: these models are tiny (a batch of 16384 variants takes about 4 ms), so what the core "
        "adds per request (the hop to the event loop and the batcher, the executor thread) and what the "
        "audit trail adds (SHA-256 over every input byte, about 1 GB/s here, plus the record) are a visible "
        "share of the model time; *without audit* isolates the first. Every job batch is audited, as any "
        "other inference. Whole jobs are bound by reading and featurising: RDKit parsing, fingerprints and "
        "the hit list's descriptors (Crippen logP, TPSA) for screening; parsing VCF lines and computing 25 "
        "features in Python for variants.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20000, help="variants and compounds (20000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of raw and served (5)")
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
            rows = len(next(iter(arrays.values())))
            if rows < MODEL_ROWS:  # enough rows for the model-bound comparison to last a while
                arrays = {
                    name: np.concatenate([a] * -(-MODEL_ROWS // rows))[:MODEL_ROWS]
                    for name, a in arrays.items()
                }
            log(f"{workload}: raw model and served through the core, interleaved")
            raw, raw_batch, served, unaudited, served_batch = model_bound(
                repository, root / f"data-{workload}", model, arrays, args.rounds
            )
            log(f"{workload}: whole job")
            job, failed = job_rate(repository, root / f"job-{workload}", spec_path)
            results.append(
                Result(
                    workload,
                    model,
                    items,
                    featurise_per_s,
                    raw,
                    raw_batch,
                    served,
                    unaudited,
                    served_batch,
                    job,
                    failed,
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
