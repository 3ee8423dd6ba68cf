"""Render report sections to Markdown and to one self-contained HTML file.

A section is a title and a list of blocks: ``Paragraph``, ``Table`` or ``Figure``. Figures are
PNG bytes: the HTML embeds them as base64 ``data:`` URIs (no external file, script, font or
link), the Markdown refers to ``figures/<name>.png`` written beside it. A table with a
``collapsed`` summary is folded: an HTML ``<details>`` element (closed until clicked), in
Markdown a heading before the table.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

from nodulekit.atomic import atomic_path, atomic_write_text


@dataclass
class Paragraph:
    text: str
    small: bool = False


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    #: when set, the table is folded under this summary line (HTML ``<details>``, a Markdown heading)
    collapsed: str = ""


@dataclass
class Figure:
    name: str
    png: bytes
    caption: str


Block = Union[Paragraph, Table, Figure]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def _md_table(table: Table) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in table.header) + " |",
             "|" + "|".join("---" for _ in table.header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    if table.caption:
        lines += ["", f"*{table.caption}*"]
    if table.collapsed:
        lines = [f"#### {table.collapsed}", "", *lines]
    return "\n".join(lines)


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    """Markdown text; figures are linked as ``figures/<name>.png``."""
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        for block in section.blocks:
            if isinstance(block, Paragraph):
                parts.append(f"<sub>{block.text}</sub>" if block.small else block.text)
            elif isinstance(block, Table):
                parts.append(_md_table(block))
            else:
                parts.append(f"![{block.caption}](figures/{block.name}.png)\n\n*{block.caption}*")
    return "\n\n".join(parts) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1180px;margin:24px auto;
padding:0 16px;color:#212121;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #1565c0;padding-bottom:6px}
h2{font-size:1.25em;margin-top:1.8em;color:#0d47a1}
table{border-collapse:collapse;margin:10px 0;font-size:0.92em}
th,td{border:1px solid #cfd8dc;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#eceff1}
td:nth-child(n+2){font-variant-numeric:tabular-nums}
.caption{font-size:0.88em;color:#546e7a;margin:2px 0 14px}
.small{font-size:0.85em;color:#546e7a}
figure{margin:12px 0}
img{max-width:100%;border:1px solid #eceff1}
details{margin:10px 0}
summary{cursor:pointer;color:#0d47a1}
"""


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c).replace(chr(10), '<br>')}</td>" for c in row) + "</tr>"
                   for row in table.rows)
    caption = f'<div class="caption">{html.escape(table.caption)}</div>' if table.caption else ""
    text = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{caption}"
    if table.collapsed:
        return f"<details><summary>{html.escape(table.collapsed)}</summary>{text}</details>"
    return text


def _html_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return f'<p class="{"small" if block.small else ""}">{html.escape(block.text)}</p>'
    if isinstance(block, Table):
        return _html_table(block)
    data = base64.b64encode(block.png).decode("ascii")
    return (f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
            f'<figcaption class="caption">{html.escape(block.caption)}</figcaption></figure>')


def render_html(title: str, sections: Sequence[Section]) -> str:
    """One self-contained HTML page: inline CSS, figures as base64 PNG, no external reference."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body.extend(_html_block(block) for block in section.blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report_files(out_dir: Path, title: str, sections: Sequence[Section],
                       stem: str = "report") -> tuple[Path, Path]:
    """Write <stem>.md (+ figures/*.png) and <stem>.html into ``out_dir``, each atomically."""
    figures_dir = Path(out_dir) / "figures"
    for section in sections:
        for block in section.blocks:
            if isinstance(block, Figure):
                with atomic_path(figures_dir / f"{block.name}.png") as tmp:
                    tmp.write_bytes(block.png)
    md_path, html_path = Path(out_dir) / f"{stem}.md", Path(out_dir) / f"{stem}.html"
    atomic_write_text(md_path, render_markdown(title, sections))
    atomic_write_text(html_path, render_html(title, sections))
    return md_path, html_path
