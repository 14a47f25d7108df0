"""Cost of explanations: explain latency per method and model, and what explanations running in the
background do to the latency of clinical requests.

In-process, on the dataplane ``medserve serve`` builds (``build_dataplane``: registry, batchers,
priority classes, audit trail) and the server's ``Explainer``; the doors add a constant per request.
Models: ``variant_scorer`` and ``chest_xray_classifier`` from ``--repository`` (ONNX Runtime: the
model-agnostic methods) and a small torch CNN built here (1 x 64 x 64, three convolutions, seeded random
weights; ``.pt2`` on the torch runtime: Captum's Integrated Gradients and GradCAM).

1. *latency*: each (model, method) explained ``--repeats`` times one after another; median and worst.
2. *interference*: ``--clients`` closed-loop clients send ``chest_xray_classifier`` inferences in the
   default class for ``--seconds``, first alone, then while ``--explainers`` loops explain the same model
   (occlusion, 32-pixel windows: 50 model evaluations each, in the lowest class) with ``batch_size`` 8
   and then 1 (the rows of one execution), in the same run; p50 and p99 of the clinical requests and
   their throughput, and the ratios.

    python benchmarks/explain.py [--seconds 20] [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import add_report_arguments, machine, run_report  # noqa: E402

from medserve.core.dataplane import build_dataplane  # noqa: E402
from medserve.explanations.service import Explainer  # noqa: E402
from medserve.settings import Settings  # noqa: E402
from medserve.trust import build_trust  # noqa: E402
from medserve.values.access import Caller  # noqa: E402
from medserve.values.types import InferenceRequest, Tensor  # noqa: E402

TORCH_CONFIG = """runtime: torch
artifact: model.pt2
max_batch_size: 32
inputs:
- name: image
  datatype: FP32
  dims: [1, 64, 64]
outputs:
- name: probabilities
  datatype: FP32
  dims: [3]
dynamic_batching:
  max_queue_delay_us: 1000
metadata:
  description: benchmark network (seeded random weights), not a clinical model
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_torch_model(folder: Path) -> None:
    import torch

    torch.manual_seed(11)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 3),
        torch.nn.Softmax(dim=1),
    ).eval()
    batch = torch.export.Dim("batch", min=1, max=32)
    program = torch.export.export(net, (torch.rand(2, 1, 64, 64),), dynamic_shapes=({0: batch},))
    (folder / "1").mkdir(parents=True)
    (folder / "config.yaml").write_text(TORCH_CONFIG)
    torch.export.save(program, str(folder / "1" / "model.pt2"))


def request(
    model: str, name: str, data: np.ndarray, parameters: dict[str, Any] | None = None
) -> InferenceRequest:
    return InferenceRequest(
        model, "", "", [Tensor(name, "FP32", tuple(data.shape), data)], [], dict(parameters or {})
    )


CASES: list[tuple[str, str, tuple[int, ...], dict[str, Any]]] = [
    ("variant_scorer", "features", (1, 25), {"method": "feature_ablation", "target": 0}),
    ("variant_scorer", "features", (1, 25), {"method": "integrated_gradients", "target": 0, "steps": 16}),
    ("chest_xray_classifier", "image", (1, 1, 224, 224), {"method": "occlusion", "target": 2, "window": 32}),
    (
        "chest_xray_classifier",
        "image",
        (1, 1, 224, 224),
        {"method": "integrated_gradients", "target": 2, "steps": 8, "window": 56},
    ),
    ("bench_cnn", "image", (1, 1, 64, 64), {"method": "occlusion", "target": 1, "window": 8}),
    ("bench_cnn", "image", (1, 1, 64, 64), {"method": "integrated_gradients", "target": 1, "steps": 32}),
    ("bench_cnn", "image", (1, 1, 64, 64), {"method": "grad_cam", "target": 1}),
]


async def latency(
    explainer: Explainer, caller: Caller, repeats: int
) -> list[tuple[str, str, int, list[float]]]:
    rng = np.random.default_rng(5)
    rows = []
    for model, name, shape, parameters in CASES:
        data = rng.uniform(0, 1, size=shape).astype(np.float32)
        times: list[float] = []
        evaluations = 0
        for _ in range(repeats):
            started = time.perf_counter()
            answer = await explainer.explain(request(model, name, data, parameters), caller)
            times.append(time.perf_counter() - started)
            evaluations = int(answer.parameters["model_evaluations"])
        label = parameters["method"] + (
            f" ({answer.parameters['implementation']})"
            if parameters["method"] == "integrated_gradients"
            else ""
        )
        log(f"{model} {label}: {statistics.median(times) * 1000:.0f} ms")
        rows.append((model, label, evaluations, times))
    return rows


async def clinical(
    explainer: Explainer, caller: Caller, seconds: float, clients: int, explainers: int, batch_size: int = 8
) -> tuple[list[float], int]:
    """Latencies (ms) of the clinical requests answered in ``seconds``, and how many explanations ran."""
    service = explainer._service  # the same dataplane
    image = np.random.default_rng(6).uniform(0, 1, size=(1, 1, 224, 224)).astype(np.float32)
    stop = time.perf_counter() + seconds
    latencies: list[float] = []
    explained = [0]

    async def client() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await service.infer(request("chest_xray_classifier", "image", image), caller)
            latencies.append((time.perf_counter() - started) * 1000)

    async def explaining() -> None:
        parameters = {"method": "occlusion", "target": 2, "window": 32, "batch_size": batch_size}
        while time.perf_counter() < stop:
            await explainer.explain(request("chest_xray_classifier", "image", image, parameters), caller)
            explained[0] += 1

    await asyncio.gather(*(client() for _ in range(clients)), *(explaining() for _ in range(explainers)))
    return latencies, explained[0]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def produce(args: argparse.Namespace, command: str) -> str:
    with tempfile.TemporaryDirectory(prefix="explain-bench-") as tmp:
        root = Path(tmp)
        repository = root / "repository"
        for name in ("variant_scorer", "chest_xray_classifier"):
            (repository / name).mkdir(parents=True)
            (repository / name / "config.yaml").symlink_to(args.repository / name / "config.yaml")
            (repository / name / "1").symlink_to(args.repository / name / "1")
        build_torch_model(repository / "bench_cnn")
        settings = Settings(repository=repository, data_dir=root / "data", grpc_port=-1, dicom_port=-1)
        trust = build_trust(settings)
        dataplane = build_dataplane(settings, trust, placement=False, monitoring=False)
        caller = Caller.system()
        try:
            await dataplane.service.load_all(caller)
            explainer = Explainer(
                dataplane.service,
                settings.priority_table().classes[-1].name,
                settings.explain_max_perturbations,
            )
            rows = await latency(explainer, caller, args.repeats)
            alone, _ = await clinical(explainer, caller, args.seconds, args.clients, 0)
            log(f"clinical alone: p99 {pct(alone, 99):.0f} ms")
            busy, explained = await clinical(explainer, caller, args.seconds, args.clients, args.explainers)
            log(f"clinical with explanations: p99 {pct(busy, 99):.0f} ms ({explained} explanations)")
            single, explained_1 = await clinical(
                explainer, caller, args.seconds, args.clients, args.explainers, batch_size=1
            )
            log(f"clinical with explanations, batch_size 1: p99 {pct(single, 99):.0f} ms ({explained_1})")
        finally:
            await dataplane.close()
    load = os.getloadavg()
    lines = [
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}; {machine()}; load average at the end "
        f"{load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}: other work shares these cores, so compare the ratios "
        "of one run). In-process on the server's dataplane; the example models are the test-profile "
        "demonstrations and `bench_cnn` a small torch network with random weights.",
        "",
        "| model | method | model evaluations | median (ms) | worst (ms) |",
        "|---|---|---:|---:|---:|",
    ]
    for model, label, evaluations, times in rows:
        median, worst = statistics.median(times) * 1000, max(times) * 1000
        lines.append(f"| {model} | {label} | {evaluations} | {median:.0f} | {worst:.0f} |")
    ratio = pct(busy, 99) / pct(alone, 99) if alone and busy else float("nan")
    ratio_1 = pct(single, 99) / pct(alone, 99) if alone and single else float("nan")
    lines += [
        "",
        f"Clinical requests (`chest_xray_classifier`, default class, {args.clients} closed-loop clients, "
        f"{args.seconds:g} s each), alone and while {args.explainers} loops explain the same model "
        f"(occlusion, 50 evaluations each, lowest class; {explained} finished with batch_size 8):",
        "",
        "| | requests/s | p50 (ms) | p99 (ms) |",
        "|---|---:|---:|---:|",
        f"| alone | {len(alone) / args.seconds:.1f} | {pct(alone, 50):.0f} | {pct(alone, 99):.0f} |",
        f"| with explanations (batch_size 8) | {len(busy) / args.seconds:.1f} | {pct(busy, 50):.0f} "
        f"| {pct(busy, 99):.0f} |",
        f"| with explanations (batch_size 1; {explained_1} finished) | {len(single) / args.seconds:.1f} "
        f"| {pct(single, 50):.0f} | {pct(single, 99):.0f} |",
        "",
        f"p99 with explanations / alone: **{ratio:.2f}** (batch_size 8), **{ratio_1:.2f}** (batch_size 1). "
        "An execution is never interrupted, so a clinical "
        "request arriving while a batch of perturbations runs waits for that batch: the lowest class bounds "
        "the wait to one batch (`batch_size` rows), not to the explanation.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--explainers", type=int, default=2)
    add_report_arguments(parser)
    return run_report("explain.py", parser, argv, produce, "explain", "Explanations: cost")


if __name__ == "__main__":
    raise SystemExit(main())
