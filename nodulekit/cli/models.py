"""``nodulekit models``: the registered models, their papers, geometry, tasks and parameter counts."""
from __future__ import annotations

import json
from typing import Annotated

import typer

from nodulekit.cli.common import console


def models(
    counts: Annotated[bool, typer.Option("--counts/--no-counts",
                                         help="Build each model at the paper's widths to count parameters.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the registered models: paper, tasks, input geometry (crop preset) and parameters.

    Example: nodulekit models --json
    """
    from nodulekit.models.registry import model_table

    rows = model_table(with_counts=counts)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="nodulekit models")
    for column in ("model", "paper", "tasks", "crop preset", "patch", "parameters"):
        table.add_column(column, overflow="fold")
    for row in rows:
        parts = row.get("param_counts") or {}
        params = "\n".join(f"{name}: {n / 1e6:.2f} M" for name, n in parts.items()) or "-"
        table.add_row(row["model"], row["paper"], ", ".join(row["tasks"]),
                      row["crop_preset"], "x".join(map(str, row["patch_shape_px"])), params)
    console.print(table)
