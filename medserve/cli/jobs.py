"""``medserve job submit|run|status|list|cancel|resume|results|failures``.

The commands work on the store directly (the settings' ``data_dir`` or ``database_url``), like
``medserve tokens``: ``submit`` queues a job that the server on this store picks up; ``run`` runs one in
the foreground without a server; the others read or change any job, whoever runs it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medserve.cli.store import add_store_options, command_settings, open_store, require_store
from medserve.values.errors import Conflict

Handler = Callable[[argparse.Namespace], int]


def _with_store(action: Callable[[Any, Any, argparse.Namespace], int]) -> Handler:
    def run(args: argparse.Namespace) -> int:
        from medserve.jobs.store import JobStore

        settings, database = open_store(args, repository=getattr(args, "repository", None))
        try:
            return action(JobStore(database), settings, args)
        finally:
            database.dispose()

    return run


_COLUMNS = ("ID", "STATE", "WORKLOAD", "MODEL", "DONE+FAILED/TOTAL", "RATE")


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows under the header, each column as wide as its widest cell (the last one left ragged)."""
    widths = [max(len(row[i]) for row in [_COLUMNS, *rows]) for i in range(len(_COLUMNS) - 1)]
    return [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]])
        for row in [_COLUMNS, *rows]
    ]


def _row(status: Any) -> tuple[str, ...]:
    total = "?" if status.items_total is None else str(status.items_total)
    rate = f"{status.items_per_s:,.0f}/s" if status.items_per_s else "-"
    done = f"{status.items_done}+{status.items_failed}/{total}"
    return (status.id, status.state, status.workload, status.model, done, rate)


def _submit(store: Any, settings: Any, args: argparse.Namespace) -> int:
    from medserve.jobs.prepare import prepare
    from medserve.jobs.spec import load_spec
    from medserve.repository.repository import ModelRepository

    repository = ModelRepository(settings.repository)

    def model_exists(model: str) -> None:
        repository.model_dir(model)

    spec, _ = prepare(load_spec(args.spec), model_exists)
    status = store.create(spec, spec.model, args.submitted_by)
    print(status.id)
    print(f"queued: the server on this store runs it (or: medserve job run {args.spec})", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace) -> int:
    from medserve.jobs.spec import load_spec
    from medserve.jobs.standalone import run_standalone
    from medserve.jobs.store import SUCCEEDED

    settings = command_settings(args, repository=args.repository, cluster_address=args.cluster)
    require_store(settings, args)
    _, state = run_standalone(settings, load_spec(args.spec), count_first=not args.no_count)
    return 0 if state == SUCCEEDED else 1


def _status(store: Any, settings: Any, args: argparse.Namespace) -> int:
    status = store.get(args.id)
    if args.json:
        print(json.dumps(status.document(), indent=2))
        return 0
    document = status.document()
    for key in ("id", "name", "state", "workload", "model", "submitted_by", "runner", "items_done",
                "items_failed", "items_total", "items_per_s", "eta_s", "created_at", "started_at",
                "finished_at", "sink", "error"):  # fmt: skip
        if document.get(key) not in (None, ""):
            print(f"{key:>13}: {document[key]}")
    return 0


def _list(store: Any, settings: Any, args: argparse.Namespace) -> int:
    rows = [_row(status) for status in store.recent(args.limit)]
    if not rows:
        print("no jobs", file=sys.stderr)
        return 0
    print("\n".join(_table(rows)))
    return 0


def _cancel(store: Any, settings: Any, args: argparse.Namespace) -> int:
    status = store.request_cancel(args.id)
    print(f"job {status.id}: {'cancelled' if status.state == 'cancelled' else 'cancel requested'}")
    return 0


def _resume(store: Any, settings: Any, args: argparse.Namespace) -> int:
    status = store.requeue(args.id)
    print(f"job {status.id} queued again; the server resumes it from its last committed chunk")
    return 0


def _failures(store: Any, settings: Any, args: argparse.Namespace) -> int:
    store.get(args.id)
    for failure in store.failures(args.id, offset=args.offset, limit=args.limit):
        print(f"{failure.index}\t{failure.locator}\t{failure.reason}")
    return 0


def _results(store: Any, settings: Any, args: argparse.Namespace) -> int:
    from medserve.jobs.runner import failures_path

    status = store.get(args.id)
    spec = store.spec(args.id)
    if status.state != "succeeded":
        raise Conflict(f"job {status.id} is {status.state}: results come when it has succeeded")
    if args.out:
        shutil.copyfile(spec.sink.path, args.out)
        print(args.out)
    else:
        print(spec.sink.path)
    failures = failures_path(spec)
    if failures.exists():
        print(f"failures: {failures}", file=sys.stderr)
    return 0


def add_commands(commands: Any) -> None:
    """Add ``job`` and its sub-commands to the ``medserve`` sub-commands."""
    job = commands.add_parser("job", help="offline inference jobs: submit, run, watch, cancel, results")
    sub = job.add_subparsers(dest="job_command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        add_store_options(parser)
        parser.set_defaults(func=handler)
        return parser

    job_id = "the job's id (as 'medserve job submit' printed it, or 'medserve job list' shows it)"
    submit = command("submit", "check a job spec and queue it for the server", _with_store(_submit))
    submit.add_argument("spec", type=Path, help="job spec (YAML)")
    submit.add_argument("--repository", type=Path, help="model repository (to check the model exists)")
    submit.add_argument("--submitted-by", default="cli", help="name recorded as the submitter (cli)")

    run = command("run", "run (or resume) a job here in the foreground, with a progress bar", _run)
    run.add_argument("spec", type=Path, help="job spec (YAML); running it again resumes it")
    run.add_argument("--repository", type=Path, help="model repository (default: from the settings)")
    run.add_argument("--no-count", action="store_true", help="skip counting the items first (no ETA)")
    run.add_argument(
        "--cluster", metavar="ADDRESS", help="score on this Ray cluster's replicas (docs/SCALING.md)"
    )

    status = command("status", "a job's state and progress", _with_store(_status))
    status.add_argument("id", help=job_id)
    status.add_argument("--json", action="store_true", help="print the job's whole document as JSON")

    listing = command("list", "recent jobs, newest first, under a header row", _with_store(_list))
    listing.add_argument("--limit", type=int, default=20, help="at most this many jobs (20)")

    cancel = command("cancel", "stop a job after its current chunk", _with_store(_cancel))
    cancel.add_argument("id", help=job_id)

    resume = command(
        "resume", "queue a failed or interrupted job again (the server resumes it)", _with_store(_resume)
    )
    resume.add_argument("id", help=job_id)

    failures = command("failures", "items that failed, with where and why", _with_store(_failures))
    failures.add_argument("id", help=job_id)
    failures.add_argument("--offset", type=int, default=0, help="skip this many failures first (0)")
    failures.add_argument("--limit", type=int, default=1000, help="at most this many failures (1000)")

    results = command(
        "results", "where a finished job's results are (or copy them with --out)", _with_store(_results)
    )
    results.add_argument("id", help=job_id)
    results.add_argument("--out", type=Path, help="copy the results file here")
