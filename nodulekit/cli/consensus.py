"""``nodulekit consensus-label``: reads -> nodules, consensus masks, cohorts, labels, folds."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from nodulekit.cli.common import DEFAULT_WORKDIR, ForceOption, WorkdirOption, console, progress_bar


def consensus_label(
    clevel: Annotated[float, typer.Option("--clevel", help="Consensus level: fraction of the nodule's reads.")] = 0.5,
    aggregate: Annotated[str, typer.Option("--aggregate", help="median | mean | mode of the readers' ratings.")] = "median",
    cohort: Annotated[Optional[str], typer.Option(
        "--cohort", help="luna16 | mtcnn | mtnet | msunet | custom: fills in_cohort/label, stratifies folds.")] = None,
    folds: Annotated[int, typer.Option("--folds", help="Patient-level folds.")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fold assignment.")] = 0,
    include_contour: Annotated[bool, typer.Option(
        "--include-contour", help="Keep outline pixels in reader masks (pylidc leaves them out).")] = False,
    group_tol_mm: Annotated[Optional[float], typer.Option(
        "--group-tol-mm", help="Grouping tolerance in mm (default: the scan's slice spacing).")] = None,
    min_readers: Annotated[Optional[int], typer.Option("--min-readers", help="Custom rule: >= N readers.")] = None,
    max_spacing: Annotated[Optional[float], typer.Option("--max-spacing", help="Custom rule: slice spacing <= mm.")] = None,
    diameter_mm: Annotated[Optional[tuple[float, float]], typer.Option(
        "--diameter-mm", help="Custom rule: diameter range in mm, e.g. 3 25.")] = None,
    label: Annotated[Optional[str], typer.Option(
        "--label", help="Custom rule: characteristic to label (binary, with --benign/--malignant), or texture3 "
                        "(texture as 3 classes: 1-2 non-solid, >2 to <4 part-solid, 4-5 solid).")] = None,
    benign: Annotated[Optional[str], typer.Option("--benign", help="Custom label 0 range, e.g. 1-2 or <3.")] = None,
    malignant: Annotated[Optional[str], typer.Option("--malignant", help="Custom label 1 range, e.g. 4-5.")] = None,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    force: ForceOption = False,
) -> None:
    """Group reads into nodules, build consensus masks, cohorts, labels and folds.

    Outputs: WORKDIR/labels/nodules.csv and cohorts.md; in WORKDIR/consensus-label/: nodules.h5
    (masks), report.json, and the same nodules.csv and cohorts.md.

    Every run also writes label_luna16_texture (texture as 3 classes: 0 non-solid, 1 part-solid, 2 solid);
    --label texture3 --cohort custom makes the custom cohort's label texture and stratifies the folds by it.

    Example: nodulekit consensus-label --cohort mtcnn --folds 10 --seed 1 ;
    nodulekit consensus-label --min-readers 3 --label texture3 --cohort custom
    """
    from nodulekit.labels.cohorts import CustomRule
    from nodulekit.stages.consensus import ConsensusParams, consensus_label as run_stage

    params = ConsensusParams(
        clevel=clevel, aggregate=aggregate, include_contour_points=include_contour, group_tol_mm=group_tol_mm,
        cohort=cohort, folds=folds, seed=seed,
        custom=CustomRule(min_readers, max_spacing, tuple(diameter_mm) if diameter_mm else None, label, benign,
                          malignant))
    with progress_bar() as progress:
        task = progress.add_task("consensus scans", total=None, visible=False)
        result = run_stage(workdir, params, force=force,
                           on_start=lambda n: progress.update(task, total=n, visible=True),
                           on_advance=lambda: progress.advance(task))
    if result.up_to_date:
        console.print(f"consensus-label: up to date ({result.stage_dir}); use --force to redo")
    print_summary(result.summary)
    console.print("labels: " + ", ".join(str(p) for p in result.published), highlight=False)
    console.print(f"stage outputs: {result.stage_dir} (nodules.h5, nodules.csv, cohorts.md, report.json)",
                  highlight=False)


def print_summary(summary: dict) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=f"consensus-label: {summary['n_nodules']} nodules in {summary['n_scans']} scans, "
                        f"{summary['n_ambiguous_groups']} ambiguous group(s)", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("cohort", "scans", "nodules", "labels"):
        table.add_column(column)
    for name, p in summary["presets"].items():
        labels = "; ".join(f"{c.split('_', 2)[-1]} {v}" for c, v in p["labels"].items()) or "-"
        table.add_row(name, str(p["scans"]), str(p["nodules"]), labels)
    console.print(table)
    console.print("by readers: " + ", ".join(f"{k}: {v}" for k, v in summary["by_readers"].items()), highlight=False)
    console.print("folds: " + ", ".join(f"{f}: {v['nodules']} {v['labels']}" for f, v in summary["folds"].items()),
                  highlight=False)
