"""Cost of the cluster hop: medserve serving in-process against medserve in cluster mode, same machine.

Starts a local Ray cluster (a head offering no CPU and one worker node with this machine's cores) and
two servers over the same repository (``simple`` and the DenseNet-121 ``chest_xray_classifier``): one
running its engines in-process, one with ``--cluster`` running them as Ray Serve replicas on the worker
node. Measures, per model, gRPC latency at concurrency 1 (both servers interleaved in rounds, so drift
hits both alike) and throughput at ``--concurrency`` in-flight batch-1 requests (alternating, two
rounds each). Reports added p50 and the throughput ratio against the goal (<= 1 ms added p50 and
>= 0.9 of in-process throughput on the DenseNet):

    python benchmarks/cluster.py --repository /work/cache/prebuilt --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).parent))
from serving import add_report_arguments, closed_loop, completed, log, machine, medserve, run_report  # noqa: E402

#: model -> (inputs: name, shape of one request; the output to fetch)
MODELS: dict[str, tuple[list[tuple[str, tuple[int, ...]]], str]] = {
    "simple": ([("INPUT0", (1, 16)), ("INPUT1", (1, 16))], "OUTPUT0"),
    "chest_xray_classifier": ([("image", (1, 1, 224, 224))], "probabilities"),
}
GOAL_ADDED_MS, GOAL_RATIO = 1.0, 0.9

Call = Callable[[], np.ndarray]


def caller(port: int, model: str) -> Call:
    """One gRPC client sending one fixed request of ``model``; call it from one thread."""
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    specs, output = MODELS[model]
    rng = np.random.default_rng(3)
    tensors = []
    for name, shape in specs:
        tensor = grpcclient.InferInput(name, list(shape), "FP32")
        tensor.set_data_from_numpy(rng.random(shape, dtype=np.float32))
        tensors.append(tensor)
    wanted = [grpcclient.InferRequestedOutput(output)]

    def call() -> np.ndarray:
        result: np.ndarray = client.infer(model, tensors, outputs=wanted).as_numpy(output)
        return result

    return call


def latency(calls: dict[str, Call], count: int, rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {mode: [] for mode in calls}
    for _ in range(rounds):
        for mode, call in calls.items():
            for _ in range(3):
                call()
            for _ in range(count // rounds):
                start = time.perf_counter()
                call()
                samples[mode].append((time.perf_counter() - start) * 1e3)
    return samples


def throughput(port: int, model: str, concurrency: int, seconds: float, warmup: float) -> float:
    with closed_loop(lambda: caller(port, model), concurrency) as stamps:
        time.sleep(warmup)
        t0 = time.perf_counter()
        time.sleep(seconds)
        t1 = time.perf_counter()
    return completed(stamps, t0, t1) / (t1 - t0)


class Echo:
    """A replica or actor that answers with what it was sent: Ray's own round trip, without an engine."""

    def run(self, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return x


def ray_floor(address: str, calls: int) -> dict[str, float]:
    """Median round trip (ms) of a 16-float batch to an echo, as a plain Ray actor call and through a
    Ray Serve deployment handle (by value, the way medserve sends small batches), on the same cluster."""
    import ray
    from ray import serve

    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        serve.start(proxy_location="Disabled")
        app = serve.deployment(name="echo", max_ongoing_requests=1, ray_actor_options={"num_cpus": 0})(
            Echo
        ).bind()
        handle = serve.run(app, name="medserve-bench-echo", route_prefix=None)
        by_value = handle.options(method_name="run", _by_reference=False)
        actor = ray.remote(num_cpus=0)(Echo).remote()  # type: ignore[call-overload]
        x = {"INPUT0": np.ones((1, 16), np.float32)}
        ways = {
            "Ray actor call": lambda: ray.get(actor.run.remote(x)),
            "Ray Serve handle": lambda: by_value.remote(x).result(),
        }
        floor = {}
        for name, call in ways.items():
            for _ in range(20):
                call()
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                call()
                times.append((time.perf_counter() - start) * 1e3)
            floor[name] = float(np.median(times))
        return floor
    finally:
        serve.shutdown()  # the echo, and the deployments the stopped cluster server left running
        ray.shutdown()


@contextlib.contextmanager
def ray_cluster(cpus: int) -> Iterator[str]:
    nodes = Cluster(
        initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    try:
        nodes.add_node(num_cpus=cpus)
        nodes.wait_for_nodes()
        yield str(nodes.address)
    finally:
        nodes.shutdown()


async def produce(args: argparse.Namespace, command: str) -> str:
    import os

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="medserve-cluster-bench-") as folder:
        repository = Path(folder) / "repository"
        for model in args.models:
            shutil.copytree(args.repository / model, repository / model)
        rows: list[str] = []
        with ray_cluster(cpus) as address:
            log(f"Ray cluster at {address}: a head without CPUs and one worker node with {cpus} CPUs")
            with (
                medserve(repository) as (_, _, local_port),
                medserve(repository, {"MEDSERVE_CLUSTER_ADDRESS": address}) as (_, _, cluster_port),
            ):
                for model in args.models:
                    log(f"{model}: latency at concurrency 1")
                    samples = latency(
                        {"local": caller(local_port, model), "cluster": caller(cluster_port, model)},
                        args.requests,
                        args.rounds,
                    )
                    rates: dict[str, list[float]] = {"local": [], "cluster": []}
                    for _ in range(2):
                        for mode, port in (("local", local_port), ("cluster", cluster_port)):
                            log(f"{model}: throughput at concurrency {args.concurrency}, {mode}")
                            rates[mode].append(
                                throughput(port, model, args.concurrency, args.seconds, args.warmup)
                            )
                    rows.append(row(model, samples, rates))
            log("Ray's own round trip")
            floor = await asyncio.to_thread(ray_floor, address, args.requests)  # handles block: no loop
    return report(rows, args, command, cpus, floor)


def row(model: str, samples: dict[str, list[float]], rates: dict[str, list[float]]) -> str:
    p50 = {mode: float(np.percentile(s, 50)) for mode, s in samples.items()}
    p99 = {mode: float(np.percentile(s, 99)) for mode, s in samples.items()}
    rate = {mode: float(np.mean(r)) for mode, r in rates.items()}
    added, ratio = p50["cluster"] - p50["local"], rate["cluster"] / rate["local"]
    goal = ""
    if model == "chest_xray_classifier":
        met = added <= GOAL_ADDED_MS and ratio >= GOAL_RATIO
        goal = "met" if met else f"missed (goal <= {GOAL_ADDED_MS:g} ms and >= {GOAL_RATIO:g})"
    return (
        f"| {model} | {p50['local']:.2f} / {p99['local']:.2f} | {p50['cluster']:.2f} / {p99['cluster']:.2f} "
        f"| {added:+.2f} | {rate['local']:.1f} | {rate['cluster']:.1f} | {ratio:.2f} | {goal} |"
    )


def report(rows: list[str], args: Any, command: str, cpus: int, floor: dict[str, float]) -> str:
    floors = ", ".join(f"{name} {ms:.2f} ms" for name, ms in floor.items())
    return "\n".join(
        [
            f"`{command}` on {machine()}; {time.strftime('%Y-%m-%d')}.",
            "",
            "Both servers run on this machine: in-process engines, and engines as Ray Serve replicas on a "
            f"local Ray worker node with {cpus} CPUs (the head offers none), called through deployment "
            "handles. gRPC, batch-1 requests; latency at concurrency 1 interleaved in "
            f"{args.rounds} rounds of {args.requests // args.rounds} requests per server; throughput at "
            f"concurrency {args.concurrency}, {args.seconds:g} s per run, two runs per server, alternating.",
            "",
            "| model | in-process p50 / p99 ms | cluster p50 / p99 ms | added p50 ms | in-process req/s "
            "| cluster req/s | ratio | goal |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Ray's own round trip on the same cluster (a 16-float batch to an echo, median of "
            f"{args.requests}): {floors}. The hop cannot cost less than the handle's round trip.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_report_arguments(parser)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--requests", type=int, default=300, help="latency requests per server and model")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    return run_report("cluster.py", parser, argv, produce, "cluster", "Cluster mode: the cost of the hop")


if __name__ == "__main__":
    raise SystemExit(main())
