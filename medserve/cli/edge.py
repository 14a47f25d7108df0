"""``medserve hub publish|pin|rollback|edges`` and ``medserve edge sync|status``: against a running
hub or edge over HTTP, with an admin token (``--token`` or ``$MEDSERVE_TOKEN``). docs/EDGE.md."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from typing import Any

from medserve.values.errors import InvalidInput


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    token = args.token or os.environ.get("MEDSERVE_TOKEN", "")
    request = urllib.request.Request(
        f"{args.url.rstrip('/')}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read() or b"{}").get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise InvalidInput(f"{path} refused (HTTP {exc.code}): {message}") from None
    except urllib.error.URLError as exc:
        raise InvalidInput(f"cannot reach the server at {args.url}: {exc.reason}") from None


def _print(value: Any) -> int:
    print(json.dumps(value, indent=2, sort_keys=True))
    return 0


def _publish(args: argparse.Namespace) -> int:
    body = {"model": args.model, "version": args.version}
    return _print(_call(args, "POST", f"/v2/hub/groups/{args.group}/publish", body))


def _pin(args: argparse.Namespace) -> int:
    if (args.version is None) == (not args.clear):
        raise InvalidInput("medserve hub pin: give a VERSION or --clear, not both")
    body: dict[str, Any] = {"model": args.model}
    body.update({"clear": True} if args.clear else {"version": args.version})
    return _print(_call(args, "POST", f"/v2/hub/groups/{args.group}/pin", body))


def _rollback(args: argparse.Namespace) -> int:
    return _print(_call(args, "POST", f"/v2/hub/groups/{args.group}/rollback", {"model": args.model}))


def _edges(args: argparse.Namespace) -> int:
    edges = _call(args, "GET", "/v2/hub/edges")["edges"]
    if args.json:
        return _print(edges)
    for edge in edges:
        versions = ", ".join(f"{m} {'/'.join(v)}" for m, v in sorted(edge["versions"].items())) or "-"
        backlog = edge["backlog"].get("total", 0) if isinstance(edge["backlog"], dict) else 0
        received = ", ".join(f"{k} {n}" for k, n in sorted(edge["received"].items())) or "-"
        print(
            f"{edge['edge']}  group {edge['group']}  last sync {edge['last_sync_at']}  serving {versions}  "
            f"backlog {backlog}  received {received}  refusals {len(edge['refused'])}"
        )
    if not edges:
        print("no edge has synced with this hub")
    return 0


def _sync(args: argparse.Namespace) -> int:
    report = _call(args, "POST", "/v2/edge/sync", {})
    _print(report)
    return 1 if report.get("refused") or report.get("error") else 0


def _status(args: argparse.Namespace) -> int:
    return _print(_call(args, "GET", "/v2/edge/status"))


def _common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server's HTTP address")
    parser.add_argument("--token", help="admin token (default: $MEDSERVE_TOKEN)")
    return parser


def add_commands(commands: Any) -> None:
    """Add ``hub`` and ``edge`` and their sub-commands."""
    hub = commands.add_parser("hub", help="a hub: publish model versions to edge groups, see its edges")
    hub_commands = hub.add_subparsers(dest="hub_command", required=True, metavar="COMMAND")
    publish = _common(hub_commands.add_parser("publish", help="publish a signed model version to a group"))
    publish.add_argument("group", help="edge group to publish to")
    publish.add_argument("model", help="model name in the hub's repository")
    publish.add_argument("version", type=int, help="version folder to publish (its artifact signed)")
    publish.set_defaults(func=_publish)
    pin = _common(hub_commands.add_parser("pin", help="make a group serve one published version"))
    pin.add_argument("group", help="edge group")
    pin.add_argument("model", help="model name")
    pin.add_argument("version", type=int, nargs="?", help="published version to serve")
    pin.add_argument("--clear", action="store_true", help="drop the pin: serve the newest release")
    pin.set_defaults(func=_pin)
    rollback = _common(hub_commands.add_parser("rollback", help="pin a group to the release before"))
    rollback.add_argument("group", help="edge group")
    rollback.add_argument("model", help="model name")
    rollback.set_defaults(func=_rollback)
    edges = _common(hub_commands.add_parser("edges", help="every edge: last sync, versions, backlog"))
    edges.add_argument("--json", action="store_true", help="print the edges as JSON")
    edges.set_defaults(func=_edges)

    edge = commands.add_parser("edge", help="an edge: pull from its hub now, or say how it stands")
    edge_commands = edge.add_subparsers(dest="edge_command", required=True, metavar="COMMAND")
    _common(edge_commands.add_parser("sync", help="pull the manifest and install what is new")).set_defaults(
        func=_sync
    )
    _common(
        edge_commands.add_parser("status", help="last sync, versions, backlog, hub reachable")
    ).set_defaults(func=_status)
