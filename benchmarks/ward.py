"""How many monitored beds one server sustains with p99 sample-to-alert latency under 200 ms.

Each bed streams vital signs at 1 Hz and 2 s of ECG every 2 s (so a 10 s rhythm window per bed every
2 s runs through the ECG model) in real time (speed 1), from the ward simulator, over gRPC streams
with Triton sequence parameters. Every sample's reply carries its NEWS2 and any alert, so the
sample-to-reply round trip is the sample-to-alert latency a deteriorating patient would see; the
latency of the alerts actually raised is reported beside it. Bed counts rise until p99 passes
200 ms or the server no longer keeps up with the sample rate.

    python benchmarks/ward.py [--beds 50 100 200 400 800] [--minutes 1] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import machine, medserve, write_section  # noqa: E402

from medserve.demo.models.repository import build_example_repository  # noqa: E402
from medserve.demo.ward_simulator import run_ward  # noqa: E402

LIMIT_MS = 200.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--beds", type=int, nargs="+", default=[50, 100, 200, 400, 800])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--output", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    best = 0
    with tempfile.TemporaryDirectory() as tmp:
        build_example_repository(Path(tmp), models=["ecg_rhythm_classifier"])
        for beds in args.beds:
            with medserve(Path(tmp)) as (_pid, _http, grpc):
                report = run_ward(f"127.0.0.1:{grpc}", beds, args.minutes, speed=1.0, seed=1)
            p99 = report.round_trip_ms.get("p99") or float("inf")
            keeps_up = report.achieved_rate_hz >= 0.95 * report.requested_rate_hz and report.errors == 0
            ok = p99 < LIMIT_MS and keeps_up
            alert_p99 = report.alert_latency_ms.get("p99")
            alert_cell = "–" if alert_p99 is None else f"{alert_p99:.1f}"
            alerts = sum(report.alerts_by_kind.values())
            rows.append(
                f"| {beds} | {report.requested_rate_hz:.0f} / {report.achieved_rate_hz:.0f} | "
                f"{report.round_trip_ms.get('p50') or 0:.1f} / {p99:.1f} | "
                f"{alert_cell} | {alerts} | "
                f"{report.detected} / {report.detected + report.missed} | {report.errors} | "
                f"{'yes' if ok else 'no'} |"
            )
            print(rows[-1], flush=True)
            if not ok:
                break
            best = beds
    command = "python benchmarks/ward.py" + ("" if argv is None else " " + shlex.join(argv))
    body = "\n".join(
        [
            f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC with `{command}`; {machine()}. "
            "The simulator (client) and the server share the machine.",
            "",
            f"Real time, {args.minutes:g} min per bed count, 20 % of beds deteriorating. "
            "Vitals at 1 Hz per bed, ECG in 2 s chunks, a 10 s rhythm window per bed every 2 s "
            "through `ecg_rhythm_classifier` "
            "(batched across beds by the core).",
            "",
            "| beds | samples/s requested / achieved | sample-to-reply p50 / p99, ms | alert latency p99, ms "
            "| alerts | deteriorations detected | errors | within 200 ms p99 |",
            "|---:|---|---|---:|---:|---|---:|---|",
            *rows,
            "",
            f"**Largest ward sustained with p99 < {LIMIT_MS:.0f} ms: {best} beds** (of those tried).",
        ]
    )
    print(body)
    if not args.no_write:
        write_section(args.output, body, "ward", "Patient monitoring: beds per server")
    return 0


if __name__ == "__main__":
    sys.exit(main())
