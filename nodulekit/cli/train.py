"""``nodulekit train``: train a registered model on its patch store(s) -> WORKDIR/runs/<run>/."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from nodulekit.cli.common import DEFAULT_WORKDIR, WorkdirOption, console


def train(
    model: Annotated[Optional[str], typer.Argument(help="Registered model (see `nodulekit models`).",
                                                   show_default=False)] = None,
    fold: Annotated[int, typer.Option("--fold", help="Validation fold; the others train.")] = 0,
    folds: Annotated[Optional[str], typer.Option(
        "--folds", help="Cross-validation: 'all' (every fold of the store, one run each) or a list like 0,2.")] = None,
    gpus: Annotated[Optional[int], typer.Option(
        "--gpus", help="N GPUs with DistributedDataParallel (one process each); 0 = CPU.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto (a GPU when visible) | cpu | cuda.")] = "auto",
    config: Annotated[Optional[list[Path]], typer.Option(
        "--config", help="TOML file over the model's defaults (repeatable).", dir_okay=False)] = None,
    overrides: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override one config key, e.g. optimizer.lr=3e-4 (repeatable).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs of every phase.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(
        "--max-steps", min=1, help="Stop each phase after N optimizer steps.")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue an interrupted run (its name).")] = None,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the training step.")] = False,
    stores: Annotated[Optional[str], typer.Option(
        "--stores", help="crop | augment | both (default: by the config's augmentation.mode).")] = None,
    init: Annotated[Optional[str], typer.Option(
        "--init", help="Transfer learning: start from this run's weights (a run name in WORKDIR/runs, a run "
                       "folder or a .pt file); sets model.transfer.init_from.")] = None,
    freeze: Annotated[Optional[str], typer.Option(
        "--freeze", help="Transfer learning: blocks kept frozen, e.g. S1,S5,S9,C1,FC; sets model.transfer.freeze.")] = None,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
) -> None:
    """Train MODEL on its patch store(s); prints the run folder and the final metrics.

    Outputs in WORKDIR/runs/<model>-fold<K>-<UTC time>/: config.toml, run.json, log.csv, model.pt, checkpoints/.

    Ctrl-C saves a checkpoint; continue with --resume RUN.

    Example: nodulekit train mtnet --epochs 1 --max-steps 20 --set model.width=0.125 ; nodulekit train dgnet --folds all ;
    nodulekit train dgnet --init dgnet-fold0-20261123T101500Z --freeze S1,S5 (fine-tune, paper 001 section 4.5)
    """
    from nodulekit.training.api import train as run_training, train_folds

    overrides = list(overrides or []) + transfer_overrides(workdir, init, freeze)
    kwargs = dict(config_overrides=overrides, config_files=config or [], gpus=gpus, device=device,
                  epochs=epochs, max_steps=max_steps, compile=compile_, stores=stores)
    if folds is not None:
        if resume is not None:
            from nodulekit.errors import NodulekitError

            raise NodulekitError("--folds starts new runs: resume one run with --resume RUN alone")
        results = train_folds(workdir, model, _parse_folds(folds), **kwargs)
    else:
        results = [run_training(workdir, model, fold=fold, resume=resume, **kwargs)]
    for result in results:
        print_result(result)
    if len(results) > 1:
        print_folds(results)
    if any(r.status != "complete" for r in results):
        raise typer.Exit(130)


def transfer_overrides(workdir: Path, init: str | None, freeze: str | None) -> list[str]:
    """``--init`` / ``--freeze`` as ``--set`` entries of the model's ``[model.transfer]`` table.

    ``--init`` names a run in ``WORKDIR/runs`` or a path; the resolved absolute path is what the
    run config records. A model without ``[model.transfer]`` rejects the key with a clear error.
    """
    import json

    from nodulekit.errors import NodulekitError

    entries: list[str] = []
    if init is not None:
        candidate = Path(workdir) / "runs" / init
        path = candidate if candidate.exists() else Path(init)
        if not path.exists():
            raise NodulekitError(f"--init {init}: no run {candidate} and no such file or folder")
        entries.append(f"model.transfer.init_from={json.dumps(str(path.resolve()))}")
    if freeze is not None:
        names = [name.strip() for name in freeze.split(",") if name.strip()]
        entries.append(f"model.transfer.freeze={json.dumps(names)}")
    return entries


def _parse_folds(text: str) -> str | list[int]:
    from nodulekit.errors import NodulekitError

    if text == "all":
        return "all"
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise NodulekitError(f"--folds {text!r}: expected 'all' or fold numbers like 0,1,2") from None


def print_result(result) -> None:
    for note in result.notes:
        console.print(f"[yellow]note[/]: {note}", highlight=False, soft_wrap=True)
    if result.status != "complete":
        console.print(f"[yellow]{result.status}[/] after {result.steps} steps: {result.run_dir}; continue with "
                      f"`nodulekit train --resume {result.name}`", highlight=False, soft_wrap=True)
        return
    console.print(f"{result.model} fold {result.fold}: complete, {result.steps} steps -> {result.run_dir}",
                  highlight=False, soft_wrap=True)
    for phase, best in result.best.items():
        if best.get("metric") is not None:
            console.print(f"  best {phase}: {best['metric']} = {best['value']:.4g} (epoch {best['epoch']})",
                          highlight=False)
        for group, entry in best.get("groups", {}).items():
            console.print(f"  best {phase} {group}: {entry['metric']} = {entry['value']:.4g} (epoch {entry['epoch']})",
                          highlight=False)
    final = result.final_metrics()
    if final:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in final.items())
        console.print(f"  last epoch ({result.last_row.get('phase')}): {shown}", highlight=False, soft_wrap=True)
    for key, value in result.post_training.items():
        console.print(f"  post-training {key}: {value}", highlight=False, soft_wrap=True)


def print_folds(results) -> None:
    from rich import box
    from rich.table import Table

    names = sorted({k for r in results for k in r.final_metrics()})
    table = Table(title="cross-validation (last epoch)", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ["fold", "run", *names]:
        table.add_column(column)
    for r in results:
        metrics = r.final_metrics()
        table.add_row(str(r.fold), r.name, *[f"{metrics[n]:.4g}" if n in metrics else "" for n in names])
    console.print(table)
