"""The server's own cost per request: a tiny MLP over HTTP and gRPC, against minimal echo servers.

``tiny_mlp`` (FP32 [32] -> 64 ReLU -> [8], seeded weights, built with the test models' ONNX helpers)
is served by a real ``medserve serve`` with dynamic batching (max batch 32, 1 ms queue delay), one
ONNX Runtime thread, bearer tokens and the audit trail ON (the defaults). The engine takes about
10 µs a call, so nearly all the server's CPU is its own request path.

For each door a lean client drives closed loops at each ``--concurrency``: over HTTP raw HTTP/1.1
keep-alive connections on asyncio sockets (one per client, binary tensor extension, the request
bytes pre-built); over gRPC one ``grpc.aio`` channel with a pre-built ``ModelInferRequest``. The
ceiling is a minimal echo server answering the same request with the same bytes medserve answered
(captured once): a starlette app under uvicorn for HTTP, a ``grpc.aio`` servicer for gRPC, each in
its own process. Reported per point: requests/s, p50/p99 latency, and the server process's CPU per
request (utime + stime from ``/proc/<pid>/stat`` before and after).

    python benchmarks/tiny.py [--seconds 5] [--concurrency 1 8 32] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import cpu_seconds, free_port, log, machine, medserve, run_report  # noqa: E402

from medserve.demo.models._spec import ExampleModel  # noqa: E402
from medserve.demo.models.config_file import write_config  # noqa: E402
from medserve.demo.models.test_models import _model, _value_info  # noqa: E402

MODEL, INPUT, OUTPUT = "tiny_mlp", "x", "y"
FEATURES, HIDDEN, CLASSES = 32, 64, 8


def tiny_mlp(seed: int = 0) -> Any:
    """FP32 [batch, 32] -> MatMul/Add/ReLU to 64 -> MatMul/Add to [batch, 8]; weights seeded."""
    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.standard_normal((FEATURES, HIDDEN), dtype=np.float32) * 0.2,
        "b1": rng.standard_normal(HIDDEN, dtype=np.float32) * 0.1,
        "w2": rng.standard_normal((HIDDEN, CLASSES), dtype=np.float32) * 0.2,
        "b2": rng.standard_normal(CLASSES, dtype=np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("MatMul", [INPUT, "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
        helper.make_node("Add", ["h3", "b2"], [OUTPUT]),
    ]
    return _model(
        MODEL,
        nodes,
        [_value_info(INPUT, "FP32", ["batch", FEATURES])],
        [_value_info(OUTPUT, "FP32", ["batch", CLASSES])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )


def build_repository(directory: Path) -> None:
    import onnx

    example = ExampleModel(
        name=MODEL,
        config={
            "runtime": "onnxruntime",
            "max_batch_size": 32,
            "inputs": [{"name": INPUT, "datatype": "FP32", "dims": [FEATURES]}],
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "dims": [CLASSES]}],
            "dynamic_batching": {"max_queue_delay_us": 1000},
            "instance_count": 1,
            "runtime_options": {"intra_op_threads": 1, "inter_op_threads": 1},
            "metadata": {"task": "benchmark fixture", "research_use_only": True},
        },
        write=lambda _version, path: onnx.save(tiny_mlp(), str(path)),
    )
    folder = directory / MODEL
    (folder / "1").mkdir(parents=True)
    write_config(folder / "config.yaml", example)
    example.write(1, folder / "1" / "model.onnx")


def sample() -> np.ndarray:
    return np.random.default_rng(7).random((1, FEATURES), dtype=np.float32)


# --- HTTP ---------------------------------------------------------------------------------------


def http_request(token: str) -> bytes:
    x = sample()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": INPUT,
                    "datatype": "FP32",
                    "shape": [1, FEATURES],
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + x.tobytes()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: bench\r\n{auth}"
        f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def http_exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> tuple[int, bytes, bytes]:
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    body = await reader.readexactly(int(found.group(1)) if found else 0)
    return int(head[9:12]), head, body


async def http_loop(port: int, payload: bytes, concurrency: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                status, _, body = await http_exchange(reader, writer, payload)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
                latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def http_capture(port: int, payload: bytes) -> tuple[int, bytes]:
    """medserve's answer to ``payload``: (Inference-Header-Content-Length, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    status, head, body = await http_exchange(reader, writer, payload)
    writer.close()
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
    found = re.search(rb"(?i)\r\ninference-header-content-length: *(\d+)", head)
    return (int(found.group(1)) if found else len(body)), body


def serve_http_echo(port: int, answer: Path) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    saved = json.loads(answer.read_text())
    body, header_length = bytes.fromhex(saved["body"]), str(saved["header_length"])

    async def infer(request: Request) -> Response:
        await request.body()
        return Response(
            body,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": header_length},
        )

    app = Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- gRPC ---------------------------------------------------------------------------------------


def grpc_request() -> Any:
    from medserve.protocol.grpc_messages import pb

    x = sample()
    request = pb.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name=INPUT, datatype="FP32", shape=[1, FEATURES])
    del tensor
    request.outputs.add(name=OUTPUT)
    request.raw_input_contents.append(x.tobytes())
    return request


METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def grpc_loop(port: int, request: Any, token: str, concurrency: int, seconds: float) -> list[float]:
    import grpc

    from medserve.protocol.grpc_messages import pb

    latencies: list[float] = []
    end = time.perf_counter() + seconds
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            METHOD,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.ModelInferResponse.FromString,
        )

        async def worker() -> None:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                await call(request, metadata=metadata)
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def grpc_capture(port: int, request: Any, token: str) -> bytes:
    import grpc

    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            METHOD, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None
        )
        answer: bytes = await call(request, metadata=metadata)
    return answer


def serve_grpc_echo(port: int, answer: Path) -> None:
    import grpc

    from medserve.protocol.grpc_messages import pb

    body = bytes.fromhex(json.loads(answer.read_text())["body"])

    async def infer(request: Any, context: Any) -> bytes:
        return body

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(
            infer, request_deserializer=pb.ModelInferRequest.FromString
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": handler}),)
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


@contextlib.contextmanager
def echo_server(door: str, answer: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    command = [sys.executable, __file__, "--echo", door, str(port), str(answer)]
    process = subprocess.Popen(command)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {door} echo server did not start")
            time.sleep(0.1)
        yield process.pid, port
    finally:
        process.terminate()
        process.wait(30)


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Point:
    server: str
    door: str
    concurrency: int
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_us: float


async def measure(
    pid: int, server: str, door: str, port: int, args: argparse.Namespace, token: str
) -> list[Point]:
    points = []
    payload = http_request(token) if door == "http" else grpc_request()
    for concurrency in args.concurrency:
        if door == "http":
            await http_loop(port, payload, concurrency, args.warmup)
        else:
            await grpc_loop(port, payload, token, concurrency, args.warmup)
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        if door == "http":
            latencies = await http_loop(port, payload, concurrency, args.seconds)
        else:
            latencies = await grpc_loop(port, payload, token, concurrency, args.seconds)
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
        ms = np.array(latencies) * 1000
        point = Point(
            server,
            door,
            concurrency,
            len(latencies) / elapsed,
            float(np.percentile(ms, 50)),
            float(np.percentile(ms, 99)),
            cpu / max(len(latencies), 1) * 1e6,
        )
        log(f"{server} {door} c={concurrency}: {point}")
        points.append(point)
    return points


def admin_token(data_dir: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "medserve", "tokens", "create", "--init", "--role", "service", "--name", "t"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MEDSERVE_DATA_DIR": str(data_dir)},
    )
    return done.stdout.strip().splitlines()[-1]


def report(points: list[Point], args: argparse.Namespace, command: str, loads: tuple[float, float]) -> str:
    lines = [
        f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        "",
        f"Machine: {machine()}. Load average (1 min) before / after: {loads[0]:.2f} / {loads[1]:.2f}"
        + (" (high: others were using the machine, figures are noisy)." if max(loads) > 1.5 else "."),
        "",
        f"`{MODEL}` (FP32 [{FEATURES}] -> {HIDDEN} ReLU -> [{CLASSES}], ONNX Runtime, one thread), dynamic "
        "batching max 32 with 1 ms queue delay; medserve with bearer tokens and the audit trail on. "
        "Echo: a minimal server answering the same request with medserve's answer bytes (starlette + "
        "uvicorn for HTTP, a `grpc.aio` servicer for gRPC). Client: one asyncio process on the same "
        f"cores (raw HTTP/1.1 keep-alive sockets, binary tensors; `grpc.aio` with a pre-built request); "
        f"{args.seconds:g} s per point after {args.warmup:g} s of warm-up.",
        "",
        "| door | server | concurrency | req/s | p50 ms | p99 ms | server CPU µs / request |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {p.door} | {p.server} | {p.concurrency} | {p.rate:.0f} | {p.p50_ms:.2f} | {p.p99_ms:.2f} "
            f"| {p.cpu_us:.0f} |"
        )
    lines.append("")
    for door in ("http", "grpc"):
        own = [p for p in points if p.door == door and p.server == "medserve"]
        echo = {p.concurrency: p for p in points if p.door == door and p.server == "echo"}
        if own and echo:
            cpu = np.median([p.cpu_us for p in own])
            ceiling = np.median([p.cpu_us for p in echo.values()])
            lines.append(
                f"- {door}: median server CPU per request {cpu:.0f} µs (echo {ceiling:.0f} µs, "
                f"medserve's own work about {cpu - ceiling:.0f} µs)."
            )
    return "\n".join(lines) + "\n"


async def produce(args: argparse.Namespace, command: str) -> str:
    loads0 = os.getloadavg()[0]
    points: list[Point] = []
    with tempfile.TemporaryDirectory(prefix="medserve-tiny-") as tmp:
        repository, data = Path(tmp) / "repository", Path(tmp) / "data"
        build_repository(repository)
        token = admin_token(data)
        env = {"MEDSERVE_AUTH_DISABLED": "false", "MEDSERVE_DATA_DIR": str(data)}
        for door in args.doors:
            answer = Path(tmp) / f"{door}-answer.json"
            with medserve(repository, env) as (pid, http, grpc_port):
                port = http if door == "http" else grpc_port
                if door == "http":
                    header_length, body = await http_capture(http, http_request(token))
                else:
                    header_length, body = 0, await grpc_capture(grpc_port, grpc_request(), token)
                answer.write_text(json.dumps({"header_length": header_length, "body": body.hex()}))
                points += await measure(pid, "medserve", door, port, args, token)
            with echo_server(door, answer) as (pid, port):
                points += await measure(pid, "echo", door, port, args, "")
    return report(points, args, command, (loads0, os.getloadavg()[0]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--echo"]:
        door, port, answer = argv[1], int(argv[2]), Path(argv[3])
        (serve_http_echo if door == "http" else serve_grpc_echo)(port, answer)
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--doors", nargs="+", default=["http", "grpc"], choices=["http", "grpc"])
    parser.add_argument("--output", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only; leave --output alone")
    return run_report(
        "tiny.py", parser, argv, produce, "tiny", "Server cost per request: a tiny MLP against echo servers"
    )


if __name__ == "__main__":
    sys.exit(main())
