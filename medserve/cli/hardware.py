"""``medserve profile`` and ``medserve placement``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medserve.cli.store import add_store_options, command_settings, open_store, require_database
from medserve.values.errors import InvalidInput, MedserveError


def _repository(args: argparse.Namespace) -> Path:
    if args.repository is not None:
        return Path(args.repository)
    repository: Path = command_settings(args).repository
    return repository


def _database(args: argparse.Namespace) -> Any:
    """The store: ``--database-url``, else the settings' (``--config``, ``MEDSERVE_*``), migrated."""
    if args.database_url:
        from medserve.store.database import Database

        require_database(args.database_url, args)
        database = Database(args.database_url)
        try:
            database.migrate()
        except MedserveError:
            database.dispose()
            raise
        return database
    return open_store(args)[1]


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _costs(pairs: Sequence[str]) -> dict[str, float]:
    costs: dict[str, float] = {}
    for pair in pairs:
        device, sep, price = pair.partition("=")
        try:
            costs[device.strip()] = float(price)
        except ValueError:
            sep = ""
        if not sep or not device.strip():
            raise InvalidInput(f"--cost takes DEVICE=PRICE_PER_HOUR (e.g. cuda:0=2.5), not '{pair}'")
    return costs


def _profile(args: argparse.Namespace) -> int:
    from medserve.hardware.plot import write_plot
    from medserve.hardware.profile import format_profile
    from medserve.hardware.profile_store import ProfileStore
    from medserve.hardware.profiler import profile_model
    from medserve.repository.repository import ModelRepository

    model_dir = ModelRepository(_repository(args)).model_dir(args.model)
    profile = profile_model(
        model_dir,
        runtimes=args.runtimes,
        devices=args.devices,
        batch_sizes=args.batch_sizes,
        seconds_per_point=args.seconds,
        warmup=args.warmup,
        version=args.version,
        cpu_watts=args.cpu_watts,
        gpu_watts=args.gpu_watts,
        progress=_progress,
        rounds=args.rounds,
    )
    print(format_profile(profile))
    if args.plot is not None:
        write_plot(profile, args.plot)
        print(f"plot written to {args.plot}")
    if not args.no_store:
        database = _database(args)
        try:
            run_id = ProfileStore(database).save(profile)
        finally:
            database.dispose()
        print(f"profile stored (run {run_id[:12]})")
    return 0 if any(p.usable for p in profile.points) else 1


def _placement(args: argparse.Namespace) -> int:
    from medserve.hardware.devices import discover_devices, hardware_fingerprint
    from medserve.hardware.placement import decide, format_decision
    from medserve.hardware.placer import placement_request
    from medserve.hardware.profile import artifact_digest
    from medserve.hardware.profile_store import ProfileStore
    from medserve.hardware.profiler import profile_model
    from medserve.repository.repository import ModelRepository

    repository = ModelRepository(_repository(args))
    costs = _costs(args.cost or [])
    names = args.models or repository.model_names()
    discovery = discover_devices()
    fingerprint = hardware_fingerprint(discovery)
    database = _database(args)
    store = ProfileStore(database)
    failed = False
    try:
        for name in names:
            try:
                config = repository.config(name)
                selected = repository.artifacts(name, config)
                if not selected or not selected[-1].path.exists():
                    raise InvalidInput(f"{name}: no version folder with {config.artifact} to place")
                digest = artifact_digest(selected[-1].path)
                profile = store.latest(name, digest, fingerprint)
                if profile is None and args.profile_missing:
                    _progress(f"{name}: {store.staleness(name, digest, fingerprint)}; profiling")
                    profile = profile_model(
                        repository.model_dir(name),
                        seconds_per_point=args.seconds,
                        discovery=discovery,
                        progress=_progress,
                    )
                    store.save(profile)
                if profile is None:
                    why = store.staleness(name, digest, fingerprint)
                    hint = f"run 'medserve profile {name}' or use --profile-missing"
                    print(f"{name}: no current profile ({why}); {hint}")
                    failed = True
                    continue
                decision = decide(profile.points, placement_request(name, config, discovery, costs))
            except MedserveError as exc:
                print(f"{name}: {exc}")
                failed = True
                continue
            print(format_decision(decision, explain=args.explain))
            if config.placement == "auto":
                print("  applied when the model loads (config.yaml: placement: auto)")
            else:
                print("  advisory: config.yaml places this model itself (set placement: auto to apply this)")
            failed = failed or not decision.chosen
    finally:
        database.dispose()
    return 1 if failed else 0


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, help="model repository folder (default: from settings)")
    add_store_options(parser)
    parser.add_argument("--database-url", help="store URL (default: the settings' database)")


def add_commands(commands: Any) -> None:
    """Add ``profile`` and ``placement`` to the ``medserve`` sub-commands."""
    profile = commands.add_parser(
        "profile",
        help="measure a model on every runtime x device x batch size; store the profile, print it, plot it",
    )
    profile.add_argument("model", help="model name in the repository")
    _store_options(profile)
    profile.add_argument("--devices", nargs="+", help="only these devices (default: every one found)")
    profile.add_argument("--runtimes", nargs="+", help="only these runtimes (default: every one that fits)")
    profile.add_argument(
        "--batch-sizes", nargs="+", type=int, default=[1, 2, 4, 8], help="batch sizes to measure (1 2 4 8)"
    )
    profile.add_argument("--seconds", type=float, default=1.0, help="measuring time per point (1.0)")
    profile.add_argument("--warmup", type=int, default=3, help="warm-up runs per point (3)")
    profile.add_argument(
        "--rounds", type=int, default=1, help="measure every point this often, keep the median round (1)"
    )
    profile.add_argument("--version", type=int, help="model version (default: the newest served)")
    profile.add_argument("--plot", type=Path, help="write the plot to FILE.svg (or FILE.png with matplotlib)")
    profile.add_argument("--cpu-watts", type=float, default=65.0, help="CPU power if not measurable (65)")
    profile.add_argument("--gpu-watts", type=float, default=300.0, help="GPU power if not measurable (300)")
    profile.add_argument("--no-store", action="store_true", help="do not store the profile")
    profile.set_defaults(func=_profile)

    placement = commands.add_parser(
        "placement", help="choose devices, runtime, instances and batch size per model from its profile"
    )
    placement.add_argument("models", nargs="*", help="models to place (default: every model)")
    _store_options(placement)
    placement.add_argument("--explain", action="store_true", help="list rejected alternatives and why")
    placement.add_argument(
        "--profile-missing", action="store_true", help="profile models with no current profile first"
    )
    placement.add_argument(
        "--seconds", type=float, default=1.0, help="measuring time per point with --profile-missing (1.0)"
    )
    placement.add_argument(
        "--cost", nargs="+", metavar="DEVICE=PRICE", help="price per hour of devices (objective cost)"
    )
    placement.set_defaults(func=_placement)
