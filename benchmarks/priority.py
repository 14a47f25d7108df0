"""Mixed-priority overload: the SLO-aware scheduler against plain FIFO batching, in one run.

In-process, on the core ``ServedModel`` of ``chest_xray_classifier`` (DenseNet-121, about 30 ms an
image on this CPU): the model's compute dominates, and the HTTP/gRPC doors would only add a constant
per request and a client process competing for the same two cores. For each scheduler:

1. *capacity*: after ``--warmup`` s, a closed loop of ``4 × max batch`` requests saturates the model for
   ``--capacity-seconds``, before the overload and again after it; capacity is the highest of these two
   completion rates and of the rate of answers during the overload (on a shared machine the less
   disturbed measurement; the same batching configuration throughout);
2. *overload*: open-loop Poisson arrivals at ``--load`` × capacity for ``--seconds``; ``--stat`` of
   them (10 %) are class ``stat`` with a deadline of ``--stat-deadline`` × a lone inference's p50, the
   rest ``routine`` with a deadline of ``--routine-deadline-s``.

*SLO-aware*: the server's scheduler: classes with those deadlines, strict precedence, EDF, admission
control and the deadline-bounded batches of :mod:`medserve.scheduling`. *FIFO*: the same batcher with
one class and no deadlines (arrival order, nothing refused, nothing dropped); the deadlines are only
scored. Stat attainment: stat requests answered within their deadline / stat requests sent (refused
ones count as misses). Goodput: requests of either class answered within their deadline per second,
over the arrival window, divided by the capacity. Prints a report and replaces the ``priority`` section
of ``docs/BENCHMARKS.md``:

    python benchmarks/priority.py [--seconds 60] [--max-batch 1 2] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import add_report_arguments, machine, run_report  # noqa: E402

from medserve.core.metrics import ServingMetrics  # noqa: E402
from medserve.core.model import LoadedVersion, ServedModel, load_version  # noqa: E402
from medserve.demo.models.repository import build_example_repository  # noqa: E402
from medserve.repository.config import DynamicBatching  # noqa: E402
from medserve.repository.repository import ModelRepository  # noqa: E402
from medserve.scheduling.priority import PriorityClass, PriorityClasses  # noqa: E402
from medserve.values.errors import DeadlineExceeded, MedserveError, Overloaded  # noqa: E402
from medserve.values.types import InferenceRequest, Tensor  # noqa: E402

MODEL, INPUT = "chest_xray_classifier", "image"
SHAPE = (1, 1, 224, 224)
STAT_TARGET, GOODPUT_TARGET = 0.99, 0.9


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Outcomes:
    sent: dict[str, int] = field(default_factory=lambda: {"stat": 0, "routine": 0})
    in_time: dict[str, int] = field(default_factory=lambda: {"stat": 0, "routine": 0})
    late: dict[str, int] = field(default_factory=lambda: {"stat": 0, "routine": 0})
    refused: dict[str, int] = field(default_factory=lambda: {"stat": 0, "routine": 0})
    expired: dict[str, int] = field(default_factory=lambda: {"stat": 0, "routine": 0})
    unfinished: dict[str, int] = field(default_factory=lambda: {"stat": 0, "routine": 0})
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: {"stat": [], "routine": []})
    answered_at: list[tuple[float, bool]] = field(default_factory=list)  # (perf_counter s, in time)
    window: tuple[float, float] = (0.0, 0.0)

    def per_s(self, in_time_only: bool) -> float:
        """Answers completed within the arrival window per second (only those in time, or all)."""
        begin, end = self.window
        count = sum(1 for t, ok in self.answered_at if begin <= t <= end and (ok or not in_time_only))
        return count / (end - begin)


@dataclass(frozen=True)
class Run:
    name: str
    max_batch: int
    capacity: float
    outcomes: Outcomes
    window_s: float
    avg_batch: float

    def attainment(self, cls: str) -> float:
        sent = self.outcomes.sent[cls]
        return self.outcomes.in_time[cls] / sent if sent else float("nan")

    @property
    def goodput(self) -> float:
        """Answers within their deadline completed during the arrival window, per second."""
        return self.outcomes.per_s(in_time_only=True)


def request(x: np.ndarray, cls: str | None) -> InferenceRequest:
    return InferenceRequest(
        MODEL, "", "", [Tensor(INPUT, "FP32", SHAPE, x)], [], {"priority_class": cls} if cls else {}
    )


async def capacity(model: ServedModel, x: np.ndarray, concurrency: int, seconds: float) -> float:
    """Completions per second of a closed loop of ``concurrency`` requests."""
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await model.infer(request(x, None))
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def overload(
    model: ServedModel,
    x: np.ndarray,
    rate: float,
    seconds: float,
    args: argparse.Namespace,
    deadlines_ms: dict[str, float],
    fifo: bool,
) -> Outcomes:
    """Poisson arrivals at ``rate`` for ``seconds``; every request scored against its class deadline."""
    rng = np.random.default_rng(args.seed)
    out = Outcomes()
    tasks: list[asyncio.Task[None]] = []

    async def one(cls: str) -> None:
        started = time.perf_counter()
        try:
            await model.infer(request(x, None if fifo else cls))
        except Overloaded:
            out.refused[cls] += 1
            return
        except DeadlineExceeded:
            out.expired[cls] += 1
            return
        except asyncio.CancelledError:
            out.unfinished[cls] += 1
            raise
        finished = time.perf_counter()
        elapsed_ms = (finished - started) * 1e3
        out.latency_ms[cls].append(elapsed_ms)
        out.answered_at.append((finished, elapsed_ms <= deadlines_ms[cls]))
        if elapsed_ms <= deadlines_ms[cls]:
            out.in_time[cls] += 1
        else:
            out.late[cls] += 1

    start = time.perf_counter()
    out.window = (start, start + seconds)
    next_at = start
    while True:
        next_at += rng.exponential(1.0 / rate)
        if next_at - start >= seconds:
            break
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        cls = "stat" if rng.random() < args.stat else "routine"
        out.sent[cls] += 1
        tasks.append(asyncio.create_task(one(cls)))
    # requests still queued at the end get their routine deadline to finish, then count as unfinished
    _, pending = (
        await asyncio.wait(tasks, timeout=deadlines_ms["routine"] / 1e3 + 1) if tasks else (set(), set())
    )
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return out


async def run_one(
    name: str,
    max_batch: int,
    load: Callable[[], LoadedVersion],
    classes: PriorityClasses,
    x: np.ndarray,
    args: argparse.Namespace,
    deadlines_ms: dict[str, float],
    fifo: bool,
) -> Run:
    model = ServedModel(await asyncio.to_thread(load), ServingMetrics(), classes)
    try:
        await capacity(model, x, 4 * max_batch, args.warmup)  # warm-up, not counted
        measured = await capacity(model, x, 4 * max_batch, args.capacity_seconds)
        log(f"{name}: capacity {measured:.1f} images/s")
        before = (model.stats.execution_count, model.stats.inference_count)
        outcomes = await overload(model, x, args.load * measured, args.seconds, args, deadlines_ms, fifo)
        executions = model.stats.execution_count - before[0]
        inferences = model.stats.inference_count - before[1]
        after = await capacity(model, x, 4 * max_batch, args.capacity_seconds)
        answered = outcomes.per_s(in_time_only=False)
        log(
            f"{name}: capacity after the overload {after:.1f}, "
            f"answered under overload {answered:.1f} images/s"
        )
        measured = max(measured, after, answered)
    finally:
        await model.close(1.0)
    run = Run(
        name, max_batch, measured, outcomes, args.seconds, inferences / executions if executions else 0.0
    )
    log(
        f"{name}: stat attainment {run.attainment('stat'):.3f}, goodput {run.goodput:.1f}/s "
        f"({run.goodput / measured:.2f} of capacity)"
    )
    return run


def percentile(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.0f}" if values else "–"


def report(
    runs: list[Run], args: argparse.Namespace, single_ms: float, deadlines_ms: dict[str, float], command: str
) -> str:
    def row(label: str, cell: Callable[[Run], str]) -> str:
        return f"| {label} | " + " | ".join(cell(r) for r in runs) + " |"

    def o(run: Run) -> Outcomes:
        return run.outcomes

    lines = [
        "| | " + " | ".join(f"{r.name}, max batch {r.max_batch}" for r in runs) + " |",
        "|---|" + "---:|" * len(runs),
        row("capacity (highest measured), images/s", lambda r: f"{r.capacity:.1f}"),
        row("offered, requests/s", lambda r: f"{sum(o(r).sent.values()) / r.window_s:.1f}"),
        row("**stat deadline attainment**", lambda r: f"**{r.attainment('stat'):.3f}**"),
        row(
            "stat sent / in time / late / refused / expired",
            lambda r: "{} / {} / {} / {} / {}".format(
                *(getattr(o(r), k)["stat"] for k in ("sent", "in_time", "late", "refused", "expired"))
            ),
        ),
        row(
            "stat latency p50 / p99, ms",
            lambda r: (
                f"{percentile(o(r).latency_ms['stat'], 50)} / {percentile(o(r).latency_ms['stat'], 99)}"
            ),
        ),
        row(
            "routine sent / in time / late / refused / expired / unfinished",
            lambda r: "{} / {} / {} / {} / {} / {}".format(
                *(
                    getattr(o(r), k)["routine"]
                    for k in ("sent", "in_time", "late", "refused", "expired", "unfinished")
                )
            ),
        ),
        row(
            "routine latency p50 / p99 (answered), ms",
            lambda r: (
                f"{percentile(o(r).latency_ms['routine'], 50)} / {percentile(o(r).latency_ms['routine'], 99)}"
            ),
        ),
        row("**goodput / capacity**", lambda r: f"**{r.goodput / r.capacity:.2f}** ({r.goodput:.1f}/s)"),
        row("average batch size", lambda r: f"{r.avg_batch:.2f}"),
    ]
    verdicts = []
    for slo in (r for r in runs if r.name == "SLO-aware"):
        stat_ok = slo.attainment("stat") >= STAT_TARGET
        goodput_ok = slo.goodput / slo.capacity >= GOODPUT_TARGET
        verdicts += [
            f"- max batch {slo.max_batch}: stat deadline attainment "
            f"{'**met**' if stat_ok else '**not met**'} ({slo.attainment('stat'):.3f}, "
            f"target >= {STAT_TARGET}); goodput / capacity "
            f"{'**met**' if goodput_ok else '**not met**'} ({slo.goodput / slo.capacity:.2f}, target >= "
            f"{GOODPUT_TARGET})",
        ]
    return "\n".join(
        [
            f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC with `{command}`.",
            f"Machine: {machine()}. In-process (core `ServedModel`, no transport); the load generator "
            "shares the machine.",
            "",
            f"`{MODEL}`, one ONNX Runtime instance (allow_spinning {str(args.spinning).lower()}), max batch "
            f"{' and '.join(map(str, args.max_batch))}, no queue delay. A lone "
            f"inference takes {single_ms:.1f} ms (p50). Offered load {args.load:g} × each scheduler's "
            f"measured capacity for {args.seconds:g} s, Poisson arrivals; {args.stat:.0%} `stat` with a "
            f"deadline of {deadlines_ms['stat']:.0f} ms ({args.stat_deadline:g} × the lone inference), the "
            f"rest `routine` with {deadlines_ms['routine'] / 1e3:g} s.",
            "",
            *lines,
            "",
            *verdicts,
        ]
    )


async def amain(args: argparse.Namespace, command: str) -> str:
    build_example_repository(args.repository, models=[MODEL])
    base = ModelRepository(args.repository).config(MODEL)
    artifact = args.repository / MODEL / "1" / base.artifact

    def loader(max_batch: int) -> Callable[[], LoadedVersion]:
        config = base.model_copy(
            update={
                "max_batch_size": max_batch,
                "dynamic_batching": DynamicBatching(max_queue_delay_us=0),
                "runtime_options": {"allow_spinning": args.spinning},
            }
        )
        return lambda: load_version(MODEL, 1, config, artifact)

    loaded = await asyncio.to_thread(loader(1))
    x = np.random.default_rng(1).random(SHAPE, dtype=np.float32)
    engine = loaded.instances[0]
    for _ in range(3):
        engine.run({INPUT: x}, [o.name for o in loaded.outputs])
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        engine.run({INPUT: x}, [o.name for o in loaded.outputs])
        times.append((time.perf_counter() - t0) * 1e3)
    single_ms = float(np.median(times))
    for instance in loaded.instances:
        instance.unload()
    deadlines_ms = {"stat": args.stat_deadline * single_ms, "routine": args.routine_deadline_s * 1e3}
    log(f"lone inference p50 {single_ms:.1f} ms; stat deadline {deadlines_ms['stat']:.0f} ms")
    slo_classes = PriorityClasses(
        (
            PriorityClass("stat", 1, deadlines_ms["stat"]),
            PriorityClass("routine", 3, deadlines_ms["routine"]),
        ),
        "routine",
    )
    fifo_classes = PriorityClasses((PriorityClass("fifo", 1, None),), "fifo")
    runs = []
    for max_batch in args.max_batch:
        load = loader(max_batch)
        runs.append(await run_one("SLO-aware", max_batch, load, slo_classes, x, args, deadlines_ms, False))
        runs.append(await run_one("FIFO", max_batch, load, fifo_classes, x, args, deadlines_ms, True))
    return report(runs, args, single_ms, deadlines_ms, command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="arrival window per scheduler")
    parser.add_argument("--capacity-seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring capacity")
    parser.add_argument("--load", type=float, default=2.0, help="offered load as a multiple of capacity")
    parser.add_argument("--stat", type=float, default=0.1, help="fraction of stat requests")
    parser.add_argument("--stat-deadline", type=float, default=3.0, help="stat deadline / lone inference p50")
    parser.add_argument("--routine-deadline-s", type=float, default=5.0)
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 2], help="one run pair per value")
    parser.add_argument(
        "--spinning",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="ONNX Runtime's allow_spinning (off by default here: spinning threads starve the event loop)",
    )
    parser.add_argument("--seed", type=int, default=7)
    add_report_arguments(parser)
    return run_report(
        "priority.py",
        parser,
        argv,
        amain,
        "priority",
        "Mixed-priority overload: SLO-aware scheduling against FIFO",
    )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MedserveError as exc:
        sys.exit(f"priority benchmark: {exc}")
