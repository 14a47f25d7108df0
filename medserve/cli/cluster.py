"""``medserve cluster status``: the replicas sharing this store, from the replica registry.

Each replica writes a heartbeat into the store; a replica whose heartbeat is older than
``--stale-after`` seconds (default three heartbeats) without a recorded stop is shown ``lost``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from medserve.cli.store import add_store_options, open_store

_COLUMNS = ("REPLICA", "STATE", "READY", "ADDRESS", "VERSION", "LAST SEEN", "MODELS")


def _status(args: argparse.Namespace) -> int:
    from medserve.cluster.registry import list_replicas

    settings, database = open_store(args)
    try:
        stale = args.stale_after if args.stale_after is not None else 3 * settings.replica_heartbeat_s
        replicas = list_replicas(database, stale_after_s=stale)
    finally:
        database.dispose()
    if args.json:
        print(json.dumps({"replicas": [r.document() for r in replicas]}, indent=2))
        return 0
    if not replicas:
        print("no replicas have registered in this store", file=sys.stderr)
        return 0
    rows = [
        (
            r.id,
            r.state,
            "yes" if r.ready else "no",
            r.address,
            r.version,
            f"{r.age_s:.0f} s ago",
            ",".join(r.models) or "-",
        )
        for r in replicas
    ]
    widths = [max(len(row[i]) for row in [_COLUMNS, *rows]) for i in range(len(_COLUMNS) - 1)]
    for row in [_COLUMNS, *rows]:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]))
    up = sum(1 for r in replicas if r.state == "up")
    print(f"{up} of {len(replicas)} replica(s) up, {sum(r.ready for r in replicas)} ready", file=sys.stderr)
    return 0


def add_commands(commands: Any) -> None:
    """Add ``cluster`` and its sub-commands to the ``medserve`` sub-commands."""
    cluster = commands.add_parser("cluster", help="the replicas sharing this store: who is up and ready")
    sub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    status: argparse.ArgumentParser = sub.add_parser(
        "status", help="list the replicas: id, state (up/stopped/lost), ready, address, version, models"
    )
    add_store_options(status)
    status.add_argument("--json", action="store_true", help="print the replicas as JSON")
    status.add_argument(
        "--stale-after",
        type=float,
        metavar="SECONDS",
        help="a heartbeat older than this marks a replica lost (default: 3 x replica_heartbeat_s)",
    )
    status.set_defaults(func=_status)
