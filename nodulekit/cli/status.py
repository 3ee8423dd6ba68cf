"""``nodulekit status``: what each stage's outputs are and whether they are current."""
from __future__ import annotations

import json
from typing import Annotated

import typer

from nodulekit.cli.common import DEFAULT_WORKDIR, WorkdirOption, console


def status(
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show each stage: missing / partial (n of m) / up to date / stale (why), with its parameters.

    Example: nodulekit status --workdir nodulekit-work --json
    """
    from nodulekit.pipeline import pipeline_status

    stages = pipeline_status(workdir)
    if as_json:
        typer.echo(json.dumps({"workdir": str(workdir), "stages": [s.as_dict() for s in stages]}, indent=2))
        return
    from rich.table import Table

    colours = {"missing": "dim", "partial": "yellow", "up to date": "green", "stale": "red"}
    table = Table(title=f"nodulekit status: {workdir}")
    table.add_column("stage")
    table.add_column("state")
    table.add_column("parameters")
    table.add_column("finished (UTC)")
    for stage in stages:
        params = ", ".join(f"{k}={v}" for k, v in stage.params.items() if v is not None)
        colour = colours.get(stage.state, "")
        table.add_row(stage.stage, f"[{colour}]{stage.label}[/]", params or "-", stage.finished_utc or "-")
    console.print(table)
