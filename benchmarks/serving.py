"""Serving benchmark: medserve against raw ONNX Runtime on ``chest_xray_classifier``.

One run measures, on the same machine and artifact:

1. raw ONNX Runtime throughput at batch 1, 2, 4 and 8 (same session options as the server) and raw
   batch-1 latency;
2. served throughput at ``--concurrency`` in-flight batch-1 requests, over gRPC and over HTTP with
   binary tensors, with the dynamic batcher's average batch size read from the statistics endpoint;
3. latency at concurrency 1, raw against gRPC and HTTP;
4. that served outputs equal raw outputs (atol 1e-5).

It prints a markdown report and replaces the serving section of ``docs/BENCHMARKS.md``::

    python benchmarks/serving.py --seconds 20
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml

from medserve.examples.repository import build_example_repository
from medserve.runtimes.onnxruntime import OnnxRuntime

MODEL, INPUT, OUTPUT = "chest_xray_classifier", "image", "probabilities"
SHAPE = (1, 224, 224)
BATCH_SIZES = (1, 2, 4, 8)
TARGET_RATIO, TARGET_ADDED_MS = 0.9, 2.0
START, END = "<!-- serving:start -->", "<!-- serving:end -->"
DEFAULT_REPOSITORY = Path.home() / ".cache" / "medserve" / "bench_repository"

Caller = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Latency:
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, seconds: list[float]) -> Latency:
        ms = np.asarray(seconds) * 1e3
        return cls(*(float(np.percentile(ms, q)) for q in (50, 90, 99)))


@dataclass(frozen=True)
class Served:
    images_per_s: float
    avg_batch: float
    client_cores: float
    server_cores: float


@dataclass(frozen=True)
class ServedLatency:
    latency: Latency
    queue_ms: float  # the server's own view, per request, from the statistics endpoint
    infer_ms: float
    request_ms: float


def raw_session(repository: Path) -> ort.InferenceSession:
    """A session built exactly as the server builds it, from the model's ``runtime_options``."""
    config = yaml.safe_load((repository / MODEL / "config.yaml").read_text(encoding="utf-8"))
    artifact = repository / MODEL / "1" / "model.onnx"
    options, providers = OnnxRuntime(artifact, config.get("runtime_options", {}))._session_options()
    return ort.InferenceSession(str(artifact), options, providers=providers)


def raw_throughput(
    session: ort.InferenceSession, seconds: float, batches: tuple[int, ...] = BATCH_SIZES
) -> dict[int, float]:
    rng, result = np.random.default_rng(1), {}
    for batch in batches:
        x = rng.random((batch, *SHAPE), dtype=np.float32)
        for _ in range(2):
            session.run([OUTPUT], {INPUT: x})
        runs, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            session.run([OUTPUT], {INPUT: x})
            runs += 1
        result[batch] = runs * batch / elapsed
    return result


def timed(call: Callable[[], Any], count: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def medserve(repository: Path) -> Iterator[tuple[int, int, int]]:
    """Run ``medserve serve`` in a subprocess; yields (pid, http port, grpc port) once ready."""
    http, grpc = free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "medserve",
        "serve",
        "--repository",
        str(repository),
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc),
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"medserve exited with {process.returncode} during start-up")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("medserve was not ready within 120 s")
            time.sleep(0.2)
        yield process.pid, http, grpc
    finally:
        process.send_signal(15)  # SIGTERM: graceful shutdown
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_caller(door: str, port: int) -> Caller:
    """One client of ``door`` ("grpc" or "http", binary tensors both ways); call it from one thread."""
    lib: Any = grpcclient if door == "grpc" else httpclient
    binary: dict[str, bool] = {} if door == "grpc" else {"binary_data": True}
    client = lib.InferenceServerClient(f"127.0.0.1:{port}")
    outputs = [lib.InferRequestedOutput(OUTPUT, **binary)]

    def call(x: np.ndarray) -> np.ndarray:
        tensor = lib.InferInput(INPUT, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, **binary)
        result: np.ndarray = client.infer(MODEL, [tensor], outputs=outputs).as_numpy(OUTPUT)
        return result

    return call


def model_stats(http: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/{MODEL}/stats", timeout=10) as r:
        stats: dict[str, Any] = json.load(r)["model_stats"][0]
    return stats


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def served_throughput(
    make: Callable[[], Caller], concurrency: int, warmup: float, seconds: float, http: int, pid: int
) -> Served:
    """``concurrency`` threads, each with its own client, send batch-1 requests back to back."""
    stop, errors = threading.Event(), []
    stamps: list[list[float]] = [[] for _ in range(concurrency)]
    x = np.random.default_rng(2).random((1, *SHAPE), dtype=np.float32)

    def worker(done: list[float]) -> None:
        try:
            call = make()
            while not stop.is_set():
                call(x)
                done.append(time.perf_counter())
        except Exception as exc:  # reported after the run
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in stamps]
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    before, cpu0, server0 = model_stats(http), process_cpu_s(os.getpid()), process_cpu_s(pid)
    t0 = time.perf_counter()
    time.sleep(seconds)
    t1 = time.perf_counter()
    after, cpu1, server1 = model_stats(http), process_cpu_s(os.getpid()), process_cpu_s(pid)
    stop.set()
    for thread in threads:
        thread.join(120)
    if errors:
        raise RuntimeError(f"{len(errors)} worker(s) failed: {errors[0]!r}")
    images = sum(t0 <= t < t1 for done in stamps for t in done)
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    return Served(
        images / (t1 - t0),
        inferences / max(executions, 1),
        (cpu1 - cpu0) / (t1 - t0),
        (server1 - server0) / (t1 - t0),
    )


def served_latency(call: Caller, count: int, http: int) -> ServedLatency:
    x = np.random.default_rng(3).random((1, *SHAPE), dtype=np.float32)
    for _ in range(5):
        call(x)
    before = model_stats(http)["inference_stats"]
    samples = timed(lambda: call(x), count, warmup=0)
    after = model_stats(http)["inference_stats"]

    def avg_ms(key: str) -> float:
        count = int(after[key]["count"] - before[key]["count"])
        return float(after[key]["ns"] - before[key]["ns"]) / max(count, 1) / 1e6

    return ServedLatency(Latency.of(samples), avg_ms("queue"), avg_ms("compute_infer"), avg_ms("success"))


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return (
        f"{os.cpu_count()} logical CPUs (`nproc` = {len(os.sched_getaffinity(0))}), {cpu}; "
        f"Python {platform.python_version()}, onnxruntime {ort.__version__}, "
        f"{platform.system()} {platform.release()}"
    )


def verdict(ok: bool, text: str) -> str:
    return f"**met** ({text})" if ok else f"**not met** ({text})"


def report(
    raw_tp: dict[int, float],
    raw_lat: Latency,
    served: dict[str, Served],
    lat: dict[str, ServedLatency],
    max_diff: dict[str, float],
    recheck: float,
    load: tuple[float, float],
    args: argparse.Namespace,
    command: str,
) -> str:
    best = max(raw_tp, key=lambda b: raw_tp[b])
    best_tp = raw_tp[best]
    doors = {"grpc": "gRPC", "http": "HTTP"}

    def row(label: str, raw: str, cell: Callable[[str], str]) -> str:
        return f"| {label} | {raw} | " + " | ".join(cell(door) for door in doors) + " |"

    lines = [
        f"Run {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} with `{command}`.",
        "",
        f"Machine: {machine()}.",
        "",
        f"Model `{MODEL}` (DenseNet-121, FP32 [1, 224, 224] in, 14 out), dynamic batching "
        f"(max batch 8, preferred [4, 8], max queue delay 2 ms), one instance, ORT default intra-op "
        f"threads. Served throughput: {args.concurrency} threads, each with its own client, sending "
        f"batch-1 requests back to back for {args.seconds:g} s after a {args.warmup:g} s warm-up; client "
        f"and server run on the same machine. Latency: {args.requests} sequential batch-1 requests.",
        "",
        "| Batch size | " + " | ".join(str(b) for b in raw_tp) + " |",
        "|---|" + "---:|" * len(raw_tp),
        "| Raw ORT images/s | " + " | ".join(f"{v:.1f}" for v in raw_tp.values()) + " |",
        "",
        "| | Raw ORT | gRPC | HTTP (binary) |",
        "|---|---:|---:|---:|",
        row("Throughput, images/s", f"{best_tp:.1f} (b{best})", lambda d: f"{served[d].images_per_s:.1f}"),
        row("Served / raw best", "1.00", lambda d: f"{served[d].images_per_s / best_tp:.2f}"),
        row("Average batch size (server stats)", str(best), lambda d: f"{served[d].avg_batch:.2f}"),
        row(
            "CPU cores used, client / server",
            "–",
            lambda d: f"{served[d].client_cores:.2f} / {served[d].server_cores:.2f}",
        ),
        row("p50 latency, concurrency 1, ms", f"{raw_lat.p50:.2f}", lambda d: f"{lat[d].latency.p50:.2f}"),
        row(
            "p90 / p99 latency, ms",
            f"{raw_lat.p90:.2f} / {raw_lat.p99:.2f}",
            lambda d: f"{lat[d].latency.p90:.2f} / {lat[d].latency.p99:.2f}",
        ),
        row("Added p50 (served − raw), ms", "–", lambda d: f"{lat[d].latency.p50 - raw_lat.p50:+.2f}"),
        row(
            "Server view at c=1: queue / infer / request, ms",
            "–",
            lambda d: f"{lat[d].queue_ms:.2f} / {lat[d].infer_ms:.2f} / {lat[d].request_ms:.2f}",
        ),
        row("Max abs diff vs raw output", "0", lambda d: f"{max_diff[d]:.1e}"),
        "",
        "Targets:",
        "",
    ]
    for door, name in doors.items():
        ratio = served[door].images_per_s / best_tp
        added = lat[door].latency.p50 - raw_lat.p50
        short = f", {(TARGET_RATIO - ratio) * best_tp:.1f} images/s ({1 - ratio / TARGET_RATIO:.0%}) short"
        lines.append(
            f"- {name} throughput >= {TARGET_RATIO} x raw best: "
            + verdict(ratio >= TARGET_RATIO, f"{ratio:.2f} x" + ("" if ratio >= TARGET_RATIO else short))
        )
        over = f", {added - TARGET_ADDED_MS:.2f} ms over"
        lines.append(
            f"- {name} added p50 latency <= {TARGET_ADDED_MS:g} ms: "
            + verdict(
                added <= TARGET_ADDED_MS, f"{added:+.2f} ms" + ("" if added <= TARGET_ADDED_MS else over)
            )
        )
    drift = recheck / best_tp - 1
    lines += [
        "",
        f"Noise check: raw batch-{best} throughput re-measured after the served runs: {recheck:.1f} "
        f"images/s ({drift:+.0%}{'' if abs(drift) <= 0.1 else '; over 10 %: a noisy run, repeat it'}). "
        f"1-minute load average before / after the run: {load[0]:.2f} / {load[1]:.2f}.",
        "",
        "Notes: at concurrency 1 a lone request waits up to the model's max queue delay (2 ms) for "
        "companions before it runs, so the server's queue time counts against the latency target; "
        f"on a machine with {len(os.sched_getaffinity(0))} cores the load-generating client competes "
        "with the engine's threads for CPU, which lowers served throughput (see the CPU row).",
    ]
    return "\n".join(lines)


HEADER = """# Benchmarks

Measured with the scripts in `benchmarks/`; each script rewrites only its own section, marked by
HTML comments, and keeps the rest of this file. Numbers are from one machine and one run: compare
them as ratios within a run, not across machines.

Machine of the first run: {machine}.
"""


def write_section(path: Path, body: str) -> None:
    section = f"{START}\n## Serving: medserve vs raw ONNX Runtime\n\n{body}\n{END}"
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER.format(machine=machine())
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per served run")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up seconds per served run")
    parser.add_argument("--raw-seconds", type=float, default=4, help="seconds per raw batch size")
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per latency run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repository", type=Path, help=f"model repository (default {DEFAULT_REPOSITORY})")
    parser.add_argument("--output", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only; leave --output alone")
    args = parser.parse_args(argv)
    command = "python benchmarks/serving.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    repository = args.repository or DEFAULT_REPOSITORY
    if args.repository is None:
        build_example_repository(repository, models=[MODEL])
    load_before = os.getloadavg()[0]

    session = raw_session(repository)
    log(f"raw ORT ({session.get_providers()[0]}): throughput at batch {BATCH_SIZES}")
    raw_tp = raw_throughput(session, args.raw_seconds)
    log(f"raw ORT: {args.requests} batch-1 runs")
    x = np.random.default_rng(3).random((1, *SHAPE), dtype=np.float32)
    raw_lat = Latency.of(timed(lambda: session.run([OUTPUT], {INPUT: x}), args.requests))
    check = np.random.default_rng(4).random((1, *SHAPE), dtype=np.float32)
    expected = session.run([OUTPUT], {INPUT: check})[0]
    session = None  # its thread pool must not compete with the server's

    served: dict[str, Served] = {}
    lat: dict[str, ServedLatency] = {}
    max_diff: dict[str, float] = {}
    with medserve(repository) as (pid, http, grpc):
        for door, port in (("grpc", grpc), ("http", http)):
            make = partial(make_caller, door, port)
            call = make()
            got = call(check)
            max_diff[door] = float(np.max(np.abs(got - expected)))
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=f"{door} output")
            log(f"{door}: {args.requests} sequential requests")
            lat[door] = served_latency(call, args.requests, http)
            log(f"{door}: concurrency {args.concurrency} for {args.warmup:g}+{args.seconds:g} s")
            served[door] = served_throughput(make, args.concurrency, args.warmup, args.seconds, http, pid)

    best = max(raw_tp, key=lambda b: raw_tp[b])
    log(f"raw ORT: batch {best} again, to check for drift")
    recheck = raw_throughput(raw_session(repository), args.raw_seconds, (best,))[best]
    load = (load_before, os.getloadavg()[0])
    body = report(raw_tp, raw_lat, served, lat, max_diff, recheck, load, args, command)
    print(body)
    if not args.no_write:
        write_section(args.output, body)
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
