"""``medserve plan``: how many servers of each candidate type a workload mix needs, from the stored
profiles (``medserve profile``), side by side with utilisation, energy and cost per year."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from medserve.cli.store import add_store_options, command_settings, open_store


def _plan(args: argparse.Namespace) -> int:
    from medserve.planning.fleet import plan_fleet
    from medserve.planning.inputs import gather, load_plan
    from medserve.planning.report import format_plan, plan_json
    from medserve.planning.sources import example_plan, repository_batching, stored_profiles
    from medserve.repository.repository import ModelRepository

    repository = args.repository or command_settings(args).repository
    if args.example:
        print(example_plan(ModelRepository(repository).model_names()), end="")
        return 0
    if args.plan is None:
        print("medserve plan: give a plan file (or --example to print one)", file=sys.stderr)
        return 2
    spec = load_plan(args.plan.read_text(encoding="utf-8"))
    models = spec.workload.models()
    _, database = open_store(args)
    try:
        profiles = stored_profiles(database, models)
    finally:
        database.dispose()
    batching, notes = repository_batching(repository, models)
    options = plan_fleet(gather(spec, profiles, batching))
    for note in notes:
        print(f"medserve plan: {note}", file=sys.stderr)
    print(
        json.dumps(plan_json(options, spec.economics), indent=2)
        if args.json
        else format_plan(options, spec.economics)
    )
    return 0 if any(o.count is not None for o in options) else 1


def add_command(commands: Any) -> None:
    """Add ``plan`` to the ``medserve`` sub-commands."""
    plan = commands.add_parser(
        "plan",
        help="size a fleet for a workload mix from measured profiles: servers per type, utilisation, "
        "energy and cost per year",
    )
    plan.add_argument("plan", nargs="?", type=Path, help="plan file (YAML): workload, servers, economics")
    plan.add_argument("--repository", type=Path, help="model repository, for each model's batching")
    add_store_options(plan)
    plan.add_argument("--json", action="store_true", help="print the options as JSON")
    plan.add_argument(
        "--example", action="store_true", help="print an example plan for the repository's models"
    )
    plan.set_defaults(func=_plan)
