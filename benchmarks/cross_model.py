"""Precedence across models on one device: `stat` requests to one model while another model on the
same CPU is saturated with routine work, with the device arbiter on and off, in one run.

In-process, two ``ServedModel``s of ``chest_xray_classifier`` (DenseNet-121, about 30 ms an image
here), each with its own ONNX Runtime instance, sharing the two cores:

- model *A* (the busy one): a closed loop of ``--concurrency`` routine requests (no deadline to
  miss), batches of at most ``--max-batch``;
- model *B* (the urgent one): Poisson arrivals of ``--stat-rate`` `stat` requests a second with a
  deadline of ``--stat-deadline`` × a lone inference's p50.

*Arbiter on* is the server's default (``cross_model_wait_s`` 0.5 s): A's batches do not start while a
`stat` request waits for B or runs on it. *Arbiter off*: each model's batcher on its own, as before
the arbiter. The two alternate in ``--rounds`` rounds of ``--seconds`` each, so that drift on this
shared machine hits both alike. Reported: B's stat attainment (answered within the deadline / sent)
and latency, and A's throughput. Prints a report and replaces the ``cross-model`` section of
``docs/BENCHMARKS.md``:

    python benchmarks/cross_model.py [--seconds 30] [--rounds 2] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import add_report_arguments, log, machine, run_report  # noqa: E402

from medserve.core.metrics import ServingMetrics  # noqa: E402
from medserve.core.model import ServedModel, load_version  # noqa: E402
from medserve.demo.models.repository import build_example_repository  # noqa: E402
from medserve.repository.config import DynamicBatching  # noqa: E402
from medserve.repository.repository import ModelRepository  # noqa: E402
from medserve.scheduling.arbiter import DEFAULT_MAX_WAIT_S, DeviceArbiter  # noqa: E402
from medserve.scheduling.priority import PriorityClass, PriorityClasses  # noqa: E402
from medserve.values.errors import MedserveError  # noqa: E402
from medserve.values.types import InferenceRequest, Tensor  # noqa: E402

MODEL, INPUT = "chest_xray_classifier", "image"
SHAPE = (1, 1, 224, 224)


@dataclass
class Tally:
    sent: int = 0
    in_time: int = 0
    failed: int = 0
    latency_ms: list[float] = field(default_factory=list)
    busy_done: int = 0
    seconds: float = 0.0

    def add(self, other: Tally) -> None:
        self.sent += other.sent
        self.in_time += other.in_time
        self.failed += other.failed
        self.latency_ms += other.latency_ms
        self.busy_done += other.busy_done
        self.seconds += other.seconds

    @property
    def attainment(self) -> float:
        return self.in_time / self.sent if self.sent else float("nan")


def request(x: np.ndarray, cls: str) -> InferenceRequest:
    return InferenceRequest(MODEL, "", "", [Tensor(INPUT, "FP32", SHAPE, x)], [], {"priority_class": cls})


async def one_round(
    busy: ServedModel, urgent: ServedModel, x: np.ndarray, args: argparse.Namespace, deadline_ms: float
) -> Tally:
    tally = Tally()
    stop = time.perf_counter() + args.seconds
    rng = np.random.default_rng(args.seed)

    async def worker() -> None:
        while time.perf_counter() < stop:
            await busy.infer(request(x, "routine"))
            tally.busy_done += 1

    async def stat() -> None:
        started = time.perf_counter()
        try:
            await urgent.infer(request(x, "stat"))
        except MedserveError:
            tally.failed += 1
            return
        elapsed = (time.perf_counter() - started) * 1e3
        tally.latency_ms.append(elapsed)
        tally.in_time += elapsed <= deadline_ms

    workers = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
    await asyncio.sleep(1.0)  # A saturated before the first stat request
    started = time.perf_counter()
    stats: list[asyncio.Task[None]] = []
    next_at = started
    while True:
        next_at += rng.exponential(1.0 / args.stat_rate)
        if next_at >= stop:
            break
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        tally.sent += 1
        stats.append(asyncio.create_task(stat()))
    await asyncio.gather(*stats, *workers)
    tally.seconds = time.perf_counter() - started
    return tally


async def amain(args: argparse.Namespace, command: str) -> str:
    build_example_repository(args.repository, models=[MODEL])
    base = ModelRepository(args.repository).config(MODEL)
    config = base.model_copy(
        update={
            "max_batch_size": args.max_batch,
            "dynamic_batching": DynamicBatching(max_queue_delay_us=0),
            "runtime_options": {"allow_spinning": False},
        }
    )
    artifact = args.repository / MODEL / "1" / base.artifact
    x = np.random.default_rng(1).random(SHAPE, dtype=np.float32)
    lone = await asyncio.to_thread(load_version, MODEL, 1, config, artifact)
    engine = lone.instances[0]
    times = []
    for k in range(33):
        t0 = time.perf_counter()
        engine.run({INPUT: x}, [o.name for o in lone.outputs])
        if k >= 3:
            times.append((time.perf_counter() - t0) * 1e3)
    single_ms = float(np.median(times))
    engine.unload()
    deadline_ms = args.stat_deadline * single_ms
    classes = PriorityClasses(
        (PriorityClass("stat", 1, deadline_ms), PriorityClass("routine", 3, None)), "routine"
    )
    log(f"lone inference p50 {single_ms:.1f} ms; stat deadline {deadline_ms:.0f} ms")
    results = {"on": Tally(), "off": Tally()}
    for round_ in range(args.rounds):
        for mode in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
            arbiter = DeviceArbiter(DEFAULT_MAX_WAIT_S) if mode == "on" else None
            busy, urgent = [
                ServedModel(
                    await asyncio.to_thread(load_version, MODEL, 1, config, artifact),
                    ServingMetrics(),
                    classes,
                    None,
                    arbiter,
                )
                for _ in range(2)
            ]
            try:
                tally = await one_round(busy, urgent, x, args, deadline_ms)
            finally:
                await busy.close(1.0)
                await urgent.close(1.0)
            log(
                f"round {round_ + 1}, arbiter {mode}: stat {tally.in_time}/{tally.sent} in time, p99 "
                f"{np.percentile(tally.latency_ms, 99) if tally.latency_ms else float('nan'):.0f} ms; "
                f"A {tally.busy_done / tally.seconds:.1f}/s"
            )
            results[mode].add(tally)
    return report(results, args, single_ms, deadline_ms, command)


def report(
    results: dict[str, Tally], args: argparse.Namespace, single_ms: float, deadline_ms: float, command: str
) -> str:
    def pct(t: Tally, q: float) -> str:
        return f"{np.percentile(t.latency_ms, q):.0f}" if t.latency_ms else "–"

    on, off = results["on"], results["off"]
    rows = [
        "| | arbiter on (default) | arbiter off |",
        "|---|---:|---:|",
        f"| **B: stat deadline attainment** | **{on.attainment:.3f}** | **{off.attainment:.3f}** |",
        f"| B: stat sent / in time / refused or dropped | {on.sent} / {on.in_time} / {on.failed} | "
        f"{off.sent} / {off.in_time} / {off.failed} |",
        f"| B: stat latency p50 / p90 / p99, ms | {pct(on, 50)} / {pct(on, 90)} / {pct(on, 99)} | "
        f"{pct(off, 50)} / {pct(off, 90)} / {pct(off, 99)} |",
        f"| A: routine throughput, images/s | {on.busy_done / on.seconds:.1f} | "
        f"{off.busy_done / off.seconds:.1f} |",
    ]
    return "\n".join(
        [
            f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC with `{command}`.",
            f"Machine: {machine()}. In-process (core `ServedModel`s, no transport); the load generator "
            "shares the machine.",
            "",
            f"Two `{MODEL}` models on the same 2-core CPU, one ONNX Runtime instance each (allow_spinning "
            f"false). A lone inference takes {single_ms:.1f} ms (p50). Model A: a closed loop of "
            f"{args.concurrency} routine requests, max batch {args.max_batch}. Model B: Poisson `stat` "
            f"requests, {args.stat_rate:g}/s, deadline {deadline_ms:.0f} ms ({args.stat_deadline:g} × the "
            f"lone inference). {args.rounds} rounds of {args.seconds:g} s per mode, alternating.",
            "",
            *rows,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per mode, alternating")
    parser.add_argument("--concurrency", type=int, default=4, help="model A's closed-loop requests")
    parser.add_argument("--max-batch", type=int, default=2, help="max batch size of both models")
    parser.add_argument("--stat-rate", type=float, default=3.0, help="stat requests per second to B")
    parser.add_argument("--stat-deadline", type=float, default=3.0, help="stat deadline / lone inference p50")
    parser.add_argument("--seed", type=int, default=7)
    add_report_arguments(parser)
    return run_report(
        "cross_model.py", parser, argv, amain, "cross-model", "Precedence across models on one device"
    )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MedserveError as exc:
        sys.exit(f"cross-model benchmark: {exc}")
