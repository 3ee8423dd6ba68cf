"""``evaluate``: predict a run's held-out patches, score them, write metrics.json (and the report).

Outputs, for one run, in ``WORKDIR/runs/<run>/evaluation/`` (``evaluation/fold-<K>/`` when
``fold`` picks one fold of a run that holds out several):

- ``predictions.h5`` (:mod:`nodulekit.evaluation.predictions`), reused when its cache key
  (run.json, config.toml, checkpoint files, patch store, folds, predictor) is unchanged;
- ``metrics.json``: run and data metadata, settings, ``aggregate`` / ``per_fold`` /
  ``by_characteristic`` tables with CIs, ``reader_agreement`` (paper 003 Table 6, when the
  store has reader masks: :mod:`nodulekit.evaluation.readers`), and every per-patch ``row``.
  Undefined or infinite values are written as null (strict JSON); a row's ``pred_voxels`` = 0
  tells a missed nodule;
- with ``report=True``: ``report.md`` + ``figures/*.png`` and a self-contained ``report.html``.

Several runs (one per fold of a cross-validation) are pooled: each run's predictions stay in
its own folder, the pooled metrics and report go to ``WORKDIR/evaluations/<model>-cv-<key>/``.
"""
from __future__ import annotations

import hashlib
import json
import math
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from nodulekit import __version__
from nodulekit.atomic import atomic_write_json
from nodulekit.errors import NodulekitError
from nodulekit.evaluation.figures import GalleryCase
from nodulekit.evaluation.predictions import cache_key_of, open_predictions, write_predictions
from nodulekit.evaluation.predictor import (Predictor, PredictorFactory, predictor_for, predictor_identity,
                                            registered_factory)
from nodulekit.evaluation.readers import add_reader_dice, reader_agreement
from nodulekit.evaluation.rows import prediction_rows
from nodulekit.evaluation.runs import RunInfo, load_run, resolve_run, run_key
from nodulekit.heap import reuse_freed_memory
from nodulekit.io.patch_store import augmented_flags
from nodulekit.evaluation.tables import DEFAULT_DIAMETER_BINS_MM, CISettings, build_tables
from nodulekit.io.patch_store import PatchStore, open_patch_store

METRICS_SCHEMA = 1
EVALUATIONS_DIR = "evaluations"


@dataclass(frozen=True)
class EvaluateParams:
    """Thresholds, bootstrap settings and diameter bins of an evaluation."""

    seg_threshold: float = 0.5
    class_threshold: float = 0.5
    n_boot: int = 1000
    ci: float = 0.95
    seed: int = 0
    diameter_bins_mm: tuple[float, ...] = DEFAULT_DIAMETER_BINS_MM
    force: bool = False  # predict again even when predictions.h5 is current
    preview_png: bool = False  # with the report, also report-preview.png (the report as one image)


@dataclass
class EvaluationResult:
    """What ``evaluate`` wrote: the folder, metrics.json content, predictions and report paths."""

    out_dir: Path
    metrics: dict[str, Any]
    predictions: list[Path]
    reused_predictions: list[bool]
    report_md: Path | None = None
    report_html: Path | None = None
    runs: list[str] = field(default_factory=list)

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.json"


def store_key(store: PatchStore) -> str:
    """The patch store's stage fingerprint when it has one, else its size and modification time."""
    fingerprint = store.attrs.get("nodulekit_fingerprint")
    if fingerprint:
        return str(fingerprint)
    stat = store.path.stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def _selected_folds(run: RunInfo, fold: int | None) -> tuple[int, ...]:
    if fold is None:
        return run.folds
    if fold not in run.folds:
        raise NodulekitError(f"fold {fold} is not held out by run {run.name} (its held-out folds: "
                             f"{', '.join(map(str, run.folds))}); evaluating on training folds would flatter it")
    return (fold,)


def _run_out_dir(run: RunInfo, folds: tuple[int, ...]) -> Path:
    if folds == run.folds:
        return run.dir / "evaluation"
    return run.dir / "evaluation" / f"fold-{folds[0]}"


def _factory_identity(run: RunInfo, predictor: Predictor | PredictorFactory | None) -> str:
    chosen = predictor if predictor is not None else registered_factory(run.model)
    if chosen is None:
        return "unregistered"
    if isinstance(chosen, type):
        return f"{chosen.__module__}.{chosen.__qualname__}:{getattr(chosen, 'version', '')}"
    if isinstance(chosen, Predictor):
        return predictor_identity(chosen)
    return f"{getattr(chosen, '__module__', '')}.{getattr(chosen, '__qualname__', type(chosen).__name__)}"


def _held_out_indices(store: PatchStore, fold: int) -> np.ndarray:
    """Rows of ``fold`` that are originals (augmented copies are never scored)."""
    keep = (np.asarray(store.table["fold"]) == fold) & ~augmented_flags(store.table)
    return np.flatnonzero(keep).astype(np.int64)


def _predict_run(run: RunInfo, folds: tuple[int, ...], out_dir: Path, predictor: Predictor | PredictorFactory | None,
                 params: EvaluateParams) -> tuple[Path, bool]:
    """Write (or reuse) ``out_dir/predictions.h5`` for the run's held-out ``folds``; returns (path, reused)."""
    path = out_dir / "predictions.h5"
    with open_patch_store(run.eval_store) as store:
        provenance = {"run_name": run.name, "run_dir": str(run.dir), "model": run.model, "folds": list(folds),
                      "run_key": run_key(run), "store_path": str(run.eval_store), "store_key": store_key(store),
                      "store_preset": store.info.preset, "store_geometry": store.info.geometry,
                      "predictor": _factory_identity(run, predictor)}
        provenance["cache_key"] = hashlib.sha256(json.dumps(provenance, sort_keys=True).encode()).hexdigest()[:20]
        if not params.force and path.exists() and cache_key_of(path) == provenance["cache_key"]:
            return path, True
        per_fold = {f: _held_out_indices(store, f) for f in folds}
        if not any(idx.size for idx in per_fold.values()):
            raise NodulekitError(f"{run.eval_store}: no patches in held-out fold(s) {list(folds)} of run {run.name}")
        model = predictor_for(run, predictor)
        provenance["label_columns"] = dict(getattr(model, "label_columns", None) or {})
        batches = (batch for f, idx in per_fold.items() if idx.size for batch in model.predict(store, idx, f))
        with reuse_freed_memory():  # each batch reuses the last one's pages (nodulekit.heap)
            write_predictions(path, batches, np.concatenate(list(per_fold.values())), store.info.patch_shape,
                              provenance)
    return path, False


def _ingest_root(workdir: Path) -> Path | None:
    try:
        manifest = json.loads((Path(workdir) / "ingest" / "stage.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    root = (manifest.get("params") or {}).get("root")
    return Path(root) if root else None


def dataset_name(workdir: Path, run: RunInfo, store: PatchStore) -> str:
    """What data the run was scored on, for the "this run, <dataset>" label.

    run.json ``dataset``; else the store's ``dataset`` attribute; else from the ingest stage's
    download folder: a nodulekit phantom (phantom.json present) or real LIDC-IDRI.
    """
    for source in (run.meta, store.attrs):
        if source.get("dataset"):
            return str(source["dataset"])
    root = _ingest_root(workdir)
    if root is not None and (root / "phantom.json").exists():
        return "nodulekit phantom (synthetic CT on LIDC geometry)"
    if root is not None:
        return "LIDC-IDRI"
    return f"patch store {store.path.name}"


def _versions(runs: Sequence[RunInfo]) -> dict[str, str]:
    versions = {"nodulekit (evaluation)": __version__, "python": platform.python_version()}
    for package in ("numpy", "torch", "h5py", "scikit-learn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    trained = runs[0].meta.get("versions")
    if isinstance(trained, dict):
        versions.update({f"{k} (training)": str(v) for k, v in trained.items()})
    return versions


def _data_section(workdir: Path, run: RunInfo, store: PatchStore, rows: list[dict[str, Any]]) -> dict[str, Any]:
    info = store.info
    return {"dataset": dataset_name(workdir, run, store), "store": str(run.eval_store), "preset": info.preset,
            "geometry": info.geometry, "patch_shape": list(info.patch_shape),
            "spacing_zyx_mm": None if info.spacing_zyx_mm is None else list(info.spacing_zyx_mm),
            "hu_window": list(info.hu_window), "clevel": info.clevel, "n_patches": len(rows),
            "n_patients": len({r.get("patient_id") for r in rows}), "n_nodules": len({r.get("nodule_key") for r in rows})}


def _run_entry(run: RunInfo, folds: tuple[int, ...]) -> dict[str, Any]:
    meta = {k: v for k, v in run.meta.items() if k not in ("stores",)}
    return {"name": run.name, "dir": str(run.dir), "model": run.model, "folds": list(folds), "run_key": run_key(run),
            "eval_store": str(run.eval_store), "config": run.config, "meta": meta}


def json_safe(value: Any) -> Any:
    """Strict-JSON copy: NaN and +-inf become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _gallery(rows: list[dict[str, Any]], sources: dict[str, tuple[Path, Path]], threshold: float) -> list[GalleryCase]:
    """Best, median and worst nodule patch by Dice, with image, truth and thresholded prediction."""
    scored = sorted((r for r in rows if (r.get("truth_voxels") or 0) > 0 and r.get("dice") is not None),
                    key=lambda r: r["dice"])
    if not scored:
        return []
    picks = {}  # position in `scored` -> title; fewer than three patches give fewer (distinct) cases
    for title, position in (("best Dice", len(scored) - 1), ("median Dice", (len(scored) - 1) // 2),
                            ("worst Dice", 0)):
        picks.setdefault(position, title)
    cases = []
    for position, title in picks.items():
        row = scored[position]
        pred_path, store_path = sources[row["run"]]
        with open_predictions(pred_path) as pred, open_patch_store(store_path) as store:
            row_in_file = int(np.flatnonzero(pred.store_index == row["store_index"])[0])
            prob = pred.seg_prob(slice(row_in_file, row_in_file + 1))[0]
            arrays = store.read([row["store_index"]], arrays=("images", "masks"))
        hd95_mm = row.get("hd95_mm")
        hd95 = "none (empty prediction)" if hd95_mm is None or not math.isfinite(hd95_mm) else f"{hd95_mm:.1f} mm"
        caption = f"Dice {row['dice']:.2f}, HD95 {hd95}\n{row.get('nodule_key', '')} (fold {row.get('fold')})"
        cases.append(GalleryCase(title, arrays["images"][0], arrays["masks"][0], prob >= threshold, caption))
    return cases


def _label_columns(run: RunInfo, tasks: dict[str, int], provenance: dict[str, Any]) -> dict[str, str]:
    """Truth column per task: the predictor's ``label_columns``, over the run config's
    ``data.labels`` ({task: column}, as training reads it) and, for a single task, ``data.label_column``."""
    data = run.config.get("data") or {}
    columns = {str(k): str(v) for k, v in (data.get("labels") or {}).items()}
    if len(tasks) == 1 and data.get("label_column"):
        columns.setdefault(next(iter(tasks)), str(data["label_column"]))
    columns.update(provenance.get("label_columns") or {})
    return columns


@dataclass
class _ScoredRun:
    path: Path
    reused: bool
    rows: list[dict[str, Any]]
    tasks: dict[str, dict[str, Any]]
    has_seg: bool


def _score_run(run: RunInfo, folds: tuple[int, ...], predictor: Predictor | PredictorFactory | None,
               params: EvaluateParams) -> _ScoredRun:
    """Predict (or reuse the predictions of) one run and compute its per-patch rows."""
    path, reused = _predict_run(run, folds, _run_out_dir(run, folds), predictor, params)
    with open_predictions(path) as pred, open_patch_store(run.eval_store) as store:
        rows, columns = prediction_rows(pred, store, seg_threshold=params.seg_threshold,
                                        class_threshold=params.class_threshold,
                                        label_columns=_label_columns(run, pred.tasks, pred.provenance))
        add_reader_dice(rows, pred, store, params.seg_threshold)
        tasks = {t: {"n_classes": n, "truth_column": columns[t]} for t, n in pred.tasks.items()}
        return _ScoredRun(path, reused, rows, tasks, pred.has_seg)


def link_coarse_runs(workdir: Path, fine_runs: Sequence[str | Path], coarse_runs: Sequence[str | Path]) -> list[str]:
    """Chain msunet runs to their munet3d runs (paper 003's two stages), paired in order: each
    msunet run.json records its coarse run (:func:`nodulekit.inference.link_coarse_run`), so
    :func:`evaluate` scores the chain. Runs are names under WORKDIR/runs or paths. Returns the
    values written."""
    from nodulekit.inference.chain import link_coarse_run

    if len(fine_runs) != len(coarse_runs):
        raise NodulekitError(f"{len(coarse_runs)} --coarse-run for {len(fine_runs)} --run: give one munet3d run "
                             "per msunet run, in the same order (fold by fold)")
    return [link_coarse_run(resolve_run(workdir, fine), resolve_run(workdir, coarse))
            for fine, coarse in zip(fine_runs, coarse_runs)]


def _resolve_runs(workdir: Path, run: str | Path | Sequence[str | Path] | None) -> list[RunInfo]:
    names: list[str | Path | None] = list(run) if isinstance(run, (list, tuple)) else [run]
    runs = [load_run(workdir, resolve_run(workdir, name)) for name in names]
    models = {r.model for r in runs}
    if len(models) > 1:
        raise NodulekitError(f"runs of different models ({', '.join(sorted(models))}) cannot be pooled; "
                             "use --compare to put them side by side")
    return runs


def _out_dir(workdir: Path, runs: list[RunInfo], folds: list[tuple[int, ...]]) -> Path:
    if len(runs) == 1:
        return _run_out_dir(runs[0], folds[0])
    key = hashlib.sha256("\n".join(sorted(r.name for r in runs)).encode()).hexdigest()[:8]
    return Path(workdir) / EVALUATIONS_DIR / f"{runs[0].model}-cv-{key}"


def _check_one_run_per_fold(runs: list[RunInfo], folds: list[tuple[int, ...]]) -> None:
    seen: dict[int, str] = {}
    for run, run_folds in zip(runs, folds):
        for f in run_folds:
            if f in seen:
                raise NodulekitError(f"fold {f} is held out by both {seen[f]} and {run.name}: pool one run per fold "
                                     "(use --compare for repeated runs)")
            seen[f] = run.name


def _metrics_document(workdir: Path, runs: list[RunInfo], folds: list[tuple[int, ...]], scored: list[_ScoredRun],
                      params: EvaluateParams) -> dict[str, Any]:
    """The content of metrics.json (before :func:`json_safe`): metadata, tables and rows."""
    rows = [row for s in scored for row in s.rows]
    tasks = {t: v for s in scored for t, v in s.tasks.items()}
    has_seg = any(s.has_seg for s in scored)
    with open_patch_store(runs[0].eval_store) as store:
        data = _data_section(workdir, runs[0], store, rows)
    ci_settings = CISettings(params.n_boot, params.ci, params.seed)
    tables = build_tables(rows, {t: v["n_classes"] for t, v in tasks.items()}, has_seg, ci_settings,
                          params.diameter_bins_mm)
    readers = reader_agreement(rows, ci_settings)
    if readers is not None:
        tables["reader_agreement"] = readers
    settings = {k: v for k, v in asdict(params).items() if k not in ("force", "preview_png")}
    return {"schema": METRICS_SCHEMA, "kind": "nodulekit-evaluation",
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": runs[0].model,
            "runs": [_run_entry(r, f) for r, f in zip(runs, folds)], "folds": sorted({f for fs in folds for f in fs}),
            "data": data, "versions": _versions(runs), "settings": settings, "tasks": tasks,
            "has_segmentation": has_seg, "predictions": [str(s.path) for s in scored], **tables, "rows": rows}


def evaluate(workdir: Path, run: str | Path | Sequence[str | Path] | None = None, fold: int | None = None,
             report: bool = False, predictor: Predictor | PredictorFactory | None = None,
             params: EvaluateParams | None = None) -> EvaluationResult:
    """Evaluate a run (default: the most recent in WORKDIR/runs) on its held-out fold(s).

    Args:
        workdir: the work folder. run: a run name (folder under WORKDIR/runs) or path, or a list
            of runs of one model (e.g. one per cross-validation fold) to pool. fold: only this
            held-out fold. report: also write report.md / report.html. predictor: a Predictor,
            or a factory ``f(run) -> Predictor``; default: the one registered for the run's model.
        params: thresholds and bootstrap settings (:class:`EvaluateParams`).
    """
    workdir, params = Path(workdir), params or EvaluateParams()
    runs = _resolve_runs(workdir, run)
    if fold is not None and len(runs) > 1:
        runs = [r for r in runs if fold in r.folds] or runs
    folds = [_selected_folds(r, fold) for r in runs]
    _check_one_run_per_fold(runs, folds)
    out_dir = _out_dir(workdir, runs, folds)
    scored = [_score_run(r, f, predictor, params) for r, f in zip(runs, folds)]
    rows = [row for s in scored for row in s.rows]
    metrics = json_safe(_metrics_document(workdir, runs, folds, scored, params))
    atomic_write_json(out_dir / "metrics.json", metrics)
    result = EvaluationResult(out_dir, metrics, [s.path for s in scored], [s.reused for s in scored],
                              runs=[r.name for r in runs])
    if report:
        from nodulekit.evaluation.report import write_report

        sources = {r.name: (s.path, r.eval_store) for r, s in zip(runs, scored)}
        gallery = _gallery(rows, sources, params.seg_threshold) if metrics["has_segmentation"] else []
        result.report_md, result.report_html = write_report(out_dir, metrics, gallery, preview=params.preview_png)
    return result
