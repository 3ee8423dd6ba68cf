"""A one-page PNG preview of a report: its sections (text, tables, figures) drawn with matplotlib.

For looking at a report where no browser is at hand (CI artifacts, headless machines). It lays
out the same :class:`~nodulekit.evaluation.render.Section` blocks as report.html, top to bottom,
at a fixed page width; table columns are sized from their text. A collapsed table (folded in
report.html) shows its summary line only.
"""
from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nodulekit.atomic import atomic_path
from nodulekit.evaluation.render import Figure, Paragraph, Section, Table

PAGE_WIDTH_IN = 13.0
MARGIN_IN = 0.4
FONT_PT = 8.5
LINE_IN = 0.16           # line height at FONT_PT
CHAR_IN = 0.072          # average character width at FONT_PT (DejaVu Sans, digits a bit wider)
_TEXT_CHARS = int((PAGE_WIDTH_IN - 2 * MARGIN_IN) / CHAR_IN)
_MAX_FIGURE_WIDTH_IN = PAGE_WIDTH_IN - 2 * MARGIN_IN


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for part in text.split("\n"):
        lines += textwrap.wrap(part, width) or [""]
    return lines


def _column_chars(table: Table) -> list[int]:
    """Characters per column: the longest line of each column, scaled down to fit the page."""
    widths = [max(len(line) for cell in [table.header[j], *[r[j] for r in table.rows]] for line in cell.split("\n"))
              for j in range(len(table.header))]
    widths = [min(max(w, 6), 70) for w in widths]
    budget = _TEXT_CHARS - 2 * len(widths)
    if sum(widths) > budget:
        widths = [max(6, int(w * budget / sum(widths))) for w in widths]
    return widths


def _table_cells(table: Table) -> tuple[list[int], list[list[list[str]]]]:
    widths = _column_chars(table)
    rows = [table.header, *table.rows]
    return widths, [[_wrap(cell, widths[j]) for j, cell in enumerate(row)] for row in rows]


def _block_height_in(block: Any) -> float:
    if isinstance(block, Paragraph):
        return LINE_IN * len(_wrap(block.text, _TEXT_CHARS)) + 0.1
    if isinstance(block, Table) and block.collapsed:
        return LINE_IN + 0.15
    if isinstance(block, Table):
        _, cells = _table_cells(block)
        caption = len(_wrap(block.caption, _TEXT_CHARS)) if block.caption else 0
        return sum(LINE_IN * max(len(c) for c in row) + 0.06 for row in cells) + LINE_IN * caption + 0.2
    width_in, height_in = _figure_size_in(block)
    return height_in + LINE_IN * len(_wrap(block.caption, _TEXT_CHARS)) + 0.25


def _image(block: Figure) -> Any:
    import matplotlib.image as mpimg

    return mpimg.imread(io.BytesIO(block.png), format="png")


def _figure_size_in(block: Figure, dpi: float = 110.0) -> tuple[float, float]:
    image = _image(block)
    width_in = min(image.shape[1] / dpi, _MAX_FIGURE_WIDTH_IN)
    return width_in, width_in * image.shape[0] / image.shape[1]


class _Page:
    """Draws blocks downwards from the top of one tall matplotlib figure (coordinates in inches)."""

    def __init__(self, height_in: float) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt = plt
        self.fig = plt.figure(figsize=(PAGE_WIDTH_IN, height_in))
        self.height_in = height_in
        self.y_in = MARGIN_IN

    def text(self, x_in: float, text: str, **style: Any) -> None:
        self.fig.text(x_in / PAGE_WIDTH_IN, 1 - self.y_in / self.height_in, text, va="top", ha="left",
                      fontsize=style.pop("fontsize", FONT_PT), **style)

    def rule(self, x0_in: float, x1_in: float, colour: str = "0.75") -> None:
        y = 1 - self.y_in / self.height_in
        self.fig.add_artist(self.plt.Line2D([x0_in / PAGE_WIDTH_IN, x1_in / PAGE_WIDTH_IN], [y, y], c=colour, lw=0.6))

    def heading(self, text: str, size: float) -> None:
        self.text(MARGIN_IN, text, fontsize=size, fontweight="bold", color="#0d47a1")
        self.y_in += size / 72 * 1.7

    def paragraph(self, block: Paragraph) -> None:
        lines = _wrap(block.text, _TEXT_CHARS)
        self.text(MARGIN_IN, "\n".join(lines), color="#546e7a" if block.small else "#212121", linespacing=1.35)
        self.y_in += LINE_IN * len(lines) + 0.1

    def table(self, block: Table) -> None:
        if block.collapsed:
            self.text(MARGIN_IN, f"\u25b8 {block.collapsed} (folded in report.html)", color="#0d47a1")
            self.y_in += LINE_IN + 0.15
            return
        widths, cells = _table_cells(block)
        x_positions = [MARGIN_IN]
        for w in widths:
            x_positions.append(x_positions[-1] + (w + 2) * CHAR_IN)
        for r, row in enumerate(cells):
            self.rule(MARGIN_IN, x_positions[-1], "0.35" if r <= 1 else "0.8")
            self.y_in += 0.03
            for j, lines in enumerate(row):
                self.text(x_positions[j] + 0.04, "\n".join(lines), fontweight="bold" if r == 0 else "normal",
                          linespacing=1.35)
            self.y_in += LINE_IN * max(len(lines) for lines in row) + 0.03
        self.rule(MARGIN_IN, x_positions[-1], "0.35")
        self.y_in += 0.08
        if block.caption:
            lines = _wrap(block.caption, _TEXT_CHARS)
            self.text(MARGIN_IN, "\n".join(lines), color="#546e7a", style="italic", linespacing=1.35)
            self.y_in += LINE_IN * len(lines)
        self.y_in += 0.12

    def figure(self, block: Figure) -> None:
        width_in, height_in = _figure_size_in(block)
        ax = self.fig.add_axes((MARGIN_IN / PAGE_WIDTH_IN, 1 - (self.y_in + height_in) / self.height_in,
                                width_in / PAGE_WIDTH_IN, height_in / self.height_in))
        ax.imshow(_image(block))
        ax.axis("off")
        self.y_in += height_in + 0.05
        lines = _wrap(block.caption, _TEXT_CHARS)
        self.text(MARGIN_IN, "\n".join(lines), color="#546e7a", style="italic", linespacing=1.35)
        self.y_in += LINE_IN * len(lines) + 0.2


def render_preview_png(title: str, sections: Sequence[Section], dpi: int = 80) -> bytes:
    """The whole report as one PNG (page 13 in wide)."""
    height_in = 2 * MARGIN_IN + 0.5 + sum(0.45 + sum(_block_height_in(b) for b in s.blocks) for s in sections)
    page = _Page(height_in)
    page.heading(title, 15)
    for section in sections:
        page.y_in += 0.12
        page.heading(section.title, 12)
        for block in section.blocks:
            if isinstance(block, Paragraph):
                page.paragraph(block)
            elif isinstance(block, Table):
                page.table(block)
            else:
                page.figure(block)
    buffer = io.BytesIO()
    page.fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    page.plt.close(page.fig)
    return buffer.getvalue()


def write_preview_png(path: Path, title: str, sections: Sequence[Section], dpi: int = 80) -> Path:
    """Write :func:`render_preview_png` to ``path`` atomically."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(render_preview_png(title, sections, dpi))
    return Path(path)
