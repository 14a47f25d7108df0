"""``medserve devices``: the discovery as a table, then its problems."""

from __future__ import annotations

from medserve.hardware.devices import Device, Discovery, hardware_fingerprint

_HEADER = ("ID", "KIND", "NAME", "MEMORY", "CORES", "FEATURES", "RUNTIMES")


def format_bytes(count: int | None) -> str:
    """``25276514304`` → ``23.5 GiB``; None → ``-``."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def abbreviate_features(features: tuple[str, ...], limit: int = 4) -> str:
    """The ``limit`` highest features (they are listed lowest first) and how many more there are."""
    if not features:
        return "-"
    shown = features[-limit:]
    hidden = len(features) - len(shown)
    return ",".join(shown) + (f" +{hidden}" if hidden else "")


def _row(device: Device) -> tuple[str, ...]:
    return (
        device.id,
        device.kind,
        device.name,
        format_bytes(device.memory_bytes),
        "-" if device.cores is None else str(device.cores),
        abbreviate_features(device.features),
        ",".join(device.runtimes) or "-",
    )


def format_discovery(discovery: Discovery) -> str:
    """A fixed-width table of the devices, the providers and versions, then problems and skips."""
    rows = [_HEADER, *(_row(d) for d in discovery.devices)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    lines.append("")
    lines.append(f"onnxruntime providers: {', '.join(discovery.providers) or 'none'}")
    versions = ", ".join(f"{k} {v}" for k, v in sorted(discovery.versions.items()))
    lines.append(f"versions: {versions or 'none'}")
    lines.append(f"fingerprint: {hardware_fingerprint(discovery)}")
    if discovery.problems:
        lines.append("problems:")
        lines.extend(f"  - {p}" for p in discovery.problems)
    if discovery.skipped:
        lines.append("not probed:")
        lines.extend(f"  - {s}" for s in discovery.skipped)
    return "\n".join(lines)
