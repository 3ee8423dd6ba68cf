"""``nodulekit crop``: cohort nodules -> an HDF5 patch store in one model's input geometry."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from nodulekit.cli.common import DEFAULT_WORKDIR, ForceOption, WorkdirOption, console, progress_bar


def crop(
    model: Annotated[str, typer.Option(
        "--for", help="Preset: mtnet | dgnet | mtcnn (nine views) | mtcnn-cube | msunet (2.5D) | munet3d | cascade.")],
    geometry: Annotated[Optional[str], typer.Option("--geometry", help="2d | 2.5d | 3d | views9.")] = None,
    size: Annotated[Optional[int], typer.Option("--size", help="Patch edge in pixels, e.g. 64.")] = None,
    spacing_mm: Annotated[Optional[str], typer.Option(
        "--spacing-mm", help="Output spacing: one value (isotropic), z,y,x (e.g. 1,0.7,0.7) or 'native' (2d).")] = None,
    hu_window: Annotated[Optional[tuple[float, float]], typer.Option("--hu-window", help="HU window LO HI.")] = None,
    normalize: Annotated[Optional[str], typer.Option("--normalize", help="01 | pm1 | none (window only).")] = None,
    cohort: Annotated[Optional[str], typer.Option(
        "--cohort", help="Nodules of cohort_NAME (luna16 | mtcnn | mtnet | msunet | custom | all).")] = None,
    empty_ratio: Annotated[Optional[float], typer.Option(
        "--empty-ratio", help="2d: empty slices per nodule slice (dgnet: 1).")] = None,
    views_sampling: Annotated[Optional[str], typer.Option(
        "--views-sampling", help="views9 diagonals: isotropic (1 voxel steps) | corner (voxel diagonals).")] = None,
    workers: Annotated[int, typer.Option("--workers", "-j", min=1, help="Scans cropped in parallel.")] = 1,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    force: ForceOption = False,
) -> None:
    """Crop every cohort nodule into the patches of one model -> WORKDIR/crop/<preset>/patches.h5.

    Each preset is its own cached stage (crop/mtnet, crop/mtcnn, ...); explicit options override it.

    Example: nodulekit crop --for cascade --size 48 --spacing-mm 1,0.7,0.7 --hu-window -1024 400
    """
    from nodulekit.patches.presets import resolve_geometry
    from nodulekit.stages.crop import CropParams, crop as run_stage

    params = CropParams(resolve_geometry(
        model, geometry=geometry, size=size, spacing_mm=spacing_mm, hu_window=hu_window, normalize=normalize,
        cohort=cohort, empty_ratio=empty_ratio, views_sampling=views_sampling), workers=workers)
    with progress_bar() as progress:
        task = progress.add_task(f"crop/{model} scans", total=None, visible=False)
        result = run_stage(workdir, params, force=force,
                           on_start=lambda n: progress.update(task, total=n, visible=True),
                           on_advance=lambda: progress.advance(task))
    if result.up_to_date:
        console.print(f"crop/{model}: up to date ({result.stage_dir}); use --force to redo")
    print_summary(result.summary)
    console.print(f"outputs: {result.stage_dir / result.summary['store']} (+ summary.json)")


def print_summary(summary: dict) -> None:
    from nodulekit.stages.crop import missing_lines

    shape = "x".join(map(str, summary["patch_shape"]))
    console.print(f"{summary['stage']}: {summary['n_patches']} patches ({shape}) of {summary['n_nodules']} nodules "
                  f"in {summary['n_scans']} scans; cohort {summary['cohort']}, label "
                  f"{summary['label_column'] or 'none (-1)'}", highlight=False)
    for fold, labels in summary["patches_by_fold_label"].items():
        nodules = summary["nodules_by_fold_label"].get(fold, {})
        console.print(f"  fold {fold}: patches " + ", ".join(f"label {k}: {v}" for k, v in labels.items())
                      + "; nodules " + ", ".join(f"label {k}: {v}" for k, v in nodules.items()), highlight=False)
    for skipped in summary["skipped_nodules"]:
        console.print(f"[yellow]left out[/] {skipped['nodule_key']}: {skipped['reason']}", highlight=False)
    missing = summary["missing_images"]
    if missing["n_series"]:
        console.print(f"[yellow]missing images[/]: {missing['n_nodules']} cohort nodule(s) in {missing['n_series']} "
                      "series left out (no volume store; ingest their DICOM files):", highlight=False)
        for line in missing_lines(missing["series"]):
            console.print(f"  {line}", highlight=False, soft_wrap=True)
