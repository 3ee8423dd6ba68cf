"""``evaluate --compare RUN_A RUN_B ...``: the evaluation tables of several runs side by side.

Each run's ``evaluation/metrics.json`` is read (and made with :func:`evaluate` when missing);
the aggregate metrics, the per-characteristic Dice and the paper's numbers of each model
appear as columns. Written to ``WORKDIR/evaluations/compare-<key>/comparison.{md,html,json}``.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodulekit.atomic import atomic_write_json
from nodulekit.errors import NodulekitError
from nodulekit.evaluation.api import EVALUATIONS_DIR, EvaluateParams, evaluate
from nodulekit.evaluation.paper_numbers import paper_result
from nodulekit.evaluation.predictor import Predictor, PredictorFactory
from nodulekit.evaluation.render import Paragraph, Section, Table, write_report_files
from nodulekit.evaluation.report import fmt_entry, fmt_paper, metric_label
from nodulekit.evaluation.runs import resolve_run


@dataclass
class CompareResult:
    """Side-by-side tables of several runs and where they were written."""

    runs: list[str]
    header: list[str]
    rows: list[list[str]]
    out_dir: Path
    breakdown_header: list[str] = field(default_factory=list)
    breakdown_rows: list[list[str]] = field(default_factory=list)


def _load_metrics(workdir: Path, run: str, predictor: Predictor | PredictorFactory | None,
                  params: EvaluateParams | None) -> dict[str, Any]:
    path = resolve_run(workdir, run) / "evaluation" / "metrics.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise NodulekitError(f"{path}: not valid JSON ({error})") from None
    return evaluate(workdir, run, predictor=predictor, params=params).metrics


def _metric_keys(all_metrics: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(group, metric) pairs in first-seen order: segmentation first, then each task."""
    keys: dict[tuple[str, str], None] = {}
    for m in all_metrics:
        for key in m["aggregate"].get("segmentation", {}).get("metrics", {}):
            keys[("segmentation", key)] = None
    for m in all_metrics:
        for task, summary in m["aggregate"]["classification"].items():
            keys.update(dict.fromkeys((task, key) for key in summary["metrics"]))
    return list(keys)


def _run_cell(metrics: Mapping[str, Any], group: str, key: str) -> str:
    aggregate = metrics["aggregate"]
    part = aggregate.get("segmentation") if group == "segmentation" else aggregate["classification"].get(group)
    entry = (part or {}).get("metrics", {}).get(key)
    return fmt_entry(key, entry) if entry else "–"


def _paper_cell(model: str, n_tasks: int, group: str, key: str) -> str:
    paper = paper_result(model)
    if paper is None:
        return "–"
    values = paper.segmentation if group == "segmentation" else paper.task_values(group, n_tasks)
    return fmt_paper(key, values.get(key))


def _breakdown(names: Sequence[str], all_metrics: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    labels: dict[str, None] = {}
    by_run = []
    for m in all_metrics:
        entries = {e["label"]: e for e in m.get("by_characteristic") or []}
        labels.update(dict.fromkeys(entries))
        by_run.append(entries)
    header = ["category", *[f"DI (%) {n}" for n in names]]
    rows = [[label, *[fmt_entry("dice", e[label]["metrics"]["dice"]) + f"\n[n={e[label]['n']}]" if label in e
                      else "–" for e in by_run]] for label in labels]
    return header, rows


def compare(workdir: Path, runs: Sequence[str], predictor: Predictor | PredictorFactory | None = None,
            params: EvaluateParams | None = None) -> CompareResult:
    """Side-by-side aggregate tables of ``runs`` (names under WORKDIR/runs or paths)."""
    if len(runs) < 2:
        raise NodulekitError("--compare needs at least two runs")
    workdir = Path(workdir)
    names = [resolve_run(workdir, r).name for r in runs]
    all_metrics = [_load_metrics(workdir, r, predictor, params) for r in runs]
    models = list(dict.fromkeys(m["model"] for m in all_metrics))
    header = ["metric", *[f"{n}\n(this run, {m['data']['dataset']})" for n, m in zip(names, all_metrics)],
              *[f"{paper_result(model).label}\n({model})" for model in models if paper_result(model)]]
    rows = []
    for group, key in _metric_keys(all_metrics):
        cells = [_run_cell(m, group, key) for m in all_metrics]
        papers = [_paper_cell(model, max(len(m["tasks"]) for m in all_metrics), group, key)
                  for model in models if paper_result(model)]
        rows.append([f"{group}: {metric_label(key, group == 'segmentation')}", *cells, *papers])
    breakdown_header, breakdown_rows = _breakdown(names, all_metrics)
    key = hashlib.sha256("\n".join(names).encode()).hexdigest()[:8]
    out_dir = workdir / EVALUATIONS_DIR / f"compare-{key}"
    result = CompareResult(names, header, rows, out_dir, breakdown_header, breakdown_rows)
    _write(result, all_metrics)
    return result


def _write(result: CompareResult, all_metrics: Sequence[Mapping[str, Any]]) -> None:
    intro = Paragraph("Each run's held-out predictions scored by `nodulekit evaluate` (estimate [95% CI], CIs by "
                      "patient bootstrap). Runs on different folds or data are not paired: overlapping intervals "
                      "do not test a difference. Paper columns repeat what each paper reports on its own data.")
    sections = [Section("Aggregate metrics", [intro, Table(result.header, result.rows)])]
    if result.breakdown_rows:
        sections.append(Section("Segmentation by nodule characteristic",
                                [Table(result.breakdown_header, result.breakdown_rows)]))
    write_report_files(result.out_dir, "nodulekit comparison: " + ", ".join(result.runs), sections, stem="comparison")
    atomic_write_json(result.out_dir / "comparison.json",
                      {"runs": result.runs, "header": result.header, "rows": result.rows,
                       "metrics_files": [m.get("runs", [{}])[0].get("dir", "") for m in all_metrics]})
