"""Stage ``consensus-label``: reads -> nodules -> consensus masks -> cohorts, labels and folds.

Reads ``WORKDIR/ingest/annotations.h5`` (with images or ``--annotations-only``) and writes, in
its stage folder ``WORKDIR/consensus-label/``:

- ``parts/chunk-NNNNN.h5``: the nodules of :data:`SCANS_PER_CHUNK` consecutive scans, written
  atomically; each chunk is an item of the stage's journal, so an interrupted run resumes with
  the chunks it has not finished (one fsync per chunk rather than per scan);
- ``nodules.h5``: the nodule store (schema in :mod:`nodulekit.io.nodule_store`);
- ``nodules.csv``: one row per nodule (columns in docs/labels.md);
- ``cohorts.md`` and ``report.json``: the cohort summary, ambiguous groups, what was left out.

and publishes ``nodules.csv`` and ``cohorts.md`` to ``WORKDIR/labels/`` (atomically, when the
stage finishes; removed when a redo starts, so they never outlive the run that made them). They
are outputs of the stage like the others, recorded relative to the stage folder
(``../labels/nodules.csv``), so the cache and ``nodulekit status`` notice when one is missing.

Rules: :mod:`nodulekit.labels.grouping`, :mod:`~nodulekit.labels.consensus`,
:mod:`~nodulekit.labels.cohorts`, :mod:`~nodulekit.labels.folds`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nodulekit.atomic import remove_partials
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
#: Scans per journal item (one part file): ~0.2 s of work each, so a crash loses little while
#: the whole database needs 16 part files and fsyncs instead of 1018.
SCANS_PER_CHUNK = 64
#: ``WORKDIR/labels/``: where the stage publishes copies of these outputs.
PUBLISH_DIR = "labels"
PUBLISHED_NAMES = (CSV_NAME, COHORTS_NAME)
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
    """``n_processed``: scans computed by this call (fewer than all when it resumed).
    ``published``: the copies in ``WORKDIR/labels/``."""

    up_to_date: bool
    stage_dir: Path
    summary: dict[str, Any]
    n_processed: int = 0
    published: list[Path] = field(default_factory=list)


def published_paths(workdir: Path) -> list[Path]:
    """``WORKDIR/labels/nodules.csv`` and ``WORKDIR/labels/cohorts.md``."""
    return [Path(workdir) / PUBLISH_DIR / name for name in PUBLISHED_NAMES]


def _chunks(scans: list[stores.ScanAnnotations]) -> dict[str, list[stores.ScanAnnotations]]:
    """Journal item key (also the part file's stem) -> its scans, in store order."""
    return {f"chunk-{i // SCANS_PER_CHUNK:05d}": scans[i:i + SCANS_PER_CHUNK]
            for i in range(0, len(scans), SCANS_PER_CHUNK)}


def _regular_z(scan: stores.ScanAnnotations) -> bool:
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
    """Run the stage (skip when up to date, resume after an interruption).

    ``on_start(n)`` is called with the number of scans left to do, ``on_advance()`` after each.
    """
    params.validate()
    workdir = Path(workdir)
    spec = StageSpec(STAGE, CODE_VERSIONS[STAGE], params.fingerprint_params(), upstream=("ingest",))
    with StageRun(workdir, spec, force=force) as run:
        if run.up_to_date:
            summary = json.loads((run.dir / REPORT_NAME).read_text())["summary"]
            return ConsensusResult(True, run.dir, summary, published=published_paths(workdir))
        scans = stores.read_annotation_store(workdir / "ingest" / "annotations.h5")
        chunks = _chunks(scans)
        run.start(n_items=len(chunks))
        _unpublish(workdir)
        done = run.done_items()
        todo = {key: chunk for key, chunk in chunks.items() if key not in done}
        if on_start:
            on_start(sum(len(chunk) for chunk in todo.values()))
        problems = _ingest_problem_codes(workdir)
        for key, chunk in todo.items():
            done[key] = _run_chunk(run.dir / PARTS_DIR / f"{key}.h5", chunk, params, problems, on_advance)
            run.record_item(key, done[key])
        reports = [report for key in chunks for report in done[key]]
        summary = _finalise(run, scans, list(chunks), reports, params)
        return ConsensusResult(False, run.dir, summary, n_processed=sum(len(c) for c in todo.values()),
                               published=published_paths(workdir))


def _run_chunk(part_path: Path, scans: list[stores.ScanAnnotations], params: ConsensusParams,
               problems: dict[str, set[str]], on_advance: Callable[[], None] | None) -> list[dict[str, Any]]:
    """Nodules of ``scans`` written to one part file; returns the per-scan reports."""
    records, rows, reports = [], [], []
    for scan in scans:
        uid = scan.reads.series_uid
        regular = _regular_z(scan) and not (problems.get(uid, set()) & IRREGULAR)
        result = scan_nodules(scan, clevel=params.clevel, aggregate=params.aggregate,
                              include_contour_points=params.include_contour_points,
                              tol_mm=params.group_tol_mm, regular_z=regular)
        records += result.records
        rows += result.rows
        reports.append(result.report)
        if on_advance:
            on_advance()
    nodule_store.write_part(part_path, records, rows)
    return reports


def _unpublish(workdir: Path) -> None:
    """Remove the published copies of an earlier run (and leftovers of an interrupted publish)."""
    for path in published_paths(workdir):
        path.unlink(missing_ok=True)
    remove_partials(Path(workdir) / PUBLISH_DIR)


def _publish(run: StageRun, texts: dict[str, str]) -> list[str]:
    """Write ``texts`` (name -> content) to ``WORKDIR/labels/`` atomically; their paths relative
    to the stage folder, as the stage's outputs are recorded."""
    folder = run.workdir / PUBLISH_DIR
    for name, text in texts.items():
        atomic_write_text(folder / name, text)
    return [Path(os.path.relpath(folder / name, run.dir)).as_posix() for name in texts]


def _finalise(run: StageRun, scans: list[stores.ScanAnnotations], chunk_keys: list[str],
              reports: list[dict[str, Any]], params: ConsensusParams) -> dict[str, Any]:
    part_paths = [run.dir / PARTS_DIR / f"{key}.h5" for key in chunk_keys]
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
    summary = cohort_summary(rows, rules, params.folds, params.cohort, reports, n_scans=len(scans))
    provenance = run.provenance().as_attrs()
    nodule_store.assemble_store(run.dir / STORE_NAME, part_paths, rows,
                                {**provenance, "params_json": json.dumps(params.fingerprint_params())})
    texts = {CSV_NAME: rows_to_csv(rows), COHORTS_NAME: summary_markdown(summary, rules)}
    for name, text in texts.items():
        atomic_write_text(run.dir / name, text)
    ambiguous = [a for r in reports for a in r["ambiguous"]]
    atomic_write_json(run.dir / REPORT_NAME, {"summary": summary, "ambiguous_groups": ambiguous,
                                              "params": params.fingerprint_params()})
    keep = {p.name for p in part_paths}
    for path in (run.dir / PARTS_DIR).glob("*.h5"):
        if path.name not in keep:
            path.unlink()
    published = _publish(run, texts)
    outputs = [STORE_NAME, CSV_NAME, COHORTS_NAME, REPORT_NAME, *published] + [f"{PARTS_DIR}/{n}" for n in sorted(keep)]
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
