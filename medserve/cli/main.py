"""The ``medserve`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from medserve import __version__
from medserve.cli.cluster import add_commands as add_cluster_commands
from medserve.cli.edge import add_commands as add_edge_commands
from medserve.cli.hardware import add_commands as add_hardware_commands
from medserve.cli.imaging import add_commands as add_imaging_commands
from medserve.cli.jobs import add_commands as add_job_commands
from medserve.cli.parser import Parser
from medserve.cli.plan import add_command as add_plan_command
from medserve.cli.serve import add_command as add_serve_command
from medserve.cli.trust import add_commands as add_trust_commands
from medserve.values.errors import InvalidInput, MedserveError


def _models(args: argparse.Namespace) -> int:
    from medserve.cli.models import inspect_repository

    if args.repository is None:
        raise InvalidInput("medserve models: --repository DIR is required")
    rows = inspect_repository(args.repository, load=not args.no_load)
    widths = [
        max(len(str(r[i])) for r in rows + [("MODEL", "VERSION", "STATE", "SHA256", "")]) for i in range(4)
    ]
    header = ("MODEL", "VERSION", "STATE", "SHA256")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  REASON")
    for row in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row[:4], widths)) + f"  {row[4]}")
    return 0 if all(r[2] in ("READY", "VALID") for r in rows) else 1


def _examples_build(args: argparse.Namespace) -> int:
    import logging

    from medserve.demo.models._profile import current_profile
    from medserve.demo.models._progress import PROGRESS_LOGGER
    from medserve.demo.models._quality import QualityFloorMissed
    from medserve.demo.models.repository import EXAMPLE_MODELS, build_example_repository

    unknown = sorted(set(args.models or ()).difference(EXAMPLE_MODELS))
    if unknown:
        raise InvalidInput(
            f"medserve examples build: unknown example model(s) {', '.join(unknown)}; "
            f"expected some of {', '.join(EXAMPLE_MODELS)}"
        )
    if args.workers is not None and args.workers < 1:
        raise InvalidInput("medserve examples build: --workers must be at least 1")
    try:
        profile = args.profile or current_profile()
    except ValueError as error:
        raise InvalidInput(f"medserve examples build: {error}") from None
    progress = logging.getLogger(PROGRESS_LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    progress.propagate = False
    try:
        written = build_example_repository(
            args.directory,
            models=args.models or None,
            force=args.force,
            profile=profile,
            workers=args.workers,
        )
    except QualityFloorMissed as error:
        print(f"medserve examples build: {error}", file=sys.stderr)
        return 1
    finally:
        progress.removeHandler(handler)
    print(f"example repository in {args.directory}: built {', '.join(written) or 'nothing (all present)'}")
    return 0


def _examples_dicom(args: argparse.Namespace) -> int:
    from medserve.demo.dicom_studies import write_study

    if args.studies < 1:
        raise InvalidInput("medserve examples dicom: --studies must be at least 1")
    if args.seed < 0:
        raise InvalidInput("medserve examples dicom: --seed must be >= 0")
    total = 0
    for index in range(args.studies):
        folder = args.out if args.studies == 1 else args.out / f"study_{index + 1:03d}"
        try:
            paths = write_study(
                args.modality,
                folder,
                seed=args.seed + index,
                findings=args.findings or (),
                photometric=args.photometric,
            )
        except ValueError as error:
            raise InvalidInput(f"medserve examples dicom: {error}") from None
        total += len(paths)
        print(f"{args.modality} study (seed {args.seed + index}): {len(paths)} file(s) in {folder}")
    studies = "study" if args.studies == 1 else "studies"
    print(f"wrote {args.studies} synthetic {args.modality} {studies}, {total} DICOM file(s), in {args.out}")
    return 0


def _examples_jobs(args: argparse.Namespace) -> int:
    from medserve.demo.jobs import write_example_jobs

    if args.items < 100:
        raise InvalidInput("--items must be at least 100")
    specs = write_example_jobs(args.out, items=args.items, seed=args.seed)
    for spec in specs:
        print(spec)
    return 0


def _simulate_ward(args: argparse.Namespace) -> int:
    import json

    from medserve.demo.ward_simulator import format_report, run_ward

    report = run_ward(
        args.url,
        beds=args.beds,
        minutes=args.minutes,
        speed=args.speed,
        seed=args.seed,
        deteriorating=args.deteriorating,
        token=args.token or os.environ.get("MEDSERVE_TOKEN", ""),
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else format_report(report))
    # A run in which every reply was an error tested nothing: say so in the exit status.
    return 1 if report.errors and report.errors >= report.replies else 0


def _devices(args: argparse.Namespace) -> int:
    import json

    from medserve.hardware.devices import discover_devices
    from medserve.hardware.report import format_discovery

    discovery = discover_devices()
    print(json.dumps(discovery.to_json(), indent=2) if args.json else format_discovery(discovery))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="medserve", description="Inference server for clinical AI.")
    parser.add_argument("--version", action="version", version=f"medserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_serve_command(commands)

    models = commands.add_parser(
        "models", help="list models, versions, states and artifact digests; sign; roll back"
    )
    models.add_argument("--repository", type=Path, help="model repository folder (required for the listing)")
    models.add_argument(
        "--no-load", action="store_true", help="only validate configs, do not load the engines"
    )
    models.set_defaults(func=_models)
    add_trust_commands(commands, models)

    devices = commands.add_parser(
        "devices", help="list this machine's devices (CPU, GPUs, NPUs) and the engines that can use them"
    )
    devices.add_argument("--json", action="store_true", help="print the discovery as JSON")
    devices.set_defaults(func=_devices)
    add_hardware_commands(commands)
    add_plan_command(commands)
    add_job_commands(commands)
    add_imaging_commands(commands)
    add_cluster_commands(commands)
    add_edge_commands(commands)

    examples = commands.add_parser("examples", help="example models and data")
    example_commands = examples.add_subparsers(dest="examples_command", required=True, metavar="COMMAND")
    build = example_commands.add_parser("build", help="write the example model repository")
    build.add_argument("directory", type=Path, help="folder to write the model repository into")
    build.add_argument("--models", nargs="*", help="only these models (default: all)")
    build.add_argument("--force", action="store_true", help="rebuild models already present")
    build.add_argument(
        "--profile",
        choices=["default", "test"],
        help="training steps and quality floors: default (the documented models, a few minutes on two "
        "cores) or test (fewer steps, lower floors, for the test suite); "
        "default: $MEDSERVE_EXAMPLES_PROFILE, else default",
    )
    build.add_argument(
        "--workers",
        type=int,
        help="models trained at once, one process and one torch thread each; the models are the same "
        "whatever the number (default: one per CPU core)",
    )
    build.set_defaults(func=_examples_build)
    dicom = example_commands.add_parser(
        "dicom", help="write synthetic DICOM studies (phantoms, not real patients) for testing"
    )
    dicom.add_argument(
        "--modality", required=True, choices=["CT", "MR", "CR", "DX", "US"], help="modality of the studies"
    )
    dicom.add_argument("--out", type=Path, required=True, help="folder (one subfolder per study if several)")
    dicom.add_argument("--seed", type=int, default=0, help="seed of the first study; the next get +1 (0)")
    dicom.add_argument("--studies", type=int, default=1, help="number of studies (1)")
    dicom.add_argument(
        "--findings",
        nargs="*",
        choices=["Cardiomegaly", "Effusion", "Mass", "Nodule", "Pneumothorax"],
        help="CR/DX: synthetic findings to draw (default: none)",
    )
    dicom.add_argument(
        "--photometric",
        choices=["MONOCHROME1", "MONOCHROME2", "RGB"],
        help="CR/DX: MONOCHROME1 or MONOCHROME2 (default); US: MONOCHROME2 (default) or RGB",
    )
    dicom.set_defaults(func=_examples_dicom)
    jobs = example_commands.add_parser(
        "jobs",
        help="write synthetic inputs and a spec for each example offline job (VCF, SMILES, hospital series)",
    )
    jobs.add_argument("--out", type=Path, required=True, help="folder for the data and the specs")
    jobs.add_argument("--items", type=int, default=20000, help="variants and compounds to write (20000)")
    jobs.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (0)")
    jobs.set_defaults(func=_examples_jobs)

    simulate = commands.add_parser("simulate", help="simulated clients for load and alert testing")
    simulate_commands = simulate.add_subparsers(dest="simulate_command", required=True, metavar="COMMAND")
    ward = simulate_commands.add_parser(
        "ward", help="stream a simulated ward (vitals at 1 Hz, ECG) to patient_monitor over gRPC"
    )
    ward.add_argument("--beds", type=int, required=True, help="number of beds (one sequence each)")
    ward.add_argument("--minutes", type=float, required=True, help="simulated minutes to run")
    ward.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second (1)")
    ward.add_argument("--url", default="localhost:8001", help="gRPC address (localhost:8001)")
    ward.add_argument("--seed", type=int, default=0, help="seed of the ward's patients (0)")
    ward.add_argument(
        "--deteriorating", type=float, default=0.2, help="fraction of beds that deteriorate (0.2)"
    )
    ward.add_argument("--json", action="store_true", help="print the report as JSON")
    ward.add_argument("--token", help="API token with a grant for patient_monitor (default: $MEDSERVE_TOKEN)")
    ward.set_defaults(func=_simulate_ward)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except MedserveError as exc:
        print(f"medserve: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:  # not about a file: a fault, with its traceback
            raise
        print(f"medserve: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
