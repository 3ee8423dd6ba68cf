"""Stage ``consensus-label``: reads -> nodules -> consensus masks -> cohorts, labels and folds.

Reads ``WORKDIR/ingest/annotations.h5`` (with images or ``--annotations-only``) and writes, in
``WORKDIR/consensus-label/``:

- ``parts/<series_uid>.h5``: one scan's nodules, written atomically; each scan is an item of
  the stage's journal, so an interrupted run resumes with the scans it has not finished;
- ``nodules.h5``: the nodule store (schema in :mod:`nodulekit.io.nodule_store`);
- ``nodules.csv``: one row per nodule (columns in docs/labels.md);
- ``cohorts.md`` and ``report.json``: the cohort summary, ambiguous groups, what was left out.

Rules: :mod:`nodulekit.labels.grouping`, :mod:`~nodulekit.labels.consensus`,
:mod:`~nodulekit.labels.cohorts`, :mod:`~nodulekit.labels.folds`.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nodulekit.errors import NodulekitError
from nodulekit.io import nodule_store, stores
from nodulekit.labels.cohorts import CustomRule, apply_cohorts, cohort_rules, primary_label_column
from nodulekit.labels.consensus import AGGREGATES
from nodulekit.labels.folds import assign_folds
from nodulekit.labels.nodules import scan_nodules
from nodulekit.labels.summary import cohort_summary, summary_markdown
from nodulekit.pipeline import CODE_VERSIONS, StageRun, StageSpec, atomic_write_json, atomic_write_text

STAGE = "consensus-label"
STORE_NAME = "nodules.h5"
CSV_NAME = "nodules.csv"
COHORTS_NAME = "cohorts.md"
REPORT_NAME = "report.json"
PARTS_DIR = "parts"
IRREGULAR = {"missing_slices", "uneven_spacing", "duplicate_slices", "duplicate_z"}


@dataclass
class ConsensusParams:
    """Options of ``nodulekit consensus-label`` (all change the outputs, so all are fingerprinted).

    ``cohort``: the preset (or ``custom``) whose membership and primary label fill the ``in_cohort``
    / ``label`` columns and stratify the folds; None = folds stratified by nothing.
    ``group_tol_mm``: grouping tolerance; None = each scan's slice spacing.
    """

    clevel: float = 0.5
    aggregate: str = "median"
    include_contour_points: bool = False
    group_tol_mm: float | None = None
    cohort: str | None = None
    folds: int = 5
    seed: int = 0
    custom: CustomRule = field(default_factory=CustomRule)

    def validate(self) -> None:
        if not 0.0 < self.clevel <= 1.0:
            raise NodulekitError(f"--clevel {self.clevel}: must be in (0, 1] (a fraction of the nodule's reads)")
        if self.aggregate not in AGGREGATES:
            raise NodulekitError(f"--aggregate {self.aggregate!r}: choose one of {', '.join(AGGREGATES)}")
        if self.folds < 2:
            raise NodulekitError(f"--folds {self.folds}: need at least 2")
        rules = cohort_rules(self.custom)
        if self.cohort is not None and self.cohort not in rules:
            raise NodulekitError(f"--cohort {self.cohort!r}: choose one of {', '.join(rules)}"
                                 + ("" if "custom" in rules else " (custom needs custom-rule flags)"))

    def fingerprint_params(self) -> dict[str, Any]:
        return {"clevel": self.clevel, "aggregate": self.aggregate,
                "include_contour_points": self.include_contour_points, "group_tol_mm": self.group_tol_mm,
                "cohort": self.cohort, "folds": self.folds, "seed": self.seed, "custom": self.custom.as_params()}


@dataclass
class ConsensusResult:
    up_to_date: bool
    stage_dir: Path
    summary: dict[str, Any]
    n_processed: int = 0


def _regular_z(workdir: Path, scan: stores.ScanAnnotations) -> bool:
    from nodulekit.stages.ingest import z_spacing_problems

    codes = {p["code"] for p in z_spacing_problems(np.asarray(scan.geometry["z_positions_mm"]))}
    return not (codes & IRREGULAR)


def _ingest_problem_codes(workdir: Path) -> dict[str, set[str]]:
    path = Path(workdir) / "ingest" / "summary.json"
    try:
        scans = json.loads(path.read_text())["scans"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return {}
    return {s["series_uid"]: {p["code"] for p in s.get("problems", [])} for s in scans}


def consensus_label(workdir: Path, params: ConsensusParams, *, force: bool = False,
                    on_start: Callable[[int], None] | None = None,
                    on_advance: Callable[[], None] | None = None) -> ConsensusResult:
    """Run the stage (skip when up to date, resume after an interruption)."""
    params.validate()
    workdir = Path(workdir)
    spec = StageSpec(STAGE, CODE_VERSIONS[STAGE], params.fingerprint_params(), upstream=("ingest",))
    with StageRun(workdir, spec, force=force) as run:
        if run.up_to_date:
            return ConsensusResult(True, run.dir, json.loads((run.dir / REPORT_NAME).read_text())["summary"])
        annotations_path = workdir / "ingest" / "annotations.h5"
        scans = stores.read_annotation_store(annotations_path)
        problems = _ingest_problem_codes(workdir)
        run.start(n_items=len(scans))
        done = run.done_items()
        todo = [s for s in scans if s.reads.series_uid not in done]
        if on_start:
            on_start(len(todo))
        for scan in todo:
            uid = scan.reads.series_uid
            regular = _regular_z(workdir, scan) and not (problems.get(uid, set()) & IRREGULAR)
            result = scan_nodules(scan, clevel=params.clevel, aggregate=params.aggregate,
                                  include_contour_points=params.include_contour_points,
                                  tol_mm=params.group_tol_mm, regular_z=regular)
            nodule_store.write_part(run.dir / PARTS_DIR / f"{uid}.h5", result.records, result.rows)
            run.record_item(uid, result.report)
            done[uid] = result.report
            if on_advance:
                on_advance()
        summary = _finalise(run, scans, done, params)
        return ConsensusResult(False, run.dir, summary, n_processed=len(todo))


def _finalise(run: StageRun, scans: list[stores.ScanAnnotations], done: dict[str, Any],
              params: ConsensusParams) -> dict[str, Any]:
    part_paths = [run.dir / PARTS_DIR / f"{s.reads.series_uid}.h5" for s in scans]
    rows = [row for path in part_paths for row in nodule_store.read_part_rows(path)]
    rules = cohort_rules(params.custom)
    apply_cohorts(rows, rules)
    label_col = primary_label_column(rules[params.cohort]) if params.cohort else None
    for row in rows:
        row["in_cohort"] = bool(row[f"cohort_{params.cohort}"]) if params.cohort else True
        row["label"] = row[label_col] if (label_col and row["in_cohort"]) else -1
    strata = [(r["in_cohort"], r["label"]) for r in rows]
    folds = assign_folds([r["patient_id"] for r in rows], strata, params.folds, params.seed)
    for row, fold in zip(rows, folds):
        row["fold"] = int(fold)
    reports = [done[s.reads.series_uid] for s in scans]
    summary = cohort_summary(rows, rules, params.folds, params.cohort, reports, n_scans=len(scans))
    provenance = run.provenance().as_attrs()
    nodule_store.assemble_store(run.dir / STORE_NAME, part_paths, rows,
                                {**provenance, "params_json": json.dumps(params.fingerprint_params())})
    atomic_write_text(run.dir / CSV_NAME, rows_to_csv(rows))
    atomic_write_text(run.dir / COHORTS_NAME, summary_markdown(summary, rules))
    ambiguous = [a for r in reports for a in r["ambiguous"]]
    atomic_write_json(run.dir / REPORT_NAME, {"summary": summary, "ambiguous_groups": ambiguous,
                                              "params": params.fingerprint_params()})
    keep = {p.name for p in part_paths}
    for path in (run.dir / PARTS_DIR).glob("*.h5"):
        if path.name not in keep:
            path.unlink()
    outputs = [STORE_NAME, CSV_NAME, COHORTS_NAME, REPORT_NAME] + [f"{PARTS_DIR}/{n}" for n in sorted(keep)]
    run.finish(outputs=outputs, summary={"n_scans": len(scans), "n_nodules": len(rows),
                                         "n_ambiguous_groups": len(ambiguous)})
    return summary


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    columns = nodule_store.table_columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else
                             (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in row.items()})
    return buffer.getvalue()
