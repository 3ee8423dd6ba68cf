"""``nodulekit evaluate``: score a trained run on its held-out fold(s); optionally write the report."""
from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from nodulekit.cli.common import DEFAULT_WORKDIR, WorkdirOption, console


def evaluate(
    runs: Annotated[Optional[list[str]], typer.Argument(help="Runs to put side by side (with --compare).",
                                                        show_default=False)] = None,
    run: Annotated[Optional[list[str]], typer.Option(
        "--run", help="Run name under WORKDIR/runs (default: the most recent). Repeat to pool the folds of a "
                      "cross-validation.")] = None,
    fold: Annotated[Optional[int], typer.Option("--fold", help="Evaluate only this held-out fold.")] = None,
    coarse_run: Annotated[Optional[list[str]], typer.Option(
        "--coarse-run", help="msunet: the munet3d run of the same fold whose coarse masks pick the slabs (paper "
                             "003's two stages); recorded in the msunet run.json. One per --run, in order.")] = None,
    report: Annotated[bool, typer.Option("--report", help="Also write report.html and report.md.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the aggregate metrics as JSON.")] = False,
    compare: Annotated[bool, typer.Option("--compare", help="Compare the RUNS given as arguments.")] = False,
    n_boot: Annotated[int, typer.Option("--boot", help="Bootstrap resamples (patients) per CI.")] = 1000,
    force: Annotated[bool, typer.Option("--force", help="Predict again even if predictions.h5 is current.")] = False,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
) -> None:
    """Predict the held-out patches of a run, write metrics.json (95% patient-bootstrap CIs), print the table.

    Outputs in WORKDIR/runs/<run>/evaluation/: predictions.h5, metrics.json [, report.html, report.md].

    Example: nodulekit evaluate --report ; nodulekit evaluate --compare mtnet-0-A mtnet-0-B ;
    nodulekit evaluate --run msunet-fold0-A --coarse-run munet3d-fold0-B --report
    """
    from nodulekit.errors import NodulekitError
    from nodulekit.evaluation import EvaluateParams, compare as compare_runs, evaluate as run_evaluation
    from nodulekit.evaluation.api import link_coarse_runs

    params = EvaluateParams(n_boot=n_boot, force=force)
    if compare:
        result = compare_runs(workdir, runs or [], params=params)
        print_table(result.header, result.rows, f"comparison: {', '.join(result.runs)}")
        console.print(f"outputs: {result.out_dir} (comparison.md, comparison.html, comparison.json)")
        return
    if runs:
        raise NodulekitError("give runs with --run (or use --compare RUN_A RUN_B ...)")
    if coarse_run:
        if not run:
            raise NodulekitError("--coarse-run needs the msunet run(s) it belongs to: give them with --run")
        link_coarse_runs(workdir, run, coarse_run)
    result = run_evaluation(workdir, run=run or None, fold=fold, report=report, params=params)
    if as_json:
        keys = ("model", "runs", "folds", "data", "aggregate", "reader_agreement")
        typer.echo(json.dumps({k: result.metrics[k] for k in keys if k in result.metrics}, indent=2))
        return
    from nodulekit.evaluation.report import aggregate_lines, paper_column, run_column

    print_table(["task", "metric", run_column(result.metrics), paper_column(result.metrics)],
                [list(row) for row in aggregate_lines(result.metrics)],
                f"evaluate {', '.join(result.runs)}: folds {result.metrics['folds']}, estimate [95% CI by patient]")
    reused = " (predictions reused)" if all(result.reused_predictions) else ""
    console.print(f"outputs: {result.out_dir}{reused}" + (f"; report: {result.report_html}" if report else ""))


def print_table(header: list[str], rows: list[list[str]], title: str) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for column in header:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)
