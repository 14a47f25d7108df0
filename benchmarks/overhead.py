"""Per-request cost of the server itself, measured on a model that does almost nothing.

On ``identity_fp32`` (a copy configured with no queue delay) with a chest X-ray sized tensor
(1×224×224 FP32, 196 KiB), compares p50 latency at concurrency 1 of raw ONNX Runtime with medserve
over gRPC and over HTTP with binary tensors. Because the engine takes microseconds here, the
difference is the server's (and the client library's) own overhead, measured far more precisely than
on a model whose run time itself varies by milliseconds on a shared machine.

    python benchmarks/overhead.py [--requests 3000] [--output docs/BENCHMARKS.md | --no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import machine, medserve, write_section  # noqa: E402

from medserve.demo.models.repository import build_example_repository  # noqa: E402

MODEL = "identity_fp32"


def prepare(root: Path) -> Path:
    build_example_repository(root, models=[MODEL])
    config_path = root / MODEL / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["dynamic_batching"]["max_queue_delay_us"] = 0
    config_path.write_text(yaml.safe_dump(config))
    return root / MODEL / "1" / "model.onnx"


def caller(door: str, port: int, x: np.ndarray) -> Any:
    lib: Any = grpcclient if door == "grpc" else httpclient
    binary: dict[str, bool] = {} if door == "grpc" else {"binary_data": True}
    client = lib.InferenceServerClient(f"127.0.0.1:{port}")
    outputs = [lib.InferRequestedOutput("OUTPUT0", **binary)]

    def call() -> np.ndarray:
        tensor = lib.InferInput("INPUT0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, **binary)
        result: np.ndarray = client.infer(MODEL, [tensor], outputs=outputs).as_numpy("OUTPUT0")
        return result

    return call


def p50s(calls: dict[str, Any], requests: int, rounds: int = 10) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(20):
                call()
            for _ in range(requests // rounds):
                start = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - start)
    return {name: float(np.percentile(s, 50)) * 1e3 for name, s in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--output", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    x = np.random.default_rng(0).random((1, 224 * 224), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = prepare(Path(tmp))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
        with medserve(Path(tmp)) as (_pid, http, grpc):
            calls = {
                "raw": lambda: session.run(None, {"INPUT0": x}),
                "grpc": caller("grpc", grpc, x),
                "http": caller("http", http, x),
            }
            np.testing.assert_array_equal(calls["grpc"](), x)
            np.testing.assert_array_equal(calls["http"](), x)
            result = p50s(calls, args.requests)
    command = "python benchmarks/overhead.py" + ("" if argv is None else " " + shlex.join(argv))
    body = "\n".join(
        [
            f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC with `{command}`; {machine()}.",
            "",
            f"`{MODEL}` with no queue delay, one 1×224×224 FP32 tensor (196 KiB) in and out, "
            f"{args.requests} sequential requests per door, interleaved in 10 rounds. The engine takes "
            "microseconds, so served − raw is the cost of client library + transport + server.",
            "",
            "| | raw ORT | gRPC | HTTP (binary) |",
            "|---|---:|---:|---:|",
            f"| p50 latency, ms | {result['raw']:.3f} | {result['grpc']:.3f} | {result['http']:.3f} |",
            f"| added p50 (served − raw), ms | – | {result['grpc'] - result['raw']:+.3f} | "
            f"{result['http'] - result['raw']:+.3f} |",
        ]
    )
    print(body)
    if not args.no_write:
        write_section(args.output, body, "overhead", "Per-request overhead of the server")
    return 0


if __name__ == "__main__":
    sys.exit(main())
