"""``nodulekit infer``: trained model(s) on new scans at given nodule locations -> masks and results."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from nodulekit.cli.common import console, err_console


def infer(
    model: Annotated[list[Path], typer.Option(
        "--model", help="Training run folder (WORKDIR/runs/<run>) or a checkpoint in it. Repeat for an ensemble "
                        "(runs of one model, probabilities averaged) or for munet3d + msunet (two stages).")],
    input: Annotated[Path, typer.Option(
        "--input", help="DICOM series folder, folder of many series, or a NIfTI/NRRD/MHA file (HU).")],
    nodules: Annotated[Optional[Path], typer.Option(
        "--nodules", help="LUNA16-style CSV (seriesuid,coordX,coordY,coordZ[,diameter_mm], world mm) or a "
                          "LIDC XML read file.")] = None,
    at: Annotated[Optional[str], typer.Option("--at", help="One nodule at X,Y,Z (world mm; one scan).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder (nothing is written outside it).",
                                      file_okay=False)] = Path("nodulekit-infer"),
    device: Annotated[str, typer.Option("--device", help="cpu | cuda (cuda:N).")] = "cpu",
    png: Annotated[bool, typer.Option("--png", help="Also write PNG overlays, one per nodule.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Patches per forward pass.")] = 16,
    precision: Annotated[str, typer.Option(
        "--precision", help="auto (bf16 on CUDA and on CPUs with native bf16, else fp32) | fp32 | bf16.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1, help="CPU threads (default: every core; 1 is often faster on a busy machine).")] = None,
) -> None:
    """Segment and classify given nodules of new scans; write masks, DICOM-SEG and results tables.

    Outputs in --out: results.csv and results.json (one row per nodule), masks/<scan>.nii.gz (label map,
    nodule i = i), dicom-seg/<scan>.dcm (DICOM input), png/ (with --png).

    Example: nodulekit infer --model nodulekit-work/runs/mtnet-fold0-20260101T000000Z
    --input LIDC-IDRI/LIDC-IDRI-0001 --at 43.9,77.0,-115
    """
    from nodulekit.inference.infer import infer as run_infer
    from nodulekit.inference.inputs import NoduleSpec

    spec = NoduleSpec.parse(nodules=nodules, at=at)
    result = run_infer(model, input, spec, out, device=device, png=png, batch_size=batch_size, precision=precision,
                       threads=threads,
                       progress=lambda line: err_console.print(line, highlight=False, soft_wrap=True))
    console.print(f"infer ({result.plan}): {len(result.rows)} nodule(s) in {len(result.scans)} scan(s), "
                  f"{result.seconds:.1f} s", highlight=False)
    shown = 20
    for row in result.rows[:shown]:
        probs = ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k.endswith("_prob") and v is not None)
        size = (f"diameter {row['diameter_mm']:.1f} mm, volume {row['volume_mm3']:.0f} mm3"
                if row.get("diameter_mm") is not None and row["diameter_mm"] == row["diameter_mm"] else "no mask")
        console.print(f"  {row['scan'][-12:]} nodule {row['nodule']}: {probs or 'no class head'}; {size}",
                      highlight=False)
    if len(result.rows) > shown:
        console.print(f"  ... {len(result.rows) - shown} more in results.csv", highlight=False)
    at_edge = [row for row in result.rows if row.get("mask_at_patch_edge")]
    if at_edge:
        err_console.print(f"warning: {len(at_edge)} nodule mask(s) reach the edge of the model's patch (results.csv "
                          "column mask_at_patch_edge = 1): the model over-segments or the nodule is larger than the "
                          "patch; their diameters and volumes are not reliable", highlight=False, soft_wrap=True)
    names = sorted({f.relative_to(result.out_dir).parts[0] + ("/" if f.parent != result.out_dir else "")
                    for f in result.files})
    console.print(f"outputs: {result.out_dir} ({', '.join(names)})", highlight=False)
