"""Small SVG charts drawn on the server (no chart library, no script): bars, lines, sparklines.

Each chart is an ``<svg role="img">`` with a ``<title>`` that says what it shows, for screen readers;
the numbers are also in the page's tables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape

#: line colours with at least 4.5:1 contrast on white
COLOURS = ("#0b4f8a", "#a4161a", "#1b6b2f", "#7a3e00", "#5b2a86", "#00616b", "#8a1c5b", "#3d3d3d")
_FONT = 'font-family="sans-serif" font-size="12" fill="#1a1a1a"'


def _ticks(top: float, count: int = 4) -> list[float]:
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [step * i for i in range(math.ceil(top / step - 1e-9) + 1)]


def number(value: float) -> str:
    """Short labels: 0.05, 20, 1.5k, 2M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _text(x: float, y: float, content: str, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {_FONT}{extra}>{escape(content)}</text>'


def _hline(x1: float, x2: float, y: float) -> str:
    return f'<line x1="{x1}" y1="{y:.1f}" x2="{x2}" y2="{y:.1f}" stroke="#d0d0d0"/>'


def _open(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" class="chart">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
    ]


def bar_chart(
    bars: Sequence[tuple[str, float]], title: str, unit: str, width: int = 560, height: int = 220
) -> str:
    """Vertical bars, one per ``(label, value)``."""
    left, right, top, bottom = 56, 12, 28, 44
    inner_w, inner_h = width - left - right, height - top - bottom
    ticks = _ticks(max((v for _, v in bars), default=0.0) or 1.0)
    y_max = ticks[-1] or 1.0
    out = _open(width, height, title)
    out.append(f'<text x="{left}" y="16" {_FONT} font-weight="bold">{escape(title)}</text>')
    for tick in ticks:
        y = top + inner_h - tick / y_max * inner_h
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + inner_w}" y2="{y:.1f}" stroke="#d0d0d0"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" {_FONT}>{number(tick)}</text>')
    slot = inner_w / max(1, len(bars))
    for i, (label, value) in enumerate(bars):
        h = value / y_max * inner_h
        x = left + i * slot
        out.append(
            f'<rect x="{x + slot * 0.15:.1f}" y="{top + inner_h - h:.1f}" width="{slot * 0.7:.1f}" '
            f'height="{h:.1f}" fill="{COLOURS[0]}"><title>{escape(label)}: {number(value)}</title></rect>'
        )
        out.append(_text(x + slot / 2, top + inner_h + 16, label, "middle"))
    out.append(
        f'<text x="{left + inner_w / 2}" y="{height - 6}" text-anchor="middle" {_FONT}>{escape(unit)}</text>'
    )
    out.append("</svg>")
    return "".join(out)


def line_chart(
    lines: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    x_label: str,
    y_label: str,
    *,
    log_x: bool = True,
    width: int = 400,
    height: int = 260,
) -> str:
    """One polyline per named series of ``(x, y)`` points, with a legend under the axes."""
    left, right, top = 60, 14, 28
    legend = 18 * max(1, len(lines))
    bottom = 44 + legend
    inner_w, inner_h = width - left - right, height + legend - top - bottom
    height += legend
    xs = sorted({x for points in lines.values() for x, _ in points}) or [1.0]
    ticks = _ticks(max((y for points in lines.values() for _, y in points), default=0.0) * 1.05 or 1.0)
    y_max = ticks[-1] or 1.0

    def fx(x: float) -> float:
        lo, hi = (math.log2(xs[0]), math.log2(xs[-1])) if log_x and xs[0] > 0 else (xs[0], xs[-1])
        value = math.log2(x) if log_x and x > 0 else x
        return left + (inner_w / 2 if hi == lo else (value - lo) / (hi - lo) * inner_w)

    def fy(y: float) -> float:
        return top + inner_h - y / y_max * inner_h

    out = _open(width, height, title)
    out.append(f'<text x="{left}" y="16" {_FONT} font-weight="bold">{escape(title)}</text>')
    out.append(
        f'<rect x="{left}" y="{top}" width="{inner_w}" height="{inner_h}" fill="none" stroke="#595959"/>'
    )
    for tick in ticks:
        out.append(_hline(left, left + inner_w, fy(tick)))
        out.append(
            f'<text x="{left - 6}" y="{fy(tick) + 4:.1f}" text-anchor="end" {_FONT}>{number(tick)}</text>'
        )
    for x in xs:
        out.append(
            f'<text x="{fx(x):.1f}" y="{top + inner_h + 16}" text-anchor="middle" {_FONT}>{number(x)}</text>'
        )
    out.append(_text(left + inner_w / 2, top + inner_h + 34, x_label, "middle"))
    middle = top + inner_h / 2
    out.append(_text(14, middle, y_label, "middle", f' transform="rotate(-90 14 {middle:.1f})"'))
    for i, (label, points) in enumerate(sorted(lines.items())):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in sorted(points))
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out += [f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="3" fill="{colour}"/>' for x, y in points]
        y = top + inner_h + 52 + 18 * i
        out.append(f'<rect x="{left}" y="{y - 9}" width="16" height="4" fill="{colour}"/>')
        out.append(f'<text x="{left + 22}" y="{y - 3}" {_FONT}>{escape(label)}</text>')
    if not lines:
        out.append(f'<text x="{left + 8}" y="{top + 20}" {_FONT}>no usable measurement</text>')
    out.append("</svg>")
    return "".join(out)


def sparkline(
    values: Sequence[float], title: str, width: int = 120, height: int = 30, top: float | None = None
) -> str:
    """A small trend line of ``values`` (oldest first), scaled to ``top`` (default: their maximum)."""
    out = _open(width, height, title)
    if len(values) >= 1:
        peak = top if top is not None else max(max(values), 1.0)
        step = (width - 6) / max(1, len(values) - 1)
        points = " ".join(
            f"{3 + i * step:.1f},{height - 3 - (v / peak) * (height - 6):.1f}" for i, v in enumerate(values)
        )
        out.append(f'<polyline points="{points}" fill="none" stroke="{COLOURS[0]}" stroke-width="2"/>')
    out.append("</svg>")
    return "".join(out)
