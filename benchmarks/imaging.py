"""Imaging benchmark: DICOM in to results stored, served by medserve, against the same models run raw.

X-ray: ``--xrays`` synthetic CR studies (one 512 x 512 image each) are sent in one C-STORE
association; the clock runs from the first C-STORE to the last series' results (SR + FHIR) being
stored, as the status API reports them. Raw: the same images, already decoded, resized and scaled,
run through ONNX Runtime at batch 8 with the server's session options.

CT: ``--cts`` synthetic CT studies, sent one after the other, same clock. Raw: each study's
sliding-window patches, already windowed, resampled and cut, through ONNX Runtime at batch 8.

The series quiet time (``--quiet-s``) is part of what a user waits for, but not of throughput: it is
subtracted once per run (the last series' wait), and reported. Prints a markdown report and replaces
the imaging section of ``docs/BENCHMARKS.md``: ``python benchmarks/imaging.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pydicom
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import free_port, medserve, write_section  # noqa: E402

from medserve.clinical.dicom import preprocessing as prep  # noqa: E402
from medserve.clinical.dicom.series_to_volume import series_to_frames, series_to_volume  # noqa: E402
from medserve.demo import dicom_studies as synthetic  # noqa: E402
from medserve.demo.models.repository import build_example_repository  # noqa: E402
from medserve.transport.dimse_scu import send_files  # noqa: E402

XRAY, CT = "chest_xray_classifier", "ct_lesion_segmentation"
DEFAULT_REPOSITORY = Path.home() / ".cache" / "medserve" / "bench_repository"


def session(repository: Path, model: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(
        str(repository / model / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )


def config_of(repository: Path, model: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((repository / model / "config.yaml").read_text())
    return loaded


def xray_tensors(paths: list[Path], size: int) -> np.ndarray:
    images = [series_to_frames([pydicom.dcmread(p)]).array for p in paths]
    return np.concatenate([prep.scale_to_unit(prep.resize_2d(a, (size, size))) for a in images])[:, None]


def ct_patches(paths: list[Path], settings: dict[str, Any]) -> list[np.ndarray]:
    volume = series_to_volume([pydicom.dcmread(p) for p in paths])
    low, high = settings["window"]
    array = prep.window(volume.array, float(low), float(high))
    target = settings.get("spacing_mm")
    if target is not None:
        spacing = tuple(float(v) for v in (target if isinstance(target, list) else [target] * 3))
        array, _ = prep.resample(array, volume.spacing, spacing)
    patch = tuple(int(v) for v in settings["patch_size"])
    padded, _ = prep.pad_to(array, patch)
    return [
        padded[w][None]
        for w in prep.sliding_window_patches(padded.shape, patch, float(settings.get("overlap", 0.25)))
    ]


def raw_rate(sess: ort.InferenceSession, items: np.ndarray, batch: int = 8) -> float:
    name = sess.get_inputs()[0].name
    sess.run(None, {name: items[:batch]})  # warm-up
    started = time.perf_counter()
    for k in range(0, len(items), batch):
        sess.run(None, {name: items[k : k + batch]})
    return len(items) / (time.perf_counter() - started)


def wait_done(http: int, series: list[str], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    pending = set(series)
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} series not done within {timeout} s")
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/dicom/studies", timeout=30) as reply:
            studies = json.load(reply)["studies"]
        states = {s["series_instance_uid"]: s for study in studies for s in study["series"]}
        for uid in list(pending):
            row = states.get(uid)
            if row and row["state"] == "done":
                pending.discard(uid)
            elif row and row["state"] in ("failed", "rejected", "unmatched"):
                raise RuntimeError(f"series {row['state']}: {row['reason']}")
        time.sleep(0.05)
    return time.monotonic()


def run(args: argparse.Namespace) -> dict[str, Any]:
    repository: Path = args.repository
    build_example_repository(repository, models=[XRAY, CT])
    work = Path(tempfile.mkdtemp(prefix="medserve-imaging-bench-"))
    xrays = [synthetic.write_study("CR", work / f"cr{k}", seed=k)[0] for k in range(args.xrays)]
    cts = [synthetic.write_study("CT", work / f"ct{k}", seed=100 + k) for k in range(args.cts)]
    imaging = {
        "pipelines": {
            "ct": {"kind": "segmentation_3d", "model": CT},
            "xray": {"kind": "classification_2d", "model": XRAY},
        },
        "routes": [
            {"name": "ct", "pipeline": "ct", "modality": "CT"},
            {"name": "xray", "pipeline": "xray", "modality": ["CR", "DX"]},
        ],
        "destinations": [{"name": "folder", "type": "folder", "path": str(work / "exports")}],
    }
    (work / "imaging.yaml").write_text(yaml.safe_dump(imaging))
    dicom = free_port()
    env = {
        "MEDSERVE_DICOM_PORT": str(dicom),
        "MEDSERVE_DICOM_CALLING_AETS": '{"MEDSERVE_SCU": ["*"]}',  # the sender's AE title, every model
        "MEDSERVE_DICOM_QUIET_TIME_S": str(args.quiet_s),
        "MEDSERVE_IMAGING_CONFIG": str(work / "imaging.yaml"),
        "MEDSERVE_IMAGING_WORKERS": str(args.workers),
        "MEDSERVE_AUDIT_DISABLED": "false",
    }
    results: dict[str, Any] = {}
    with medserve(repository, env) as (_pid, http, _grpc):
        # warm-up: one study of each kind
        warm = [synthetic.write_study("CR", work / "warm-cr", seed=999)[0]]
        warm_ct = synthetic.write_study("CT", work / "warm-ct", seed=998)
        report = send_files([str(p) for p in warm + warm_ct], "127.0.0.1", dicom)
        if not report.ok:
            raise RuntimeError(report.summary())
        wait_done(
            http,
            [
                str(pydicom.dcmread(warm[0]).SeriesInstanceUID),
                str(pydicom.dcmread(warm_ct[0]).SeriesInstanceUID),
            ],
            600,
        )

        started = time.monotonic()
        report = send_files([str(p) for p in xrays], "127.0.0.1", dicom)
        if not report.ok:
            raise RuntimeError(report.summary())
        ended = wait_done(http, [str(pydicom.dcmread(p).SeriesInstanceUID) for p in xrays], 1200)
        results["xray_served"] = len(xrays) / (ended - started - args.quiet_s)

        started = time.monotonic()
        for paths in cts:
            report = send_files([str(p) for p in paths], "127.0.0.1", dicom)
            if not report.ok:
                raise RuntimeError(report.summary())
        ended = wait_done(http, [str(pydicom.dcmread(p[0]).SeriesInstanceUID) for p in cts], 1800)
        results["ct_served_per_h"] = len(cts) / (ended - started - args.quiet_s) * 3600

    xray_config = config_of(repository, XRAY)
    size = int(xray_config.get("metadata", {}).get("preprocessing", {}).get("image_size", 224))
    sess = session(repository, XRAY)
    tensors = xray_tensors(xrays, size)
    results["xray_raw"] = raw_rate(sess, tensors)
    ct_settings = config_of(repository, CT)["metadata"]["preprocessing"]
    ct_sess = session(repository, CT)
    started = time.perf_counter()
    patches_per_study = []
    for paths in cts:
        patches = np.stack(ct_patches(paths, ct_settings))
        patches_per_study.append(len(patches))
        raw_rate(ct_sess, patches)
    results["ct_raw_per_h"] = len(cts) / (time.perf_counter() - started) * 3600
    results["ct_patches"] = patches_per_study
    results["xray_ratio"] = results["xray_served"] / results["xray_raw"]
    results["ct_ratio"] = results["ct_served_per_h"] / results["ct_raw_per_h"]
    return results


def report(r: dict[str, Any], args: argparse.Namespace, command: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    target = "met" if r["xray_ratio"] >= 0.8 else "NOT met"
    return "\n".join(
        [
            f"Command: `{command}` ({when}; {platform.processor() or platform.machine()}, "
            f"{len(__import__('os').sched_getaffinity(0))} cores; imaging workers {args.workers}).",
            "",
            "| pipeline | served (DICOM in → SEG/SR/FHIR stored) | raw ONNX Runtime, pre-decoded | ratio |",
            "|---|---|---|---|",
            f"| X-ray, {args.xrays} CR images 512², DenseNet-121 | {r['xray_served']:.1f} images/s | "
            f"{r['xray_raw']:.1f} images/s (batch 8) | **{r['xray_ratio']:.2f}** (target ≥ 0.8: {target}) |",
            f"| CT, {args.cts} studies, UNet sliding window ({r['ct_patches'][0]} patches) | "
            f"{r['ct_served_per_h']:.0f} studies/h | {r['ct_raw_per_h']:.0f} studies/h (batch 8) | "
            f"**{r['ct_ratio']:.2f}** |",
            "",
            f"Served time excludes one series quiet time ({args.quiet_s} s); the audit trail is on.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--xrays", type=int, default=64)
    parser.add_argument("--cts", type=int, default=4)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--quiet-s", type=float, default=0.5)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    command = "python benchmarks/imaging.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = report(run(args), args, command.strip())
    print(text)
    if not args.no_write:
        docs = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
        write_section(docs, text, "imaging", "Imaging: DICOM in to results out")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
