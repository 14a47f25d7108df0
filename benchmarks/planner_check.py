"""Fleet planner check: the planner's predicted p99 and utilisation against a measured run at the same
load, on this machine.

On ``chest_xray_classifier`` (DenseNet-121 on a 224 × 224 image: a fifth of a second of computing per
image here against a few milliseconds in the door, so that the engine, which the profile measures, is
what the server spends its two cores on), for each load (a fraction of the capacity at batch 1), one
after the other, because a shared machine's speed drifts:

1. ``medserve profile``'s profiler measures the model at batch sizes up to the largest the server
   forms (1, 2, 4, ... then its ``max_batch_size``) with the server idle (the first load's profile is
   taken before it, each later one's is the previous load's closing one);
2. the door's own time per request (decoding, transfer, encoding, audit) is measured at idle: the
   clients' mean latency of sequential requests minus the server's execution time for them;
3. a real server takes that load as open-loop Poisson arrivals over HTTP (binary tensors) for
   ``--seconds``: the measured p99 is the clients', the measured utilisation is the server's execution
   time per second (``medserve_compute_duration_seconds_sum``) over the run;
4. the model is profiled again, and the planner predicts one server's p99 latency and utilisation at
   that rate (its discrete-event simulation of the model's batcher,
   :func:`medserve.planning.fleet.predict`) twice: *from the profiles* (the mean of the profiles
   before and after the run, what the planner is given) and *at the run's speed* (that profile with
   every time multiplied by the machine's speed during the run against the profiles': the server's
   mean execution time over the run over the profile's mean at the run's mean batch).

The second prediction checks the simulation (queueing, batch formation, the tail); the first adds the
error of the profile itself, which on a shared machine, whose speed others' work changes by tens of
percent from one minute to the next, can be large. Every load runs ``--rounds`` times, interleaved;
the target is both median errors within 25 % of the measurement. Prints a report and replaces the
``planner`` section of ``docs/BENCHMARKS.md``:

    python benchmarks/planner_check.py [--repository DIR] [--seconds 120] [--loads 0.3 0.6] [--rounds 2]
        [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import add_report_arguments, log, machine, medserve, run_report  # noqa: E402

from medserve.demo.models.repository import build_example_repository  # noqa: E402
from medserve.hardware.profile import ModelProfile, format_profile  # noqa: E402
from medserve.hardware.profile_store import ProfileStore  # noqa: E402
from medserve.hardware.profiler import profile_model  # noqa: E402
from medserve.planning.fleet import predict  # noqa: E402
from medserve.planning.inputs import gather, load_plan  # noqa: E402
from medserve.planning.sources import repository_batching  # noqa: E402
from medserve.store.database import Database, default_url  # noqa: E402

MODEL, INPUT, OUTPUT = "chest_xray_classifier", "image", "probabilities"
SHAPE = (1, 1, 224, 224)
TARGET = 0.25


def request_body() -> tuple[bytes, dict[str, str]]:
    """One patch as a binary-tensor request (Triton's binary data extension), the output in binary."""
    data = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": INPUT,
                    "datatype": "FP32",
                    "shape": list(SHAPE),
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + data, headers


async def open_loop(
    url: str, rate: float, seconds: float, body: bytes, headers: dict[str, str]
) -> list[float]:
    """Poisson arrivals at ``rate`` per second for ``seconds``; each request's latency in ms."""
    rng = np.random.default_rng(1)
    latencies: list[float] = []
    failures: list[str] = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one() -> None:
            started = time.perf_counter()
            answer = await client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
            if answer.status_code == 200:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                failures.append(f"{answer.status_code} {answer.text[:100]}")

        tasks = []
        start = time.perf_counter()
        due = 0.0
        while due < seconds:
            due += float(rng.exponential(1 / rate))
            delay = start + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return latencies


def plan_text(rate: float, overhead_ms: float, max_requests: int) -> str:
    return f"""
workload:
  - name: patches
    model: {MODEL}
    requests_per_second: {rate}
    slo_p99_ms: 100000
servers:
  - name: this machine
    devices: {{cpu: 1}}
    capex: 0
request_overhead_ms: {overhead_ms}
max_utilisation: 1.0
simulation: {{max_requests: {max_requests}, min_samples: {max_requests}}}
"""


_TOTALS = {
    "seconds": "medserve_compute_duration_seconds_sum",
    "executions": "medserve_compute_duration_seconds_count",
    "rows": "medserve_inference_count_total",
}


_BUCKET = "medserve_compute_duration_seconds_bucket{"


def totals(client: httpx.Client) -> dict[str, float]:
    """The model's execution seconds, executions and rows (inferences) so far, and its executions
    per bucket of execution time (``le=<seconds>``), from the server's metrics."""
    lines = [line for line in client.get("/metrics").text.splitlines() if f'model="{MODEL}"' in line]
    found = {
        key: sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(f"{name}{{"))
        for key, name in _TOTALS.items()
    }
    for line in lines:
        if line.startswith(_BUCKET):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            found[f"le={bound}"] = found.get(f"le={bound}", 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def execution_p99_ms(run: dict[str, float]) -> float:
    """The p99 of the run's execution times, read from the histogram's buckets the way Prometheus'
    ``histogram_quantile`` reads them (linear within a bucket: rough, the buckets being 0.25, 0.5, 1,
    2.5, 5 s wide here)."""
    buckets = sorted((float(k[3:]), v) for k, v in run.items() if k.startswith("le="))
    wanted = 0.99 * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= wanted:
            if bound == float("inf"):
                return 1000 * lower
            return 1000 * (lower + (bound - lower) * (wanted - below) / max(count - below, 1e-9))
        lower, below = bound, count
    return 1000 * lower


def since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in after}


def mean_ms(profile: ModelProfile, batch: float) -> float:
    """The profile's mean execution time (from its throughput) at ``batch`` rows, interpolated."""
    points = sorted((p.batch_size, 1000 * p.batch_size / float(p.throughput or 1)) for p in profile.points)
    return float(np.interp(batch, [b for b, _ in points], [m for _, m in points]))


def p99_ms(profile: ModelProfile, batch: float) -> float:
    """The profile's p99 execution time at ``batch`` rows, interpolated."""
    points = sorted((p.batch_size, float(p.p99_ms or 0)) for p in profile.points)
    return float(np.interp(batch, [b for b, _ in points], [m for _, m in points]))


def scaled(profile: ModelProfile, factor: float) -> ModelProfile:
    """``profile`` with every execution time multiplied by ``factor`` (the machine ``factor`` times
    slower), its dispersion kept."""
    return replace(
        profile,
        points=tuple(
            replace(
                p,
                p50_ms=float(p.p50_ms or 0) * factor,
                p99_ms=float(p.p99_ms or 0) * factor,
                throughput=float(p.throughput or 0) / factor,
            )
            for p in profile.points
        ),
    )


def bracket(before: ModelProfile, after: ModelProfile) -> ModelProfile:
    """The mean of the profiles measured just before and just after a run, point by point: a
    machine whose speed drifts steadily during the run is then met half way."""
    points = []
    for a, b in zip(before.points, after.points):
        if not (a.usable and b.usable) or a.batch_size != b.batch_size:
            continue
        points.append(
            replace(
                a,
                p50_ms=(float(a.p50_ms or 0) + float(b.p50_ms or 0)) / 2,
                p99_ms=(float(a.p99_ms or 0) + float(b.p99_ms or 0)) / 2,
                throughput=2 / (1 / float(a.throughput or 1) + 1 / float(b.throughput or 1)),
                joules_per_inference=None,
            )
        )
    return replace(before, points=tuple(points))


def measure_profile(repository: Path, data_dir: Path, seconds: float, sizes: tuple[int, ...]) -> Any:
    profile = profile_model(
        repository / MODEL,
        runtimes=["onnxruntime"],
        batch_sizes=sizes,
        seconds_per_point=seconds,
        warmup=1,
    )
    database = Database(default_url(data_dir))
    try:
        ProfileStore(database).save(profile)
    finally:
        database.dispose()
    return profile


def predicted(rate: float, overhead: float, profile: ModelProfile, batching: Any, simulated: int) -> Any:
    """The planner's simulation of one server taking ``rate`` requests per second on ``profile``."""
    spec = load_plan(plan_text(rate, round(overhead, 2), simulated))
    result = predict(gather(spec, {MODEL: profile}, batching), spec.servers[0], hour=0)
    return result.streams["patches"], result.utilisation["cpu"], result.mean_batch[MODEL]


async def produce(args: argparse.Namespace, command: str) -> str:
    source = args.repository
    if not (source / MODEL).is_dir():
        build_example_repository(source, models=[MODEL])
    work = Path(tempfile.mkdtemp(prefix="planner-check-"))
    repository = work / "repository"
    shutil.copytree(source / MODEL, repository / MODEL)
    data_dir = work / "data"
    data_dir.mkdir()
    Database(default_url(data_dir)).migrate()
    batching, _ = repository_batching(repository, [MODEL])
    # batch sizes up to the largest the server forms (max_batch_size), so that the simulated batcher
    # forms the batches the server forms rather than stopping at the largest profiled size
    largest = batching[MODEL].max_batch_size
    sizes = tuple(b for b in (1, 2, 4, 8, 16, 32, 64) if b < largest) + (largest,)
    body, headers = request_body()
    rows = []
    load_before = os.getloadavg()[0]
    # The DICOM door is off: this check needs HTTP alone, and another server may hold port 11112.
    env = {"MEDSERVE_DATA_DIR": str(data_dir), "MEDSERVE_AUTH_DISABLED": "true", "MEDSERVE_DICOM_PORT": "-1"}
    with medserve(repository, env) as (_pid, http, _grpc):
        url = f"http://127.0.0.1:{http}"
        with httpx.Client(base_url=url, timeout=120) as client:
            for _ in range(3):
                client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
            log(f"profiling {MODEL} ({args.profile_seconds} s per batch size {sizes}) while the server idles")
            profiles = [measure_profile(repository, data_dir, args.profile_seconds, sizes)]
            for load in [load for _ in range(args.rounds) for load in args.loads]:
                # A shared machine's speed drifts: the door is measured at idle just before the run, the
                # model is profiled just before and just after it, and the prediction uses their mean.
                idle = []
                before = totals(client)
                for _ in range(args.idle_requests):
                    started = time.perf_counter()
                    answer = client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
                    assert answer.status_code == 200, answer.text
                    idle.append((time.perf_counter() - started) * 1000)
                quiet = since(before, totals(client))
                overhead = max(0.0, float(np.mean(idle)) - 1000 * quiet["seconds"] / quiet["executions"])
                # the capacity: the median batch-1 throughput of the profiles so far (one profile can
                # catch the machine in a quiet or a busy minute)
                ones = [next(p.throughput or 0.0 for p in q.points if p.batch_size == 1) for q in profiles]
                capacity = float(np.median(ones))
                rate = round(load * capacity, 3)
                log(f"load {load:.0%}: {rate}/s (door {overhead:.1f} ms)")
                await open_loop(url, rate, args.warmup, body, headers)
                before, wall_before = totals(client), time.perf_counter()
                latencies = await open_loop(url, rate, args.seconds, body, headers)
                wall = time.perf_counter() - wall_before
                run = since(before, totals(client))
                measured_p99 = float(np.percentile(latencies, 99))
                measured_util = run["seconds"] / wall
                run_batch = run["rows"] / run["executions"]
                log(
                    f"  measured p99 {measured_p99:.0f} ms over {len(latencies)} requests, "
                    f"utilisation {measured_util:.0%}, mean batch {run_batch:.2f}"
                )
                profiles.append(measure_profile(repository, data_dir, args.profile_seconds, sizes))
                profile = bracket(profiles[-2], profiles[-1])
                # The predictions are for the rate the clients sent at (Poisson arrivals over two
                # minutes stray some 10 % from the rate asked for), which the measured figures come from.
                sent = len(latencies) / args.seconds
                stats, util, _ = predicted(sent, overhead, profile, batching, args.simulated)
                # The machine's speed during the run, against the profiles': the server's mean
                # execution time over the run against the profiles' mean at the run's mean batch.
                speed = 1000 * run["seconds"] / run["executions"] / mean_ms(profile, run_batch)
                at_speed, at_util, at_batch = predicted(
                    sent, overhead, scaled(profile, speed), batching, args.simulated
                )
                # The run's execution times' tail against the profile's (at the run's speed): a machine
                # whose speed changes within the run (others' work) has a longer tail than a profile
                # of a few seconds shows; the simulation draws execution times from the profile's.
                run_exec_p99 = execution_p99_ms(run)
                log(
                    f"  predicted p99 {stats.p99_ms:.0f} ms, utilisation {util:.0%} from the profiles; "
                    f"{at_speed.p99_ms:.0f} ms, {at_util:.0%} at the run's speed (x{speed:.2f}); "
                    f"execution p99 {run_exec_p99:.0f} ms in the run"
                )
                rows.append(
                    {
                        "load": load,
                        "rate": rate,
                        "sent": sent,
                        "capacity": capacity,
                        "overhead": overhead,
                        "profile": profile,
                        "requests": len(latencies),
                        "speed": speed,
                        "pred_p99": stats.p99_ms,
                        "pred_util": util,
                        "run_p99": at_speed.p99_ms,
                        "exec_p99": run_exec_p99,
                        "profile_exec_p99": p99_ms(profile, run_batch),
                        "run_util": at_util,
                        "pred_p50": at_speed.p50_ms,
                        "pred_batch": at_batch,
                        "meas_p99": measured_p99,
                        "meas_p50": float(np.percentile(latencies, 50)),
                        "meas_util": measured_util,
                        "meas_batch": run_batch,
                    }
                )
    shutil.rmtree(work, ignore_errors=True)
    return report(rows, command, load_before, os.getloadavg()[0])


def _error(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured


def report(rows: list[dict[str, Any]], command: str, before: float, after: float) -> str:
    lines = [
        f"Measured {dt.date.today().isoformat()} on {machine()} (load average {before:.1f} before, "
        f"{after:.1f} after: a shared machine, other work running). Command:",
        "",
        f"    {command}",
        "",
        f"`{MODEL}` (one 224 × 224 image a request, binary tensors over HTTP), one instance, its batcher as "
        "configured. For each load (a fraction of the median batch-1 capacity of the profiles so far): the "
        "door's time per request at idle (client latency minus the server's execution time), a measured "
        "run of open-loop Poisson clients, then two predictions of the planner's discrete-event "
        "simulation for the rate the clients sent at: *from the profiles* (the mean of the profiles "
        "taken just before and just after the run: what the planner is given); *at the run's speed* "
        "(the same profile with every execution time multiplied by the machine's speed during the run "
        "against the profiles': the server's mean execution time over the run over the profiles' mean "
        "at the run's mean batch). The second checks the simulation's queueing and batch formation at "
        "the machine's speed of the moment; the first adds the error of a profile taken minutes apart. "
        "The execution p99 of the run is read from the server's histogram the way `histogram_quantile` "
        "reads it (rough: its buckets are 0.25, 0.5, 1, 2.5 and 5 s); a run whose execution times have a "
        "longer tail than the profile's (others' work slowing the machine for seconds at a time) has a "
        "longer latency tail than the simulation, which draws them from the profile's.",
        "",
        "| load | rate /s asked / sent | requests | door ms | run's speed ÷ profiles' "
        "| execution p99 ms: profile at the run's speed / run | mean batch predicted / measured "
        "| p50 predicted / measured ms "
        "| p99 ms: from profiles / at run's speed / **measured** | p99 error "
        "| utilisation from profiles / at run's speed / **measured** | utilisation error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p99s = [r["pred_p99"], r["run_p99"]]
        utils = [r["pred_util"], r["run_util"]]
        p99_errors = " / ".join(f"{_error(v, r['meas_p99']):+.0%}" for v in p99s)
        util_errors = " / ".join(f"{_error(v, r['meas_util']):+.0%}" for v in utils)
        lines.append(
            f"| {r['load']:.0%} | {r['rate']:.2f} / {r['sent']:.2f} | {r['requests']} | {r['overhead']:.0f} "
            f"| {r['speed']:.2f} | {r['profile_exec_p99'] * r['speed']:.0f} / {r['exec_p99']:.0f} "
            f"| {r['pred_batch']:.2f} / {r['meas_batch']:.2f} "
            f"| {r['pred_p50']:.0f} / {r['meas_p50']:.0f} "
            f"| {' / '.join(f'{v:.0f}' for v in p99s)} / **{r['meas_p99']:.0f}** "
            f"| {p99_errors} "
            f"| {' / '.join(f'{v:.0%}' for v in utils)} / **{r['meas_util']:.0%}** "
            f"| {util_errors} |"
        )
    lines += ["", "Median error over the rounds, per load (the target: within 25 %):", "", *summary(rows)]
    lines += [
        "",
        "The profiles the predictions used (per load, the mean of the profiles before and after it):",
        "",
    ]
    for r in rows:
        lines += ["```", format_profile(r["profile"]), "```"]
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """The check's table: per load and prediction, the median p99 and utilisation errors over its
    rounds."""
    lines = [
        "| load | rounds | prediction | p99 error | utilisation error | within 25 % |",
        "|---|---|---|---|---|---|",
    ]
    for load in dict.fromkeys(r["load"] for r in rows):
        mine = [r for r in rows if r["load"] == load]
        for label, p99_key, util_key in (
            ("from the profiles", "pred_p99", "pred_util"),
            ("at the run's speed", "run_p99", "run_util"),
        ):
            p99 = float(np.median([_error(r[p99_key], r["meas_p99"]) for r in mine]))
            util = float(np.median([_error(r[util_key], r["meas_util"]) for r in mine]))
            verdict = "yes" if abs(p99) <= TARGET and abs(util) <= TARGET else "**no**"
            lines.append(f"| {load:.0%} | {len(mine)} | {label} | {p99:+.0%} | {util:+.0%} | {verdict} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=120, help="measured seconds per load (a p99 needs a few hundred)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="times every load is run (interleaved)")
    parser.add_argument("--warmup", type=float, default=5, help="warm-up seconds per load")
    parser.add_argument(
        "--loads", type=float, nargs="+", default=[0.3, 0.6], help="fractions of the capacity"
    )
    parser.add_argument(
        "--profile-seconds",
        type=float,
        default=6.0,
        help="profiling seconds per batch size (a p99 needs more than a handful of executions)",
    )
    parser.add_argument("--idle-requests", type=int, default=10, help="sequential requests at idle")
    parser.add_argument("--simulated", type=int, default=200_000, help="simulated requests per prediction")
    add_report_arguments(parser)
    return run_report(
        "planner_check.py", parser, argv, produce, "planner", "Fleet planner: predicted against measured"
    )


if __name__ == "__main__":
    sys.exit(main())
