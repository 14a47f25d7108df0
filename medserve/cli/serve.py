"""``medserve serve``: its flags, and a help epilog listing every setting's environment variable."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medserve.cli.store import CONFIG_ENV, add_config_option, config_file

#: Settings that have a flag of their own (the flag is ``--`` + the name with dashes).
FLAGS = ("repository", "host", "http_port", "grpc_port", "dicom_port", "data_dir", "log_level", "log_format")


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(str(getattr(item, "name", item)) for item in value) or "[]"
    return str(value) if value != "" else "empty"


def epilog() -> str:
    """Where settings come from, and each setting's variable, default and flag."""
    from medserve.settings import Settings

    rows = [(CONFIG_ENV, "none", "--config: the YAML settings file")]
    for name, field in Settings.model_fields.items():
        flag = f"--{name.replace('_', '-')}" if name in FLAGS else ""
        rows.append((f"MEDSERVE_{name.upper()}", _shown(field.get_default(call_default_factory=True)), flag))
    width = max(len(row[0]) for row in rows) + 2
    dwidth = min(max(len(row[1]) for row in rows), 28) + 2
    lines = [f"  {var.ljust(width)}{default.ljust(dwidth)}{flag}".rstrip() for var, default, flag in rows]
    return (
        "settings come from, in rising priority: the defaults, a YAML settings file (--config FILE or "
        f"{CONFIG_ENV}=FILE; its keys are the variables' names in lower case without MEDSERVE_), "
        "the environment, and the flags. Every setting is described in docs/CONFIGURATION.md.\n\n"
        "environment variables, defaults and flags:\n" + "\n".join(lines)
    )


def _serve(args: argparse.Namespace) -> int:
    from medserve.settings import load_settings

    settings = load_settings(
        config_file(args),
        repository=args.repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        dicom_port=args.dicom_port,
        data_dir=args.data_dir,
        log_level=args.log_level,
        log_format=args.log_format,
        cluster_address=args.cluster,
    )
    from medserve.server import serve  # after the settings, so a bad one is said before any import

    serve(settings)
    return 0


def add_command(commands: Any) -> None:
    """Add ``serve`` to the ``medserve`` sub-commands."""
    serve = commands.add_parser(
        "serve",
        help="serve a model repository over HTTP, gRPC and DICOM",
        description="Serve a model repository: HTTP (Open Inference Protocol REST, DICOMweb, jobs, "
        "streams), gRPC and the DICOM Storage SCP.",
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--repository", type=Path, metavar="DIR", help="model repository folder")
    serve.add_argument("--host", help="bind address of every door (default 127.0.0.1)")
    serve.add_argument("--http-port", type=int, metavar="PORT", help="HTTP port (default 8000)")
    serve.add_argument(
        "--grpc-port", type=int, metavar="PORT", help="gRPC port (default 8001; -1 turns gRPC off)"
    )
    serve.add_argument(
        "--dicom-port",
        type=int,
        metavar="PORT",
        help="DICOM Storage SCP port (default 11112; -1 turns the DIMSE door off)",
    )
    serve.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="folder of the server's store, audit journal and keys (default medserve_data)",
    )
    add_config_option(serve)
    serve.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="logging level (default info)"
    )
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log line format (default text; json: one object a line with request id, trace id, principal)",
    )
    serve.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="join this Ray cluster and run the models' engines there (docs/SCALING.md; the 'ray' extra)",
    )
    serve.set_defaults(func=_serve)
