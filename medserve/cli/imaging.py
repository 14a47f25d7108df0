"""``medserve imaging explain-route FILES``: which routing rule each series matches, and why the others
do not; then whether it is within its pipeline's intended use."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medserve.values.errors import InvalidInput


def explain_route(paths: Sequence[Path], config_path: Path | None) -> str:
    """The explanation printed for ``paths`` (files or folders) under the imaging configuration."""
    from medserve.clinical.dicom.routing import explain, load_rules
    from medserve.imaging.config import load_config
    from medserve.imaging.folder_scan import InstanceHeader, read_header, walk_files
    from medserve.imaging.pipelines import intended_use_failure

    config = load_config(config_path, Path("."))
    rules, pipelines = load_rules(config.routes), config.pipeline_specs()
    lines: list[str] = []
    series: dict[str, tuple[InstanceHeader, list[Path]]] = {}
    for path in paths:
        if not path.exists():
            raise InvalidInput(f"{path}: no such file or folder")
        for file in [path] if path.is_file() else walk_files(path):
            header = read_header(file)
            if isinstance(header, str):
                lines.append(f"{file}: not used: {header}")
            elif header is not None:
                series.setdefault(header.series, (header, []))[1].append(file)
    if not series:
        raise InvalidInput("no DICOM series found in " + ", ".join(str(p) for p in paths))
    for header, files in series.values():
        attributes, count = dict(header.attributes), len(files)
        lines.append(_series_header(files[0], attributes, count))
        matched = None
        for rule, failure in explain(rules, attributes, count):
            if failure is None and matched is None:
                matched = rule
                lines.append(f"  rule '{rule.name}' -> pipeline '{rule.pipeline}': MATCHES")
            elif failure is None:
                lines.append(f"  rule '{rule.name}': would match, but an earlier rule wins")
            else:
                lines.append(f"  rule '{rule.name}': no: {failure}")
        if matched is None:
            lines.append("  => unmatched: no rule matches" if rules else "  => no routing rules configured")
            continue
        spec = pipelines.get(matched.pipeline)
        if spec is None:
            lines.append(f"  => failed: pipeline '{matched.pipeline}' is not configured")
            continue
        outside = intended_use_failure(spec, None, attributes, count)
        if outside is not None:
            lines.append(f"  => unmatched: {outside}")
        else:
            lines.append(
                f"  => pipeline '{spec.name}' (model '{spec.model}'; the model's own "
                "intended_use_criteria are checked when it runs)"
            )
    return "\n".join(lines)


def _series_header(first: Path, attributes: dict[str, Any], count: int) -> str:
    shown = (
        "Modality", "BodyPartExamined", "ViewPosition", "ImageType", "SeriesDescription",
        "PatientAgeYears", "PixelSpacingMm", "SliceThicknessMm",
    )  # fmt: skip
    facts = ", ".join(f"{k}={attributes.get(k)}" for k in shown if attributes.get(k) is not None)
    return f"series of {count} instance(s) at {first.parent}: {facts}"


def _explain(args: argparse.Namespace) -> int:
    print(explain_route(args.files, args.config))
    return 0


def add_commands(commands: Any) -> None:
    """Add ``imaging`` and its sub-commands to the ``medserve`` sub-commands."""
    imaging = commands.add_parser("imaging", help="imaging workflow tools (routing)")
    sub = imaging.add_subparsers(dest="imaging_command", required=True, metavar="COMMAND")
    explain = sub.add_parser(
        "explain-route", help="which routing rule DICOM files match, and why each other rule does not"
    )
    explain.add_argument("files", nargs="+", type=Path, help="DICOM files or folders (grouped by series)")
    explain.add_argument(
        "--config", type=Path, help="imaging configuration YAML (default: the built-in default routes)"
    )
    explain.set_defaults(func=_explain)
