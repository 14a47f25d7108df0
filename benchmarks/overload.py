"""Overload with goodput: a real ``medserve serve`` under open-loop load far beyond its capacity.

For each model (``simple`` and ``chest_xray_classifier`` by default), against one server over HTTP
(binary tensors, keep-alive connections, each request carrying ``Request-Timeout: <deadline>``):

1. *capacity*: a closed loop of ``--concurrency`` clients for ``--capacity-seconds``; capacity is the
   rate of 200 answers;
2. *overload*: Poisson arrivals at each ``--loads`` multiple of that capacity for ``--seconds``. A
   request waits for its answer at most its deadline + 1 s, then the client gives up (closes the
   connection). A request goes on an idle connection, or a new one (at most ``--max-connections``).

Reported per point: *goodput* (200 answers within the deadline, per second of the arrival window) as a
ratio to the capacity measured in the same run; the share of requests answered (any HTTP answer: 200,
503 refused with ``Retry-After``, 504 expired) within deadline + 1 s; the server's resident memory
(RSS) growth over the point; and, from the server's metrics, inferences run whose answer was not a
200 within the deadline (work for clients that had given up) and queued requests dropped unrun.

The load generator is this script's own asyncio client (uvloop, pre-encoded requests, one raw
connection per in-flight request), in its own process, sharing the machine's cores with the server.
Prints a report and replaces the ``overload`` section of ``docs/BENCHMARKS.md``:

    python benchmarks/overload.py [--seconds 120] [--models simple] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import cpu_seconds, log, machine, medserve, run_report  # noqa: E402

PREBUILT = Path("/work/cache/prebuilt")
#: model -> (input names and shapes, FP32), default deadline in seconds, closed-loop clients
MODELS: dict[str, tuple[dict[str, tuple[int, ...]], float, int]] = {
    "simple": ({"INPUT0": (1, 16), "INPUT1": (1, 16)}, 1.0, 16),
    "chest_xray_classifier": ({"image": (1, 1, 224, 224)}, 5.0, 16),
}
GOODPUT_GOAL, ANSWERED_GOAL, MEMORY_GOAL = 0.8, 1.0, 0.05


def request_bytes(model: str, deadline_s: float) -> bytes:
    """One complete HTTP/1.1 inference request (binary tensor extension), ready to write."""
    shapes = MODELS[model][0]
    rng = np.random.default_rng(7)
    blobs = [rng.random(shape, dtype=np.float32).tobytes() for shape in shapes.values()]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": "FP32",
                    "shape": list(shape),
                    "parameters": {"binary_data_size": len(b)},
                }
                for (name, shape), b in zip(shapes.items(), blobs)
            ],
            "outputs": [],
        }
    ).encode()
    body = header + b"".join(blobs)
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: bench\r\n"
        f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n"
        f"Request-Timeout: {deadline_s:g}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def exchange(connection: Connection, payload: bytes) -> tuple[int, bool]:
    """Send ``payload`` and read the answer: (status, whether the connection may be reused)."""
    reader, writer = connection
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    await reader.readexactly(int(length.group(1)) if length else 0)
    return status, b"connection: close" not in head.lower()


@dataclass
class Tally:
    sent: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    in_time: int = 0  # 200 within the deadline
    late_200: int = 0
    answered_in_time: int = 0  # any HTTP answer within deadline + 1 s
    gave_up: int = 0  # no answer within deadline + 1 s
    failed: int = 0  # connection refused or reset before an answer
    no_connection: int = 0  # --max-connections in use: not sent
    latencies_ms: list[float] = field(default_factory=list)
    server_cpu: float = 0.0  # CPU seconds of the server process over the point
    client_cpu: float = 0.0  # CPU seconds of the load generator over the point


class Client:
    def __init__(self, port: int, payload: bytes, deadline_s: float, max_connections: int) -> None:
        self.port, self.payload, self.deadline_s = port, payload, deadline_s
        self.max_connections = max_connections
        self.idle: list[Connection] = []
        self.open = 0

    async def one(self, tally: Tally) -> None:
        if self.idle:
            connection = self.idle.pop()
        elif self.open >= self.max_connections:
            tally.no_connection += 1
            return
        else:
            self.open += 1
            try:
                connection = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.open -= 1
                tally.failed += 1
                return
        tally.sent += 1
        started = time.perf_counter()
        reusable = False
        try:
            async with asyncio.timeout(self.deadline_s + 1.0):
                status, reusable = await exchange(connection, self.payload)
        except TimeoutError:
            tally.gave_up += 1
            self._close(connection)
            return
        except (OSError, asyncio.IncompleteReadError, ValueError):
            tally.failed += 1
            self._close(connection)
            return
        elapsed = time.perf_counter() - started
        tally.statuses[status] += 1
        tally.answered_in_time += 1
        if status == 200:
            tally.latencies_ms.append(elapsed * 1000)
            if elapsed <= self.deadline_s:
                tally.in_time += 1
            else:
                tally.late_200 += 1
        if reusable:
            self.idle.append(connection)
        else:
            self._close(connection)

    def _close(self, connection: Connection) -> None:
        self.open -= 1
        connection[1].close()

    async def closed_loop(self, concurrency: int, seconds: float) -> Tally:
        tally = Tally()
        end = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < end:
                await self.one(tally)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return tally

    async def open_loop(self, rate: float, seconds: float, seed: int) -> Tally:
        """Poisson arrivals at ``rate`` a second for ``seconds``; returns once every one is settled."""
        tally = Tally()
        rng = np.random.default_rng(seed)
        gaps = rng.exponential(1 / rate, int(rate * seconds * 1.2) + 10)
        dues = np.cumsum(gaps)
        dues = dues[dues < seconds]
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        index = 0
        while index < len(dues):
            now = time.perf_counter() - start
            while index < len(dues) and dues[index] <= now:
                task = asyncio.get_running_loop().create_task(self.one(tally))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                index += 1
            await asyncio.sleep(max(0.0, min(0.002, (dues[index] if index < len(dues) else now) - now)))
        while tasks:
            await asyncio.gather(*list(tasks))
        return tally

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


def rss_bytes(pid: int) -> int:
    found = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(found.group(1)) * 1024 if found else 0


def server_counts(http: int, model: str) -> dict[str, float]:
    """Inferences run and requests dropped unrun, from the server's Prometheus text (asked again while
    the server still has its connection limit's worth of connections open)."""
    for _ in range(120):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=30) as reply:
                text = reply.read().decode()
            break
        except urllib.error.HTTPError as error:
            if error.code != 503:
                raise
            time.sleep(0.5)
    else:
        raise RuntimeError("the server's metrics stayed unavailable for a minute")
    counts: dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        if f'model="{model}"' not in line:
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("medserve_inference_count_total"):
            counts["inferences"] += float(value)
        elif name.startswith("medserve_requests_dropped_total"):
            reason = re.search(r'reason="([^"]+)"', name)
            counts[f"dropped_{reason.group(1) if reason else '?'}"] += float(value)
    return counts


@dataclass
class Point:
    load: float
    rate: float
    seconds: float
    tally: Tally
    rss_before: int
    rss_after: int
    server: dict[str, float]

    @property
    def goodput(self) -> float:
        return self.tally.in_time / self.seconds

    @property
    def answered_share(self) -> float:
        asked = self.tally.sent + self.tally.no_connection
        return self.tally.answered_in_time / asked if asked else 0.0

    @property
    def memory_growth(self) -> float:
        return (self.rss_after - self.rss_before) / self.rss_before if self.rss_before else 0.0


@dataclass
class ModelRun:
    model: str
    deadline_s: float
    concurrency: int
    capacity: float  # rate of 200 answers of the closed loop
    reference: float  # highest rate of 200 answers, closed loop or overload: goodput is compared with it
    capacity_p50_ms: float
    points: list[Point]
    rss_start: int
    rss_end: int


async def run_model(args: argparse.Namespace, model: str, pid: int, http: int) -> ModelRun:
    deadline_s = args.deadline if args.deadline is not None else MODELS[model][1]
    concurrency = args.concurrency or MODELS[model][2]
    client = Client(http, request_bytes(model, deadline_s), deadline_s, args.max_connections)
    log(f"{model}: warm-up {args.warmup:g} s")  # twice the clients: the engine meets its largest batches
    await client.closed_loop(2 * concurrency, args.warmup)
    log(f"{model}: closed loop of {concurrency} for {args.capacity_seconds:g} s")
    closed = await client.closed_loop(concurrency, args.capacity_seconds)
    rss_start = rss_bytes(pid)
    capacity = closed.statuses[200] / args.capacity_seconds
    p50 = float(np.percentile(closed.latencies_ms, 50)) if closed.latencies_ms else float("nan")
    log(f"{model}: capacity {capacity:.1f} req/s (p50 {p50:.1f} ms)")
    points = []
    for i, load in enumerate(args.loads):
        rate = load * capacity
        before, rss_before = server_counts(http, model), rss_bytes(pid)
        log(f"{model}: open loop at {load:g}x = {rate:.0f} req/s for {args.seconds:g} s")
        cpu0, own0 = cpu_seconds(pid), time.process_time()
        tally = await client.open_loop(rate, args.seconds, seed=i)
        tally.server_cpu = cpu_seconds(pid) - cpu0
        tally.client_cpu = time.process_time() - own0
        await asyncio.sleep(args.settle)
        after, rss_after = server_counts(http, model), rss_bytes(pid)
        server = {key: after[key] - before.get(key, 0.0) for key in after}
        point = Point(load, rate, args.seconds, tally, rss_before, rss_after, server)
        log(
            f"{model} {load:g}x: sent {tally.sent}, statuses {dict(tally.statuses)}, "
            f"gave up {tally.gave_up}, "
            f"goodput {point.goodput:.1f}/s = {point.goodput / capacity:.2f} of capacity, "
            f"answered {point.answered_share:.1%}; CPU s server {tally.server_cpu:.1f}, "
            f"client {tally.client_cpu:.1f}; no connection {tally.no_connection}, failed {tally.failed}"
        )
        points.append(point)
    client.close()
    # on a shared machine the closed loop may be the more disturbed measurement: the reference is the
    # highest rate of 200 answers seen, closed loop or during the overload (as benchmarks/priority.py)
    reference = max([capacity, *(p.tally.statuses[200] / p.seconds for p in points)])
    return ModelRun(
        model, deadline_s, concurrency, capacity, reference, p50, points, rss_start, rss_bytes(pid)
    )


def report(runs: list[ModelRun], args: argparse.Namespace, command: str, loads: tuple[float, float]) -> str:
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}. Load average (1 min) before / after: {loads[0]:.2f} / {loads[1]:.2f}"
        + (" (high: the machine was shared, figures are noisy)" if max(loads) > 2 else "")
        + ".",
        "",
        "Load generator: this script's asyncio client (uvloop, pre-encoded binary-tensor requests, raw "
        "HTTP/1.1 keep-alive connections), one process, on the same cores as the server. Every request "
        "carries `Request-Timeout: <deadline>`; the client waits deadline + 1 s, then gives up. Capacity: "
        f"rate of 200 answers of a closed loop ({', '.join(f'{r.model}: {r.concurrency}' for r in runs)} "
        f"clients) for {args.capacity_seconds:g} s, in the same run, just before the overload points; the "
        "reference for goodput is the highest rate of 200 answers seen in the run (closed loop or overload), "
        "as the closed loop is the more disturbed measurement on a shared machine. Offered rates are "
        "multiples of the closed-loop capacity. "
        f"Open-loop Poisson arrivals for {args.seconds:g} s per point.",
        "",
        "| model | deadline | capacity (closed loop) | reference | load | offered | sent | 200 in time | "
        "goodput / reference | "
        "503 | 504 | late 200 | no answer in deadline + 1 s | answered within deadline + 1 s | "
        "ran but not a 200 in time | dropped unrun | RSS growth |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for p in run.points:
            t = p.tally
            wasted = max(0.0, p.server.get("inferences", 0.0) - t.in_time)
            dropped = sum(v for k, v in p.server.items() if k.startswith("dropped_"))
            lines.append(
                f"| {run.model} | {run.deadline_s:g} s | {run.capacity:.1f}/s | {run.reference:.1f}/s | "
                f"{p.load:g}x | "
                f"{p.rate:.0f}/s | "
                f"{t.sent / p.seconds:.0f}/s | {t.in_time} | **{p.goodput / run.reference:.2f}** | "
                f"{t.statuses[503]} | {t.statuses[504]} | {t.late_200} | "
                f"{t.gave_up + t.failed + t.no_connection} | "
                f"**{p.answered_share:.1%}** | {wasted:.0f} | {dropped:.0f} | {p.memory_growth:+.1%} |"
            )
    lines += [
        "",
        "Goals: goodput >= 0.8 of the reference, every request answered within deadline + 1 s, "
        "RSS growth < 5 %.",
    ]
    for run in runs:
        worst = min(run.points, key=lambda p: p.goodput)
        growth = (run.rss_end - run.rss_start) / run.rss_start if run.rss_start else 0.0
        met = [
            worst.goodput / run.reference >= GOODPUT_GOAL,
            min(p.answered_share for p in run.points) >= ANSWERED_GOAL,
            growth < MEMORY_GOAL,
        ]
        lines.append(
            f"- {run.model}: goodput {'met' if met[0] else 'not met'} "
            f"(worst {worst.goodput / run.reference:.2f}); answered {'met' if met[1] else 'not met'} "
            f"(worst {min(p.answered_share for p in run.points):.1%}); "
            f"memory {'met' if met[2] else 'not met'} (RSS {run.rss_start / 2**20:.0f} -> "
            f"{run.rss_end / 2**20:.0f} MiB over the overload points, {growth:+.1%})"
        )
    return "\n".join(lines) + "\n"


async def produce(args: argparse.Namespace, command: str) -> str:
    folder = Path(tempfile.mkdtemp(prefix="medserve-overload-"))
    for model in args.models:
        shutil.copytree(args.repository / model, folder / model)
    loads = [os.getloadavg()[0], 0.0]
    runs = []
    try:
        with medserve(folder) as (pid, http, _grpc):
            for model in args.models:
                runs.append(await run_model(args, model, pid, http))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    loads[1] = os.getloadavg()[0]
    return report(runs, args, command, (loads[0], loads[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=PREBUILT, help="built example models")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--loads", nargs="+", type=float, default=[5.0, 10.0], help="multiples of capacity")
    parser.add_argument("--seconds", type=float, default=20, help="open-loop seconds per point (120: long)")
    parser.add_argument("--capacity-seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--settle", type=float, default=2, help="seconds after a point before reading RSS")
    parser.add_argument("--concurrency", type=int, help="closed-loop clients (default: per model)")
    parser.add_argument("--deadline", type=float, help="client deadline in s (default: per model)")
    parser.add_argument("--max-connections", type=int, default=4000, help="client's open connections")
    parser.add_argument("--output", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only; leave --output alone")
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    return run_report("overload.py", parser, argv, produce, "overload", "Overload: goodput beyond capacity")


if __name__ == "__main__":
    raise SystemExit(main())
