"""``nodulekit phantom``: write a LIDC-shaped download (DICOM + XML) with no real images."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from nodulekit.cli.common import console


def phantom(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the phantom download into.")],
    scans: Annotated[int, typer.Option("--scans", min=1, help="Number of LIDC scans to imitate.")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (the phantom is deterministic per seed).")] = 0,
    patients: Annotated[Optional[str], typer.Option(
        "--patients", help="Comma-separated LIDC patient ids to imitate (overrides --scans).")] = None,
    matrix: Annotated[int, typer.Option("--matrix", help="In-plane matrix (512 = real size).")] = 512,
    max_slices: Annotated[Optional[int], typer.Option(
        "--max-slices", help="Keep only a slab of this many slices around the nodules.")] = None,
) -> None:
    """Write a LIDC phantom: real scan geometry and reader contours, synthetic anatomy.

    Example: nodulekit phantom --out demo-data --scans 3 --matrix 256 --max-slices 48
    """
    from nodulekit.phantom import write_phantom

    patient_list = [p.strip() for p in patients.split(",")] if patients else None
    summary = write_phantom(out, n_scans=scans, seed=seed, patients=patient_list, matrix=matrix,
                            max_slices=max_slices)
    console.print(f"phantom: {len(summary.scans)} scan(s) written to {summary.root}")
