"""Stage ``crop/<preset>``: cohort nodules -> a patch store in one model's input geometry.

Reads ``WORKDIR/consensus-label/nodules.h5`` (nodules, masks, cohorts, labels, folds) and the
volume stores ``WORKDIR/ingest/volumes/<series_uid>.h5``; writes, in ``WORKDIR/crop/<preset>/``:

- ``parts/<series_uid>.h5``: one scan's patches (a patch store), written atomically; each scan
  is an item of the stage's journal, so an interrupted run resumes with the scans not done;
  the parts are deleted once the stage is complete;
- ``patches.h5``: the patch store (schema in :mod:`nodulekit.io.patch_store`), assembled from
  the parts atomically;
- ``summary.json``: patches per fold and label, the nodules left out, the missing images.

Which nodules: those of ``cohort_<cohort>`` (``all``: every nodule); their primary label is the
cohort's primary label column (:func:`nodulekit.labels.cohorts.cohort_primary_label`; -1 when the
cohort has none, e.g. luna16, whose ``label_luna16_texture`` is an extra label).

Missing images (an ``--annotations-only`` ingest, or scans not downloaded): cohort nodules
whose scan has no volume store are left out and listed (series, patient, missing file) in the
summary; the stage finishes with the rest. When no cohort scan has images, it stops with an
error instead (an empty store helps nobody).
"""
from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from nodulekit.errors import NodulekitError
from nodulekit.io import nodule_store
from nodulekit.io.patch_store import PatchGeometryInfo, open_patch_store, write_patch_store
from nodulekit.io.stores import volume_path
from nodulekit.labels.cohorts import cohort_primary_label
from nodulekit.patches.crop import NoduleInput, crop_scan
from nodulekit.patches.presets import ALL_NODULES, CropGeometry
from nodulekit.patches.views import VIEW_NAMES
from nodulekit.pipeline import CODE_VERSIONS, StageRun, StageSpec, atomic_write_json
from nodulekit.pipeline.spec import canonical_json
from nodulekit.stages.consensus import STAGE as CONSENSUS_STAGE, STORE_NAME as NODULE_STORE_NAME

STAGE = "crop"
STORE_NAME = "patches.h5"
SUMMARY_NAME = "summary.json"
PARTS_DIR = "parts"
UPSTREAM = ("ingest", CONSENSUS_STAGE)


@dataclass
class CropParams:
    """Options of ``nodulekit crop``: the geometry (fingerprinted) and ``workers`` (not: it does
    not change the outputs)."""

    geometry: CropGeometry
    workers: int = 1

    @property
    def stage_name(self) -> str:
        return f"{STAGE}/{self.geometry.preset}"

    def fingerprint_params(self) -> dict[str, Any]:
        return self.geometry.fingerprint_params()


@dataclass
class CropResult:
    up_to_date: bool
    stage_dir: Path
    summary: dict[str, Any]
    n_processed: int = 0


@dataclass
class ScanTask:
    """One scan's work, picklable for a worker process."""

    series_uid: str
    volume_path: Path
    nodule_store_path: Path
    rows: list[dict[str, Any]]
    labels: list[int]
    avoid_boxes_zyx: list[np.ndarray]
    geometry: CropGeometry
    part_path: Path


@dataclass
class CohortScans:
    """The cohort's nodules grouped by scan, split into scans with and without images."""

    label_column: str | None
    tasks: list[ScanTask] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    n_nodules: int = 0


def crop(workdir: Path, params: CropParams, *, force: bool = False,
         on_start: Callable[[int], None] | None = None,
         on_advance: Callable[[], None] | None = None) -> CropResult:
    """Run stage ``crop/<preset>`` (skip when up to date, resume after an interruption)."""
    params.geometry.validate()
    workdir = Path(workdir)
    spec = StageSpec(params.stage_name, CODE_VERSIONS[STAGE], params.fingerprint_params(), upstream=UPSTREAM)
    with StageRun(workdir, spec, force=force) as run:
        if run.up_to_date:
            return CropResult(True, run.dir, json.loads((run.dir / SUMMARY_NAME).read_text()))
        scans = cohort_scans(workdir, params.geometry, run.dir / PARTS_DIR)
        if not run.resuming:
            shutil.rmtree(run.dir / PARTS_DIR, ignore_errors=True)
        run.start(n_items=len(scans.tasks))
        done = run.done_items()
        todo = [t for t in scans.tasks if t.series_uid not in done]
        if on_start:
            on_start(len(todo))
        for series_uid, result in _map_scans(todo, params.workers):
            run.record_item(series_uid, result)
            done[series_uid] = result
            if on_advance:
                on_advance()
        summary = _finalise(run, params, scans, done)
        return CropResult(False, run.dir, summary, n_processed=len(todo))


# -- which nodules --------------------------------------------------------------------------------
def _python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def cohort_scans(workdir: Path, geometry: CropGeometry, parts_dir: Path) -> CohortScans:
    """The cohort's nodules per scan, the scans without a volume store, the label column."""
    store_path = workdir / CONSENSUS_STAGE / NODULE_STORE_NAME
    table = nodule_store.read_table(store_path)
    rows = [{col: _python(values[i]) for col, values in table.items()} for i in range(len(table["nodule_id"]))]
    selected, label_column = select_cohort(rows, list(table), geometry.cohort)
    by_scan: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in selected:
        by_scan[str(row["series_uid"])].append(row)
    boxes: dict[str, list[np.ndarray]] = defaultdict(list)
    for row in rows:
        boxes[str(row["series_uid"])].append(parse_bbox(str(row["bbox_zyx"])))
    out = CohortScans(label_column, n_nodules=len(selected))
    for uid, scan_rows in sorted(by_scan.items()):
        path = volume_path(workdir / "ingest", uid)
        if not path.exists():
            out.missing.append({"series_uid": uid, "patient_id": str(scan_rows[0]["patient_id"]),
                                "n_nodules": len(scan_rows), "missing_file": str(path)})
            continue
        labels = [int(r[label_column]) if label_column else -1 for r in scan_rows]
        out.tasks.append(ScanTask(uid, path, store_path, scan_rows, labels, boxes[uid], geometry,
                                  parts_dir / f"{uid}.h5"))
    if not out.tasks:
        _no_images_error(out, geometry.cohort, workdir)
    return out


def select_cohort(rows: list[dict[str, Any]], columns: list[str],
                  cohort: str) -> tuple[list[dict[str, Any]], str | None]:
    """Rows of ``cohort_<cohort>`` (all rows for ``all``) and the cohort's primary label column."""
    if cohort == ALL_NODULES:
        return rows, None
    if f"cohort_{cohort}" not in columns:
        known = [c[len("cohort_"):] for c in columns if c.startswith("cohort_")]
        raise NodulekitError(f"--cohort {cohort!r}: the nodule store has no column cohort_{cohort}; choose one of "
                             f"{', '.join(known + [ALL_NODULES])} (custom cohorts come from consensus-label's flags)")
    return [r for r in rows if bool(r[f"cohort_{cohort}"])], cohort_primary_label(cohort, columns)


def parse_bbox(text: str) -> np.ndarray:
    """``"8-16;38-89;42-85"`` (the nodule table's ``bbox_zyx``) -> inclusive (3, 2) int array."""
    return np.array([[int(v) for v in part.split("-")] for part in text.split(";")], dtype=np.int64)


def _no_images_error(scans: CohortScans, cohort: str, workdir: Path) -> None:
    if not scans.missing:
        raise NodulekitError(f"{workdir / CONSENSUS_STAGE}: cohort {cohort!r} has no nodules; "
                             "choose another --cohort (see consensus-label's cohorts.md)")
    first = scans.missing[0]
    raise NodulekitError(
        f"no images for any of the {scans.n_nodules} {cohort} nodules: {len(scans.missing)} series without a "
        f"volume store (e.g. {first['missing_file']}); an --annotations-only ingest has no images, "
        "ingest the DICOM download with `nodulekit ingest lidc --root DIR`")


def missing_lines(missing: list[dict[str, Any]]) -> list[str]:
    """One line per scan without images: series, patient, nodules, the missing file."""
    return [f"{m['series_uid']} ({m['patient_id']}): {m['n_nodules']} cohort nodule(s) left out, "
            f"no volume store {m['missing_file']}" for m in missing]


# -- per scan -------------------------------------------------------------------------------------
def crop_one_scan(task: ScanTask) -> dict[str, Any]:
    """Crop one scan's nodules into its part file; return the journal result."""
    nodules = [NoduleInput(nodule_store.read_nodule(task.nodule_store_path, task.series_uid, int(row["nodule_id"])),
                           row, label) for row, label in zip(task.rows, task.labels)]
    batch, skipped = crop_scan(task.volume_path, nodules, task.geometry, task.avoid_boxes_zyx)
    if len(batch):
        write_patch_store(task.part_path, geometry_info(task.geometry, nodules[0].record.clevel), [batch])
    return {"n_patches": len(batch), "n_nodules": len(nodules), "skipped": skipped,
            "clevel": float(nodules[0].record.clevel)}


def geometry_info(geometry: CropGeometry, clevel: float) -> PatchGeometryInfo:
    """The store's geometry attributes. Native 2d: spacing None; 2d resampled in-plane: z spacing 0
    (the slices stay native)."""
    spacing = geometry.spacing_zyx_mm
    if spacing is not None and geometry.geometry == "2d":
        spacing = (0.0, spacing[1], spacing[2])
    return PatchGeometryInfo(geometry.geometry, geometry.patch_shape, spacing, geometry.hu_window,
                             geometry.normalize, geometry.preset, float(clevel))


def _map_scans(todo: list[ScanTask], workers: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(series_uid, result)`` as scans finish, in worker processes when ``workers > 1``."""
    if workers <= 1 or len(todo) <= 1:
        for task in todo:
            yield task.series_uid, crop_one_scan(task)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        queue, pending, owner = list(todo), set(), {}
        while queue or pending:
            while queue and len(pending) < 2 * workers:
                task = queue.pop(0)
                future: Future = pool.submit(crop_one_scan, task)
                owner[future] = task.series_uid
                pending.add(future)
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield owner.pop(future), future.result()


# -- the store and the summary --------------------------------------------------------------------
def _finalise(run: StageRun, params: CropParams, scans: CohortScans, done: dict[str, Any]) -> dict[str, Any]:
    geometry = params.geometry
    results = [done[t.series_uid] for t in scans.tasks]
    parts = [t.part_path for t, r in zip(scans.tasks, results) if r["n_patches"]]
    skipped = [s for r in results for s in r["skipped"]]
    if not parts:
        raise NodulekitError(f"crop/{geometry.preset}: no patches from {scans.n_nodules} cohort nodules "
                             f"({len(skipped)} left out: {skipped[0]['reason'] if skipped else 'none'})")
    attrs = {**run.provenance().as_attrs(), "params_json": canonical_json(params.fingerprint_params()),
             "cohort": geometry.cohort, "label_column": scans.label_column or "", "source": geometry.source}
    if geometry.geometry == "views9":
        attrs["view_names_json"] = json.dumps(list(VIEW_NAMES))
    write_patch_store(run.dir / STORE_NAME, geometry_info(geometry, results[0]["clevel"]), parts, attrs)
    with open_patch_store(run.dir / STORE_NAME) as store:
        summary = patch_summary(store.table, geometry, scans, skipped)
    atomic_write_json(run.dir / SUMMARY_NAME, summary)
    run.finish(outputs=[STORE_NAME, SUMMARY_NAME], summary={
        "n_patches": summary["n_patches"], "n_nodules": summary["n_nodules"],
        "n_missing_series": summary["missing_images"]["n_series"]})
    shutil.rmtree(run.dir / PARTS_DIR, ignore_errors=True)  # the store holds them now
    return summary


def _count(keys: list[tuple[Any, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (fold, label), n in sorted(Counter(keys).items()):
        out.setdefault(str(fold), {})[str(label)] = n
    return out


def patch_summary(table: dict[str, np.ndarray], geometry: CropGeometry, scans: CohortScans,
                  skipped: list[dict[str, str]]) -> dict[str, Any]:
    """Counts per fold and label (patches and nodules), kinds, what was left out and why."""
    fold, label, kind, key = (table[c].tolist() for c in ("fold", "label", "kind", "nodule_key"))
    first_row = {k: i for i, k in reversed(list(enumerate(key)))}
    return {
        "stage": f"{STAGE}/{geometry.preset}", "params": geometry.fingerprint_params(),
        "patch_shape": list(geometry.patch_shape), "cohort": geometry.cohort, "label_column": scans.label_column,
        "n_patches": len(key), "n_nodules": len(first_row), "n_cohort_nodules": scans.n_nodules,
        "n_scans": len(scans.tasks),
        "patches_by_kind": dict(Counter(kind)),
        "patches_by_fold_label": _count(list(zip(fold, label))),
        "nodules_by_fold_label": _count([(fold[i], label[i]) for i in first_row.values()]),
        "skipped_nodules": skipped,
        "missing_images": {"n_series": len(scans.missing), "n_nodules": sum(m["n_nodules"] for m in scans.missing),
                           "series": scans.missing},
        "store": STORE_NAME,
    }
