"""What authentication and the audit trail cost: throughput with both on vs both off.

Three servers over the same repository run side by side: *off* (``auth_disabled`` and
``audit_disabled``), *on* as deployed by default (bearer-token authentication, an audit record per
inference with input and output digests, in the journal before each answer) and *on + fsync*
(``audit_fsync``: each record on the disk before the answer). ``--concurrency`` client threads (HTTP,
binary tensors, batch 1) load one server at a time, in alternating rounds, so all see the same
machine; ratios of the medians are reported. Models: ``simple`` (two 1×16 FP32 inputs, microseconds
of compute, where any overhead shows) and ``chest_xray_classifier`` (DenseNet-121, 224×224).

    python benchmarks/trust.py [--seconds 8] [--rounds 3] [--concurrency 8] [--output docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import cpu_seconds, machine, medserve, write_section  # noqa: E402

from medserve.demo.models.repository import build_example_repository  # noqa: E402

MODELS: dict[str, dict[str, tuple[int, ...]]] = {
    "simple": {"INPUT0": (1, 16), "INPUT1": (1, 16)},
    "chest_xray_classifier": {"image": (1, 1, 224, 224)},
}


def make_caller(port: int, model: str, token: str) -> Callable[[], None]:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    rng = np.random.default_rng(3)
    tensors = []
    for name, shape in MODELS[model].items():
        tensor = httpclient.InferInput(name, list(shape), "FP32")
        tensor.set_data_from_numpy(rng.random(shape, dtype=np.float32), binary_data=True)
        tensors.append(tensor)

    def call() -> None:
        client.infer(model, tensors, headers=headers)

    return call


def throughput(
    port: int, pid: int, model: str, token: str, concurrency: int, seconds: float
) -> tuple[float, float]:
    """Inferences per second, and the server's CPU microseconds per inference, under the load."""
    stop, errors, counts = threading.Event(), [], [0] * concurrency

    def worker(i: int) -> None:
        try:
            call = make_caller(port, model, token)
            call()
            while not stop.is_set():
                call()
                counts[i] += 1
        except Exception as exc:  # reported after the run
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # warm-up
    start_counts, t0, cpu0 = sum(counts), time.perf_counter(), cpu_seconds(pid)
    time.sleep(seconds)
    done, elapsed, cpu = sum(counts) - start_counts, time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    stop.set()
    for thread in threads:
        thread.join(60)
    if errors:
        raise RuntimeError(f"{len(errors)} worker(s) failed: {errors[0]!r}")
    return done / elapsed, cpu / max(done, 1) * 1e6


def admin_token(data_dir: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "medserve", "tokens", "create", "--role", "service", "--name", "benchmark"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MEDSERVE_DATA_DIR": str(data_dir)},
    )
    return done.stdout.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per round (8)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per configuration (3)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--output", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    command = "python benchmarks/trust.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repository"
        build_example_repository(repository, models=args.models)
        secured_data = Path(tmp) / "secured"
        token = admin_token(secured_data)
        secured = {"MEDSERVE_AUTH_DISABLED": "false", "MEDSERVE_DATA_DIR": str(secured_data)}
        configurations = {
            "off": ({"MEDSERVE_AUTH_DISABLED": "true", "MEDSERVE_AUDIT_DISABLED": "true"}, ""),
            "on": (secured, token),
            "on + fsync": ({**secured, "MEDSERVE_AUDIT_FSYNC": "true"}, token),
        }
        with contextlib.ExitStack() as stack:
            servers = {
                name: (stack.enter_context(medserve(repository, env)), key)
                for name, (env, key) in configurations.items()
            }
            for model in args.models:
                runs: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
                for _ in range(args.rounds):
                    for name, ((pid, port, _grpc), key) in servers.items():
                        runs[name].append(throughput(port, pid, model, key, args.concurrency, args.seconds))
                    print(model, {n: [round(v) for v in r[-1]] for n, r in runs.items()}, flush=True)
                rows.append(
                    (
                        model,
                        {n: float(np.median([rate for rate, _ in r])) for n, r in runs.items()},
                        {n: float(np.median([cpu for _, cpu in r])) for n, r in runs.items()},
                    )
                )
    lines = [
        f"Measured {dt.date.today().isoformat()} on {machine()}, HTTP with binary tensors, batch 1, "
        f"{args.concurrency} client threads, {args.rounds} alternating rounds of {args.seconds:.0f} s "
        "(medians). *Off*: `auth_disabled` and `audit_disabled`. *On* (the default): bearer-token "
        "authentication and an audit record per inference, with input and output digests, in the journal "
        "before each answer. *On + fsync*: `audit_fsync`, each record on the disk before the answer.",
        "",
        f"    {command}",
        "",
        "| model | off (inferences/s) | on | on / off | on + fsync | on + fsync / off |"
        " server CPU µs per inference, off / on / on + fsync |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, rate, cpu in rows:
        off, on, synced = rate["off"], rate["on"], rate["on + fsync"]
        lines.append(
            f"| `{model}` | {off:.0f} | {on:.0f} | {on / off:.3f} | {synced:.0f} | {synced / off:.3f} "
            f"| {cpu['off']:.0f} / {cpu['on']:.0f} / {cpu['on + fsync']:.0f} |"
        )
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(args.output, body, "trust", "Authentication and audit overhead")
    return 0


if __name__ == "__main__":
    sys.exit(main())
