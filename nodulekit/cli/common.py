"""Options and output helpers shared by the command modules."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

DEFAULT_WORKDIR = Path("nodulekit-work")

console = Console()
err_console = Console(stderr=True)

WorkdirOption = Annotated[
    Path,
    typer.Option(
        "--workdir",
        "-w",
        envvar="NODULEKIT_WORKDIR",
        help="Work folder holding every stage's outputs (env NODULEKIT_WORKDIR).",
        file_okay=False,
    ),
]
ForceOption = Annotated[bool, typer.Option("--force", help="Redo the stage even if it is up to date.")]


def progress_bar():
    """A rich progress bar with counts, elapsed time and ETA (one style for every stage)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )
