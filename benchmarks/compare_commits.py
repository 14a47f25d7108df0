"""Per-request server cost of this tree against an earlier commit, both serving at once.

Checks out ``--base`` in a temporary git worktree (its gRPC message code generated there), starts it
and this tree side by side on the same model repository, and sends sequential batch-1 requests to
each over gRPC and HTTP (binary tensors), alternating between the four in rounds, so that a shared
machine's drift hits all of them alike. The model is ``identity_fp32`` with no queue delay and a
chest X-ray sized tensor (1×50176 FP32, 196 KiB): the engine takes microseconds, so the figures are
the servers' (and the client libraries') own cost. Prints a markdown report and replaces the
``commits`` section of ``docs/BENCHMARKS.md``:

    python benchmarks/compare_commits.py --base 55887ca [--rounds 20] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import machine, write_section  # noqa: E402

from medserve.demo.models.repository import build_example_repository  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "identity_fp32"
ELEMENTS = 224 * 224


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _worktree(rev: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="medserve-base-"))
    tree = folder / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True)
    try:
        subprocess.run(
            [sys.executable, "medserve/protocol/build_proto.py"], cwd=tree, check=True, capture_output=True
        )
        yield tree
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _server(tree: Path, repository: Path, log: Path) -> Iterator[tuple[int, int]]:
    http_port, grpc_port = _free_port(), _free_port()
    data = Path(tempfile.mkdtemp(prefix="medserve-data-"))
    env = dict(
        os.environ,
        PYTHONPATH=str(tree),
        MEDSERVE_AUTH_DISABLED="true",
        MEDSERVE_DATA_DIR=str(data),
        MEDSERVE_LOG_LEVEL="warning",
        MEDSERVE_DICOM_PORT="-1",
    )
    command = [sys.executable, "-m", "medserve", "serve", "--repository", str(repository)]
    command += ["--http-port", str(http_port), "--grpc-port", str(grpc_port)]
    with log.open("w") as err:
        proc = subprocess.Popen(command, env=env, cwd=data, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server of {tree} did not start: see {log}") from None
                time.sleep(0.2)
        yield http_port, grpc_port
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(data, ignore_errors=True)


def _caller(door: str, port: int, x: np.ndarray) -> Callable[[], Any]:
    lib: Any = grpcclient if door == "gRPC" else httpclient
    binary: dict[str, bool] = {} if door == "gRPC" else {"binary_data": True}
    client = lib.InferenceServerClient(f"127.0.0.1:{port}")
    outputs = [lib.InferRequestedOutput("OUTPUT0", **binary)]

    def call() -> Any:
        tensor = lib.InferInput("INPUT0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, **binary)
        return client.infer(MODEL, [tensor], outputs=outputs)

    return call


def _measure(calls: dict[str, Callable[[], Any]], rounds: int, per_round: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(10):
                call()
            for _ in range(per_round):
                start = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - start)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the earlier commit to compare with")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=100, help="timed calls per door and round")
    parser.add_argument("--output", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    command = shlex.join(
        ["python", "benchmarks/compare_commits.py", *(sys.argv[1:] if argv is None else argv)]
    )
    base = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", args.base],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    x = np.random.default_rng(0).random((1, ELEMENTS), dtype=np.float32)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as stack:
        repository = Path(scratch) / "repository"
        build_example_repository(repository, models=[MODEL])
        config_path = repository / MODEL / "config.yaml"
        config = yaml.safe_load(config_path.read_text())
        config["dynamic_batching"]["max_queue_delay_us"] = 0
        config_path.write_text(yaml.safe_dump(config))
        base_tree = stack.enter_context(_worktree(args.base))
        calls: dict[str, Callable[[], Any]] = {}
        for label, tree in ((f"{base} (base)", base_tree), (f"{head} (this tree)", ROOT)):
            http_port, grpc_port = stack.enter_context(
                _server(tree, repository, Path(scratch) / f"{label[:7]}.log")
            )
            calls[f"{label}, gRPC"] = _caller("gRPC", grpc_port, x)
            calls[f"{label}, HTTP"] = _caller("HTTP", http_port, x)
        samples = _measure(calls, args.rounds, args.per_round)
    load_after = os.getloadavg()[0]
    p50 = {name: float(np.percentile(s, 50)) * 1e3 for name, s in samples.items()}
    p90 = {name: float(np.percentile(s, 90)) * 1e3 for name, s in samples.items()}
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{command}`.",
        f"Machine: {machine()}. Client and both servers share it; 1-minute load average {load_before:.2f} "
        f"before, {load_after:.2f} after.",
        "",
        f"Model `{MODEL}` (no queue delay), one FP32 tensor of {ELEMENTS} elements (196 KiB) in and out; "
        f"{args.rounds} rounds of {args.per_round} sequential calls per server and door, alternating.",
        "",
        "| Server, door | p50 ms | p90 ms |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {p50[name]:.3f} | {p90[name]:.3f} |" for name in samples]
    lines.append("")
    for door in ("gRPC", "HTTP"):
        old = p50[f"{base} (base), {door}"]
        new = p50[f"{head} (this tree), {door}"]
        lines.append(f"- {door}: this tree / base p50 = {new / old:.2f} ({new - old:+.3f} ms).")
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(args.output, body, "commits", "Server cost per request against an earlier commit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
