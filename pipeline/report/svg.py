"""Small charts as inline SVG, for the plots every audit page has (its index against all pages, its
pairs against random pairs, its index over runs).

There is one audit page per page and night, so these must cost milliseconds: a matplotlib figure
costs ~130 ms to draw and encode, three per page, which at 4,000 pages is half an hour every night
whatever changed. A chart here is a few rectangles, paths and labels in one string (under 5 ms),
crisp at any zoom, and readable by screen readers through its label. The run report's few large
plots stay matplotlib. Only numbers and fixed labels are drawn, and every text is escaped anyway.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from markupsafe import Markup

FONT = 'font-family="system-ui, sans-serif" font-size="11" fill="#333"'


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values (steps of 1, 2 or 5 times a power of ten) covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return [low] if math.isfinite(low) else []
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-9 else "0"


class Chart:
    """One plot area with axes; data coordinates in, an `<svg>` out."""

    def __init__(
        self,
        x_range: tuple[float, float],
        y_range: tuple[float, float],
        x_label: str,
        y_label: str,
        description: str,
        width: int = 560,
        height: int = 240,
    ) -> None:
        self.x_range = x_range if x_range[1] > x_range[0] else (x_range[0], x_range[0] + 1)
        self.y_range = y_range if y_range[1] > y_range[0] else (y_range[0], y_range[0] + 1)
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = 48, 36, 28, 42  # room for a centred date label at the right end
        self.x_label, self.y_label, self.description = x_label, y_label, description
        self.parts: list[str] = []
        self.legend_entries: list[tuple[str, str, str]] = []
        self.x_ticks: list[tuple[float, str]] | None = None

    def x(self, value: float) -> float:
        low, high = self.x_range
        return self.left + (value - low) / (high - low) * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        low, high = self.y_range
        return self.height - self.bottom - (value - low) / (high - low) * (self.height - self.top - self.bottom)

    def _points(self, xs: Sequence[float], ys: Sequence[float]) -> str:
        return " ".join(f"{self.x(x):.1f},{self.y(y):.1f}" for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y))

    def bars(self, edges: Sequence[float], heights: Sequence[float], fill: str, label: str = "") -> None:
        """A histogram's bars: bar i spans edges[i]..edges[i+1]."""
        for left, right, height in zip(edges[:-1], edges[1:], heights):
            if height > 0:
                top = self.y(height)
                self.parts.append(f'<rect x="{self.x(left):.1f}" y="{top:.1f}" width="{max(0.5, self.x(right) - self.x(left) - 0.5):.1f}" '
                                  f'height="{self.y(self.y_range[0]) - top:.1f}" fill="{fill}"/>')  # fmt: skip
        self._legend(label, fill, "box")

    def outline(self, edges: Sequence[float], heights: Sequence[float], colour: str, label: str = "") -> None:
        """A histogram drawn as its outline (a step line), to lie over filled bars."""
        xs, ys = [edges[0]], [self.y_range[0]]
        for left, right, height in zip(edges[:-1], edges[1:], heights):
            xs += [left, right]
            ys += [height, height]
        xs.append(edges[-1])
        ys.append(self.y_range[0])
        self.parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{self._points(xs, ys)}"/>')
        self._legend(label, colour, "line")

    def band(
        self, xs: Sequence[float], lows: Sequence[float], highs: Sequence[float], fill: str, opacity: float = 1.0, label: str = ""
    ) -> None:
        points = self._points(list(xs) + list(xs)[::-1], list(highs) + list(lows)[::-1])
        self.parts.append(f'<polygon fill="{fill}" fill-opacity="{opacity:g}" stroke="none" points="{points}"/>')
        self._legend(label, fill, "box")

    def line(
        self, xs: Sequence[float], ys: Sequence[float], colour: str, dashed: bool = False, dots: bool = False, label: str = ""
    ) -> None:
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        self.parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="{1 if dashed else 2}"{dash} points="{self._points(xs, ys)}"/>'
        )
        if dots:
            self.parts += [f'<circle cx="{self.x(x):.1f}" cy="{self.y(y):.1f}" r="3" fill="{colour}"/>'
                           for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]  # fmt: skip
        self._legend(label, colour, "dashed" if dashed else "line")

    def vspan(self, low: float, high: float, fill: str, opacity: float, label: str = "") -> None:
        x0, x1 = self.x(max(low, self.x_range[0])), self.x(min(high, self.x_range[1]))
        self.parts.append(f'<rect x="{x0:.1f}" y="{self.top}" width="{max(0.0, x1 - x0):.1f}" height="{self.height - self.top - self.bottom}" '
                          f'fill="{fill}" fill-opacity="{opacity:g}"/>')  # fmt: skip
        self._legend(label, fill, "box")

    def vline(self, value: float, colour: str, label: str = "") -> None:
        x = self.x(value)
        self.parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.top}" y2="{self.height - self.bottom}" stroke="{colour}" stroke-width="2"/>'
        )
        self._legend(label, colour, "line")

    def triangles(self, xs: Sequence[float], ys: Sequence[float], colour: str, up: bool) -> None:
        for x, y in zip(xs, ys):
            cx, cy, tip = self.x(x), self.y(y), -7 if up else 7
            self.parts.append(
                f'<polygon fill="{colour}" points="{cx:.1f},{cy + tip:.1f} {cx - 6:.1f},{cy - tip / 2:.1f} {cx + 6:.1f},{cy - tip / 2:.1f}"/>'
            )

    def _legend(self, label: str, colour: str, kind: str) -> None:
        if label:
            self.legend_entries.append((label, colour, kind))

    def _axes(self) -> list[str]:
        base, left = self.height - self.bottom, self.left
        drawn = [f'<line x1="{left}" x2="{self.width - self.right}" y1="{base}" y2="{base}" stroke="#888"/>',
                 f'<line x1="{left}" x2="{left}" y1="{self.top}" y2="{base}" stroke="#888"/>']  # fmt: skip
        for value in nice_ticks(*self.y_range):
            y = self.y(value)
            drawn.append(f'<line x1="{left - 4}" x2="{left}" y1="{y:.1f}" y2="{y:.1f}" stroke="#888"/>'
                         f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" {FONT}>{_label(value)}</text>')  # fmt: skip
        x_ticks = self.x_ticks if self.x_ticks is not None else [(v, _label(v)) for v in nice_ticks(*self.x_range, count=8)]
        for value, text in x_ticks:
            x = self.x(value)
            drawn.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{base}" y2="{base + 4}" stroke="#888"/>'
                         f'<text x="{x:.1f}" y="{base + 16}" text-anchor="middle" {FONT}>{escape(text)}</text>')  # fmt: skip
        middle_x = (left + self.width - self.right) / 2
        middle_y = (self.top + base) / 2
        drawn.append(f'<text x="{middle_x:.1f}" y="{self.height - 6}" text-anchor="middle" {FONT}>{escape(self.x_label)}</text>')
        drawn.append(
            f'<text transform="translate(12 {middle_y:.1f}) rotate(-90)" text-anchor="middle" {FONT}>{escape(self.y_label)}</text>'
        )
        return drawn

    def _legend_row(self) -> list[str]:
        drawn, x = [], float(self.left)
        for label, colour, kind in self.legend_entries:
            if kind == "box":
                drawn.append(f'<rect x="{x:.1f}" y="8" width="14" height="9" fill="{colour}"/>')
            else:
                dash = ' stroke-dasharray="4 3"' if kind == "dashed" else ""
                drawn.append(f'<line x1="{x:.1f}" x2="{x + 14:.1f}" y1="12.5" y2="12.5" stroke="{colour}" stroke-width="2"{dash}/>')
            drawn.append(f'<text x="{x + 18:.1f}" y="16" {FONT}>{escape(label)}</text>')
            x += 26 + 6.2 * len(label)
        return drawn

    def svg(self) -> Markup:
        body = "".join(self._legend_row() + self.parts + self._axes())
        return Markup(
            f'<svg class="plot" width="{self.width}" height="{self.height}" viewBox="0 0 {self.width} {self.height}" role="img" '
            f'aria-label="{escape(self.description)}" xmlns="http://www.w3.org/2000/svg">{body}</svg>'
        )
