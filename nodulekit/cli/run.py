"""``nodulekit run``: every stage for one model (cached, resumable), or ``--demo`` on a phantom."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from nodulekit.cli.common import console, progress_bar

DEMO_WORKDIR = Path("nodulekit-demo")


def run(
    model: Annotated[Optional[str], typer.Argument(help="Model to run (see `nodulekit models`).",
                                                   show_default=False)] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Write a small phantom and run a small MT-Net on it "
                                                      "(workdir default: nodulekit-demo).")] = False,
    lidc_root: Annotated[Optional[Path], typer.Option("--lidc-root", help="The LIDC-IDRI download (any layout).")] = None,
    patients: Annotated[Optional[str], typer.Option("--patients", help="Comma-separated ids or globs.")] = None,
    fold: Annotated[Optional[list[int]], typer.Option(
        "--fold", help="Validation fold of the run (default 0); repeatable.")] = None,
    folds: Annotated[Optional[str], typer.Option(
        "--folds", help="Cross-validation: 'all' (one run per fold, predictions pooled) or a list like 0,2.")] = None,
    n_folds: Annotated[int, typer.Option("--n-folds", help="Patient-level folds made by consensus-label.")] = 5,
    cohort: Annotated[Optional[str], typer.Option(
        "--cohort", help="Cohort whose label stratifies the folds (luna16 | mtcnn | mtnet | msunet).")] = None,
    augment: Annotated[Optional[bool], typer.Option(
        "--augment/--no-augment", help="Offline copies (default: the model config's augmentation.mode).",
        show_default=False)] = None,
    config: Annotated[Optional[list[Path]], typer.Option("--config", help="TOML layered over the model's.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Config override KEY=VALUE (repeatable).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs of every phase.")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Optimizer steps per phase.")] = None,
    gpus: Annotated[Optional[int], typer.Option("--gpus", help="GPUs (one process each); 0 = CPU.")] = None,
    n_boot: Annotated[Optional[int], typer.Option("--boot", help="Bootstrap resamples per CI (default 1000).")] = None,
    until: Annotated[str, typer.Option(
        "--until", help="Stop after this stage: ingest | consensus-label | crop | augment | train | evaluate.")] = "evaluate",
    workers: Annotated[Optional[int], typer.Option("--workers", "-j", min=1, help="Processes for ingest, crop.")] = None,
    workdir: Annotated[Optional[Path], typer.Option(
        "--workdir", "-w", envvar="NODULEKIT_WORKDIR", file_okay=False,
        help="Work folder (env NODULEKIT_WORKDIR); default nodulekit-work, or nodulekit-demo with --demo.",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo every stage even if it is up to date.")] = False,
    coarse_config: Annotated[Optional[list[Path]], typer.Option(
        "--coarse-config", help="msunet: TOML layered over munet3d's config.")] = None,
    coarse_set: Annotated[Optional[list[str]], typer.Option(
        "--coarse-set", help="msunet: munet3d config override KEY=VALUE (repeatable).")] = None,
) -> None:
    """Run ingest -> consensus-label -> crop -> augment -> train -> evaluate --report for one model.

    Each stage skips when it is up to date, so a rerun after a crash continues where it stopped.

    msunet also trains its 3D coarse stage (munet3d, one run per fold) and evaluates the two-stage chain.

    Example: nodulekit run mtnet --lidc-root /data/LIDC-IDRI --gpus 1 ; nodulekit run msunet --lidc-root /data/LIDC-IDRI --folds all --coarse-set model.width=0.5 ; nodulekit run --demo
    """
    from dataclasses import replace

    from nodulekit.errors import NodulekitError
    from nodulekit.stages.demo import DEMO, run_demo
    from nodulekit.stages.run_all import RunParams, parse_folds, run_pipeline

    if demo and (model or lidc_root):
        raise NodulekitError("--demo runs its own model on its own phantom; drop MODEL / --lidc-root")
    if not demo and not model:
        raise NodulekitError("name a model (see `nodulekit models`), or try `nodulekit run --demo`")
    base = DEMO if demo else RunParams(model=model or "", lidc_root=lidc_root, n_folds=n_folds, cohort=cohort)
    chosen = {"patients": tuple(p.strip() for p in patients.split(",")) if patients else None,
              "folds": parse_folds(fold, folds, base.n_folds),
              "augment": augment, "config_files": tuple(config or ()), "epochs": epochs, "max_steps": max_steps,
              "gpus": gpus, "n_boot": n_boot, "workers": workers,
              "coarse_config_files": tuple(coarse_config or ()), "coarse_config_overrides": tuple(coarse_set or ())}
    extra = {"config_overrides": base.config_overrides + tuple(set_ or ()), "until": until}
    params = replace(base, **{k: v for k, v in chosen.items() if v not in (None, ())}, **extra)
    workdir = workdir or (DEMO_WORKDIR if demo else Path("nodulekit-work"))
    with progress_bar() as progress:
        on_event = _printer(progress)
        if demo:
            result = run_demo(workdir, params=params, force=force, on_event=on_event, progress=True)
        else:
            result = run_pipeline(workdir, params, force=force, on_event=on_event, progress=True)
    console.print(f"done in {result.seconds:.0f} s" + ("" if result.did_work else " (everything was up to date)"))
    if result.report_html:
        console.print(f"report: {result.report_html}", highlight=False, soft_wrap=True)
    if result.report_preview:
        console.print(f"report preview (PNG): {result.report_preview}", highlight=False, soft_wrap=True)


def _printer(progress):
    """One line per finished stage; a progress bar for stages with items."""
    tasks: dict[str, int] = {}

    def on_event(event) -> None:
        if event.kind == "items" and event.total:
            tasks[event.stage] = progress.add_task(event.stage, total=event.total)
        elif event.kind == "advance" and event.stage in tasks:
            progress.advance(tasks[event.stage])
        elif event.kind == "done":
            if event.stage in tasks:
                progress.remove_task(tasks.pop(event.stage))
            colour = "dim" if event.status == "up to date" else "green"
            progress.console.print(f"{event.stage:<28} [{colour}]{event.status:<10}[/] {event.seconds:6.1f} s  "
                                   f"{event.detail}", highlight=False, soft_wrap=True)

    return on_event
