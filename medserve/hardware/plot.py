"""The profile's plot: throughput and p99 latency against batch size, one line per device and runtime.

SVG is written by hand (no dependency); PNG needs matplotlib, which is optional.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from medserve.hardware.profile import ModelProfile, ProfilePoint
from medserve.values.errors import InvalidInput

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_PANEL_W, _PANEL_H = 420, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 40, 50
Series = dict[str, list[tuple[int, float]]]


def series(profile: ModelProfile, metric: str) -> Series:
    """``device · runtime`` → [(batch size, value)] of the usable points, by batch size."""
    lines: Series = {}
    for point in profile.points:
        value = getattr(point, metric)
        if point.usable and value is not None:
            lines.setdefault(_label(point), []).append((point.batch_size, float(value)))
    return {label: sorted(values) for label, values in sorted(lines.items())}


def _label(point: ProfilePoint) -> str:
    return f"{point.device} · {point.runtime}"


def _ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``top``."""
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [step * i for i in range(math.ceil(top / step - 1e-9) + 1)]


def _tick_text(value: float) -> str:
    """Short axis labels: 0.05, 20, 1.5k, 2M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _panel(
    x0: int, title: str, unit: str, lines: Series, sizes: Sequence[int], colours: dict[str, str]
) -> list[str]:
    width, height = _PANEL_W - _LEFT - _RIGHT, _PANEL_H - _TOP - _BOTTOM
    left, top = x0 + _LEFT, _TOP
    values = [v for points in lines.values() for _, v in points]
    ticks = _ticks(max(values, default=1.0) * 1.05)
    y_max = ticks[-1] or 1.0
    logs = [math.log2(s) for s in sizes] or [0.0]
    span = (max(logs) - min(logs)) or 1.0

    def x(size: int) -> float:
        return left + (math.log2(size) - min(logs)) / span * width if len(sizes) > 1 else left + width / 2

    def y(value: float) -> float:
        return top + height - value / y_max * height

    out = [
        f'<text x="{left + width / 2}" y="{top - 14}" text-anchor="middle" font-weight="bold">'
        f"{escape(title)}</text>",
        f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#444"/>',
    ]
    for tick in ticks:
        out.append(
            f'<line x1="{left}" y1="{y(tick):.1f}" x2="{left + width}" y2="{y(tick):.1f}" stroke="#ddd"/>'
        )
        out.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{_tick_text(tick)}</text>')
    for size in sizes:
        out.append(f'<text x="{x(size):.1f}" y="{top + height + 18}" text-anchor="middle">{size}</text>')
    out.append(f'<text x="{left + width / 2}" y="{top + height + 38}" text-anchor="middle">batch size</text>')
    out.append(
        f'<text x="{x0 + 16}" y="{top + height / 2}" text-anchor="middle" '
        f'transform="rotate(-90 {x0 + 16} {top + height / 2})">{escape(unit)}</text>'
    )
    for label, points in lines.items():
        colour = colours[label]
        path = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out += [f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>' for s, v in points]
    return out


def profile_svg(profile: ModelProfile) -> str:
    """The plot as an SVG document: throughput (left) and p99 latency (right) against batch size."""
    throughput, p99 = series(profile, "throughput"), series(profile, "p99_ms")
    labels = sorted({*throughput, *p99})
    colours = {label: _COLOURS[i % len(_COLOURS)] for i, label in enumerate(labels)}
    sizes = sorted({p.batch_size for p in profile.points if p.usable}) or [1]
    legend_h = 20 * max(1, len(labels)) + 10
    width, height = 2 * _PANEL_W, _PANEL_H + legend_h + 30
    body = [
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">'
        f"{escape(profile.model)} v{profile.version}: measured "
        f"{escape(profile.measured_at.isoformat(timespec='seconds'))}</text>",
        '<g transform="translate(0,10)">',
        *_panel(0, "throughput", "inferences / s", throughput, sizes, colours),
        *_panel(_PANEL_W, "p99 latency", "ms", p99, sizes, colours),
        "</g>",
    ]
    for i, label in enumerate(labels):
        y = _PANEL_H + 30 + 20 * i
        body.append(f'<rect x="{_LEFT}" y="{y - 10}" width="14" height="4" fill="{colours[label]}"/>')
        body.append(f'<text x="{_LEFT + 22}" y="{y - 4}">{escape(label)}</text>')
    if not labels:
        body.append(f'<text x="{_LEFT}" y="{_PANEL_H + 30}">no usable point to plot</text>')
    return "\n".join(
        [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            *body,
            "</svg>",
            "",
        ]
    )


def _png(profile: ModelProfile, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidInput(
            f"{path}: writing PNG needs matplotlib, which is not installed; use .svg"
        ) from None
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric, title in ((left, "throughput", "inferences / s"), (right, "p99_ms", "p99 ms")):
        for label, points in series(profile, metric).items():
            axis.plot([s for s, _ in points], [v for _, v in points], marker="o", label=label)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch size")
        axis.set_ylabel(title)
        axis.set_ylim(bottom=0)
    left.legend()
    figure.suptitle(f"{profile.model} v{profile.version}")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_plot(profile: ModelProfile, path: Path) -> None:
    """Write the plot to ``path``: ``.svg`` (no dependency) or ``.png`` (matplotlib)."""
    suffix = path.suffix.lower()
    if suffix == ".svg":
        path.write_text(profile_svg(profile), encoding="utf-8")
    elif suffix == ".png":
        _png(profile, path)
    else:
        raise InvalidInput(f"{path}: the plot is written as .svg or .png, not '{suffix or 'no suffix'}'")
