"""Serving benchmark: medserve against raw ONNX Runtime on ``chest_xray_classifier``.

Measures raw ORT throughput at batch 1, 2, 4, 8 (the server's session options) before and after the
served runs; checks served outputs against raw ones (atol 1e-5); measures latency at concurrency 1 of
raw ``session.run``, gRPC and HTTP (binary tensors), interleaved in rounds so that drift on a shared
machine hits all three alike; and served throughput at ``--concurrency`` in-flight batch-1 requests,
with the batcher's average batch size from the statistics endpoint. Prints a markdown report and
replaces the serving section of ``docs/BENCHMARKS.md``: ``python benchmarks/serving.py --seconds 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml

from medserve.demo.models.repository import build_example_repository
from medserve.runtimes.onnxruntime import OnnxRuntime

MODEL, INPUT, OUTPUT = "chest_xray_classifier", "image", "probabilities"
SHAPE = (1, 224, 224)
BATCH_SIZES = (1, 2, 4, 8)
DOORS = {"grpc": "gRPC", "http": "HTTP"}
TARGET_RATIO, TARGET_ADDED_MS = 0.9, 2.0
DEFAULT_REPOSITORY = Path.home() / ".cache" / "medserve" / "bench_repository"

Caller = Callable[[np.ndarray], np.ndarray]
Call = Callable[[], object]


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


@dataclass
class Results:
    raw: dict[int, float] = field(default_factory=dict)  # images/s per batch size
    raw_after: float = 0.0  # best batch size again, after the served runs
    latency: dict[str, Latency] = field(default_factory=dict)  # "raw", "grpc", "http"
    server_ms: dict[str, list[float]] = field(default_factory=dict)  # queue, infer, request ms
    served: dict[str, Served] = field(default_factory=dict)
    max_diff: dict[str, float] = field(default_factory=dict)
    load: tuple[float, float] = (0.0, 0.0)
    batching: str = ""  # the model's dynamic batching settings, as configured

    @property
    def best(self) -> int:
        return max(self.raw, key=lambda batch: self.raw[batch])

    @property
    def reference(self) -> float:  # raw images/s at the best batch size, mean of before and after
        return (self.raw[self.best] + self.raw_after) / 2


def batching_of(repository: Path) -> str:
    config = yaml.safe_load((repository / MODEL / "config.yaml").read_text(encoding="utf-8"))
    b = config.get("dynamic_batching") or {}
    return (
        f"with max batch {config.get('max_batch_size')}, "
        f"preferred sizes {b.get('preferred_batch_sizes', [])}, "
        f"max queue delay {b.get('max_queue_delay_us', 0)} µs"
    )


def raw_session(repository: Path) -> ort.InferenceSession:
    """A session built exactly as the server builds it, from the model's ``runtime_options``."""
    config = yaml.safe_load((repository / MODEL / "config.yaml").read_text(encoding="utf-8"))
    artifact = repository / MODEL / "1" / "model.onnx"
    options, providers = OnnxRuntime(artifact, config.get("runtime_options", {}))._session_options()
    return ort.InferenceSession(str(artifact), options, providers=providers)


def raw_throughput(session: ort.InferenceSession, secs: float, batches: tuple[int, ...]) -> dict[int, float]:
    rng, result = np.random.default_rng(1), {}
    for batch in batches:
        x = rng.random((batch, *SHAPE), dtype=np.float32)
        for _ in range(2):
            session.run([OUTPUT], {INPUT: x})
        runs, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < secs:
            session.run([OUTPUT], {INPUT: x})
            runs += 1
        result[batch] = runs * batch / elapsed
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Serving benchmarks measure the dataplane: no credentials needed (benchmarks/trust.py measures
#: authentication and audit on their own).
OPEN = {"MEDSERVE_AUTH_DISABLED": "true", "MEDSERVE_DICOM_PORT": "-1"}
"""Benchmark servers: no tokens, and no DICOM door unless a benchmark gives it a port (a server already
running on this machine holds the default one, 11112)."""


@contextmanager
def medserve(repository: Path, env: dict[str, str] | None = None) -> Iterator[tuple[int, int, int]]:
    """Run ``medserve serve`` in a subprocess; yields (pid, http port, grpc port) once ready.

    The server keeps its data (store, audit journal) in a temporary folder; ``env`` adds settings.
    """
    http, grpc = free_port(), free_port()
    flags = {"--repository": repository, "--http-port": http, "--grpc-port": grpc, "--log-level": "warning"}
    command = [sys.executable, "-m", "medserve", "serve", *(str(v) for kv in flags.items() for v in kv)]
    data = tempfile.mkdtemp(prefix="medserve-bench-")
    settings = {"MEDSERVE_DATA_DIR": data, **OPEN, **(env or {})}
    process = subprocess.Popen(command, env={**os.environ, **settings})
    try:
        deadline = time.monotonic() + 120
        while not ready(http):
            if process.poll() is not None:
                raise RuntimeError(f"medserve exited with {process.returncode} during start-up")
            if time.monotonic() > deadline:
                raise RuntimeError("medserve was not ready within 120 s")
            time.sleep(0.2)
        yield process.pid, http, grpc
    finally:
        process.terminate()  # SIGTERM: graceful shutdown
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ready(http: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def interleaved_latency(calls: dict[str, Call], count: int, rounds: int, http: int) -> Results:
    """``count`` sequential calls of each, in ``rounds`` alternating rounds; plus the server's view."""
    keys = ("queue", "compute_infer", "success")
    samples: dict[str, list[float]] = {mode: [] for mode in calls}
    totals = {mode: np.zeros((len(keys), 2)) for mode in calls}  # per key: ns, count
    for _ in range(rounds):
        for mode, call in calls.items():
            for _ in range(2):  # warm-up after switching
                call()
            before = model_stats(http)["inference_stats"]
            for _ in range(count // rounds):
                start = time.perf_counter()
                call()
                samples[mode].append(time.perf_counter() - start)
            after = model_stats(http)["inference_stats"]
            totals[mode] += [[after[k][f] - before[k][f] for f in ("ns", "count")] for k in keys]
    result = Results(latency={mode: Latency.of(s) for mode, s in samples.items()})
    result.server_ms = {door: [ns / max(n, 1) / 1e6 for ns, n in totals[door]] for door in DOORS}
    return result


@contextmanager
def closed_loop(make: Callable[[], Call], concurrency: int) -> Iterator[list[list[float]]]:
    """``concurrency`` threads, each calling its own ``make()`` back to back while the block runs;
    yields each thread's completion times (``time.perf_counter``). A failing call stops them all and
    is raised when the block ends."""
    stop, errors = threading.Event(), []
    stamps: list[list[float]] = [[] for _ in range(concurrency)]

    def worker(done: list[float]) -> None:
        try:
            call = make()
            while not stop.is_set():
                call()
                done.append(time.perf_counter())
        except Exception as exc:  # reported after the run
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in stamps]
    for thread in threads:
        thread.start()
    try:
        yield stamps
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    if errors:
        raise RuntimeError(f"{len(errors)} worker(s) failed: {errors[0]!r}")


def completed(stamps: list[list[float]], t0: float, t1: float) -> int:
    """How many calls of a closed loop completed within [t0, t1)."""
    return sum(t0 <= t < t1 for done in stamps for t in done)


def served_throughput(make: Callable[[], Caller], args: argparse.Namespace, http: int, pid: int) -> Served:
    """``--concurrency`` threads, each with its own client, send batch-1 requests back to back."""
    x = np.random.default_rng(2).random((1, *SHAPE), dtype=np.float32)

    def one_client() -> Call:
        caller = make()
        return lambda: caller(x)

    with closed_loop(one_client, args.concurrency) as stamps:
        time.sleep(args.warmup)
        before, client0, server0 = model_stats(http), cpu_seconds(os.getpid()), cpu_seconds(pid)
        t0 = time.perf_counter()
        time.sleep(args.seconds)
        t1 = time.perf_counter()
        after, client1, server1 = model_stats(http), cpu_seconds(os.getpid()), cpu_seconds(pid)
    images = completed(stamps, t0, t1)
    executions = max(after["execution_count"] - before["execution_count"], 1)
    avg_batch = (after["inference_count"] - before["inference_count"]) / executions
    elapsed = t1 - t0
    return Served(images / elapsed, avg_batch, (client1 - client0) / elapsed, (server1 - server0) / elapsed)


def machine() -> str:
    found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    cpu = found.group(1).strip() if found else platform.processor() or "unknown CPU"
    return (
        f"`nproc` = {len(os.sched_getaffinity(0))}, {cpu}; Python {platform.python_version()}, "
        f"onnxruntime {ort.__version__}, {platform.system()} {platform.release()}"
    )


def verdict(ok: bool, value: str, miss: str) -> str:
    return f"**met** ({value})" if ok else f"**not met** ({value}, {miss})"


def report(r: Results, args: argparse.Namespace, command: str) -> str:
    best, ref, raw, sv, lat = r.best, r.reference, r.latency["raw"], r.served, r.latency
    drift = r.raw_after / r.raw[best] - 1
    raw_tp = f"{ref:.1f} (batch {best}; {r.raw[best]:.1f} before, {r.raw_after:.1f} after)"
    per_door = {d: dict(s=sv[d], l=lat[d], q=r.server_ms[d], diff=r.max_diff[d]) for d in DOORS}
    for d, cells in per_door.items():
        cells.update(ratio=sv[d].images_per_s / ref, added=lat[d].p50 - raw.p50)

    def row(label: str, raw_cell: str, template: str) -> str:
        return f"| {label} | {raw_cell} | " + " | ".join(template.format(**per_door[d]) for d in DOORS) + " |"

    lines = [
        f"Run {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} with `{command}`.",
        f"Machine: {machine()}. Client and server share it.",
        "",
        f"Model `{MODEL}` (DenseNet-121, FP32 [1, 224, 224] in, 14 out); its config: dynamic batching "
        f"{r.batching}; one instance; ORT default "
        f"intra-op threads. Throughput: {args.concurrency} threads, each with its own client, send batch-1 "
        f"requests back to back for {args.seconds:g} s after {args.warmup:g} s of warm-up. Latency: "
        f"{args.requests} sequential batch-1 calls each, raw/gRPC/HTTP interleaved in {args.rounds} rounds.",
        "",
        "| Raw ORT, batch size | " + " | ".join(str(b) for b in r.raw) + " |",
        "|---|" + "---:|" * len(r.raw),
        "| images/s | " + " | ".join(f"{v:.1f}" for v in r.raw.values()) + " |",
        "",
        "| | Raw ORT | gRPC | HTTP (binary) |",
        "|---|---:|---:|---:|",
        row("Throughput, images/s", raw_tp, "{s.images_per_s:.1f}"),
        row("Served / raw", "1.00", "{ratio:.2f}"),
        row("Average batch size (server stats)", str(best), "{s.avg_batch:.2f}"),
        row("CPU cores, client / server", "–", "{s.client_cores:.2f} / {s.server_cores:.2f}"),
        row("p50 latency at concurrency 1, ms", f"{raw.p50:.2f}", "{l.p50:.2f}"),
        row("p90 / p99, ms", f"{raw.p90:.2f} / {raw.p99:.2f}", "{l.p90:.2f} / {l.p99:.2f}"),
        row("Added p50 (served − raw), ms", "–", "{added:+.2f}"),
        row("Server: queue / infer / request, ms", "–", "{q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f}"),
        row("Max abs difference from raw output", "0", "{diff:.1e}"),
        "",
        f"Targets: served throughput >= {TARGET_RATIO} x raw; added p50 latency at concurrency 1 "
        f"<= {TARGET_ADDED_MS:g} ms.",
        "",
    ]
    for door, name in DOORS.items():
        ratio, added = sv[door].images_per_s / ref, lat[door].p50 - raw.p50
        short = f"{(TARGET_RATIO - ratio) * ref:.1f} images/s ({1 - ratio / TARGET_RATIO:.0%}) short"
        lines.append(f"- {name} throughput: " + verdict(ratio >= TARGET_RATIO, f"{ratio:.2f} x", short))
        over = f"{added - TARGET_ADDED_MS:.2f} ms over"
        lines.append(f"- {name} added p50: " + verdict(added <= TARGET_ADDED_MS, f"{added:+.2f} ms", over))
    lines += ["", "Observations:", ""]
    for door, name in DOORS.items():
        served, (queue, infer, _), added = sv[door], r.server_ms[door], lat[door].p50 - raw.p50
        near = min(r.raw, key=lambda b: abs(b - served.avg_batch))
        lines.append(
            f"- {name}: batches of {served.avg_batch:.2f} on average; raw ORT at batch {near} gives "
            f"{r.raw[near]:.1f} images/s ({r.raw[near] / ref:.2f} x raw best), a bound on served throughput. "
            f"The client used {served.client_cores:.2f} cores, the server {served.server_cores:.2f} of "
            f"{len(os.sched_getaffinity(0))}. Of the added p50 at concurrency 1, {queue:.2f} ms is queueing "
            f"(time a lone request spent in the batcher's queue) and {added - queue:+.2f} ms the "
            f"rest (transport, codecs, request handling, noise); the engine's mean was {infer:.2f} ms."
        )
    lines.append(
        f"- With one instance and N clients in a closed loop, batches settle near N/2: half the clients "
        "wait in the queue, past the max queue delay, while the other half's batch runs.\n"
        f"- Noise: raw batch-{best} throughput changed {drift:+.0%} between before and after"
        f"{' (over 10 %: a noisy run, repeat it)' if abs(drift) > 0.1 else ''}; 1-minute load average "
        f"{r.load[0]:.2f} before, {r.load[1]:.2f} after."
    )
    return "\n".join(lines)


HEADER = """# Benchmarks

Measured with the scripts in `benchmarks/`. Each script rewrites only its own section, between HTML
comment markers, and keeps the rest of this file. Numbers come from one run on one machine: compare
them as ratios within a run, not across runs or machines.

Machine of the first run: {machine}.
"""


def write_section(
    path: Path, body: str, key: str = "serving", title: str = "Serving: medserve against raw ONNX Runtime"
) -> None:
    """Replace the section between ``<!-- key:start -->`` and ``<!-- key:end -->`` (or append it)."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    section = f"{start}\n## {title}\n\n{body}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER.format(machine=machine())
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """``--repository``, ``--output`` and ``--no-write``, as the report-writing benchmarks take them."""
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--output", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only; leave --output alone")


def run_report(
    script: str,
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    produce: Callable[[argparse.Namespace, str], Coroutine[Any, Any, str]],
    key: str,
    title: str,
) -> int:
    """Parse ``argv``, run ``produce(args, command)`` (the command line of ``benchmarks/<script>``, for
    the report), print the report and write it as the ``key`` section of ``--output`` unless
    ``--no-write``."""
    args = parser.parse_args(argv)
    command = shlex.join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])
    body = asyncio.run(produce(args, command))
    print(body)
    if not args.no_write:
        write_section(args.output, body, key, title)
    return 0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per served run")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up seconds per served run")
    parser.add_argument("--raw-seconds", type=float, default=4, help="seconds per raw batch size")
    parser.add_argument("--requests", type=int, default=200, help="sequential calls per latency series")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the latency series")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repository", type=Path, help=f"model repository (default {DEFAULT_REPOSITORY})")
    parser.add_argument("--output", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only; leave --output alone")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/serving.py", *(sys.argv[1:] if argv is None else argv)])
    repository = args.repository or DEFAULT_REPOSITORY
    if args.repository is None:
        build_example_repository(repository, models=[MODEL])
    load_before = os.getloadavg()[0]

    session = raw_session(repository)
    log(f"raw ORT ({session.get_providers()[0]}): throughput at batch sizes {BATCH_SIZES}")
    raw = raw_throughput(session, args.raw_seconds, BATCH_SIZES)
    x, check = (np.random.default_rng(seed).random((1, *SHAPE), dtype=np.float32) for seed in (3, 4))
    expected = session.run([OUTPUT], {INPUT: check})[0]

    with medserve(repository) as (pid, http, grpc):
        ports = {"grpc": grpc, "http": http}
        callers = {door: make_caller(door, port) for door, port in ports.items()}
        max_diff = {door: float(np.max(np.abs(call(check) - expected))) for door, call in callers.items()}
        if max(max_diff.values()) > 1e-5:
            raise RuntimeError(f"served outputs differ from raw ORT outputs by more than 1e-5: {max_diff}")
        log(f"latency: {args.requests} sequential calls each of raw, gRPC and HTTP")
        calls: dict[str, Call] = {"raw": lambda: session.run([OUTPUT], {INPUT: x})}
        calls.update({door: partial(call, x) for door, call in callers.items()})
        results = interleaved_latency(calls, args.requests, args.rounds, http)
        results.raw, results.max_diff = raw, max_diff
        results.batching = batching_of(repository)
        for door, port in ports.items():
            log(f"{door}: concurrency {args.concurrency} for {args.warmup:g} + {args.seconds:g} s")
            make = partial(make_caller, door, port)
            results.served[door] = served_throughput(make, args, http, pid)

    log(f"raw ORT: batch {results.best} again, to bound the drift")
    results.raw_after = raw_throughput(session, args.raw_seconds, (results.best,))[results.best]
    results.load = (load_before, os.getloadavg()[0])
    body = report(results, args, command)
    print(body)
    if not args.no_write:
        write_section(args.output, body)
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
