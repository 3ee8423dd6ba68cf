"""``nodulekit augment``: offline augmented copies of a crop store (papers 000, 002, 003)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from nodulekit.cli.common import DEFAULT_WORKDIR, ForceOption, WorkdirOption, console, progress_bar


def augment(
    preset: Annotated[str, typer.Option("--for", help="Crop preset to augment: reads WORKDIR/crop/PRESET/.")],
    factor: Annotated[Optional[int], typer.Option("--factor", help="Copies per original (default: the recipe's).")] = None,
    ops: Annotated[Optional[str], typer.Option(
        "--ops", help="Ops instead of the recipe's, each NAME or NAME:P: crop, zoom, scale, rotate, translate, "
                      "rot90, flip, hflip, vflip, noise.")] = None,
    recipe: Annotated[Optional[str], typer.Option(
        "--recipe", help="mtnet | mtcnn | msunet | dgnet | cascade (default: the preset's).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampled parameters.")] = 0,
    val_fold: Annotated[Optional[list[int]], typer.Option(
        "--val-fold", help="A fold that never trains (fixed validation/test split): no copies. Repeatable.")] = None,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    force: ForceOption = False,
) -> None:
    """Add augmented copies of the training patches, in a store of their own.

    Outputs in WORKDIR/augment/PRESET/: patches.h5 (originals + copies) and report.json.

    Each row records source_index, is_augmented and the applied op parameters as JSON.

    Example: nodulekit augment --for mtcnn --factor 4 --seed 1 --val-fold 4
    """
    from nodulekit.stages.augment import AugmentParams, augment as run_stage

    params = AugmentParams(preset=preset, recipe=recipe, ops=ops, factor=factor, seed=seed,
                           held_out_folds=tuple(val_fold or ()))
    with progress_bar() as progress:
        task = progress.add_task("augment chunks", total=None, visible=False)
        result = run_stage(workdir, params, force=force,
                           on_start=lambda n: progress.update(task, total=n, visible=True),
                           on_advance=lambda: progress.advance(task))
    if result.up_to_date:
        console.print(f"augment: up to date ({result.stage_dir}); use --force to redo")
    report = result.report
    console.print(f"augment/{preset}: recipe {report['recipe']['name']} x{report['recipe']['factor']}, "
                  f"{report['n_sources']} originals + {report['n_copies']} copies = {report['n_patches']} patches",
                  highlight=False)
    console.print("by fold: " + ", ".join(f"{f}: {v['originals']}+{v['copies']}" for f, v in report["folds"].items()),
                  highlight=False)
    console.print(f"outputs: {result.stage_dir} (patches.h5, report.json)")
