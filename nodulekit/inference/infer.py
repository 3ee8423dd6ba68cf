"""``infer()``: the library entry point of ``nodulekit infer`` (the CLI only parses and prints).

    from nodulekit.inference.inputs import NoduleSpec
    result = infer([Path("work/runs/mtnet-fold0-...")], Path("LIDC-IDRI/LIDC-IDRI-0001"),
                   NoduleSpec.parse(at="-56.1,72.3,-140"), Path("nodulekit-infer"))
    result.rows          # one dict per nodule (the rows of results.csv)

Steps: load the models (:func:`nodulekit.inference.predict.load_model`; a checkpoint of another
model or nodulekit version fails here) and plan them (one model, an ensemble, or paper 003's two
stages: :func:`nodulekit.inference.nodules.plan_models`); find the scans
(:func:`nodulekit.inference.inputs.find_scans`) that have nodules; then per scan: load it, locate its
nodules, check that they lie inside, predict (:func:`nodulekit.inference.nodules.predict_scan`) and
write its exports. Outputs in ``out``::

    results.csv, results.json       one row per nodule (columns: nodulekit.inference.exports)
    masks/<scan>.nii.gz             label map per scan (nodule i = i), the scan's geometry
    dicom-seg/<scan>.dcm            DICOM Segmentation per DICOM scan, referencing its series
    png/<scan>-nodule<i>.png        with --png: overlays

Nothing is written half-way: everything goes to a hidden staging folder inside ``out`` and is
moved into place only after every scan succeeded; any error (unreadable series, a point outside
its scan, ...) removes the staging folder and leaves ``out`` as it was. A rerun replaces the
outputs of an earlier ``nodulekit infer`` in ``out`` (only the names above); nothing is written
outside ``out``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nodulekit.errors import NodulekitError
from nodulekit.inference.inputs import NoduleSpec, check_inside, find_scans, load_scan

DEFAULT_OUT = Path("nodulekit-infer")
RESULTS_CSV, RESULTS_JSON = "results.csv", "results.json"
MASKS_DIR, SEG_DIR, PNG_DIR = "masks", "dicom-seg", "png"
#: Everything infer writes in ``out`` (a rerun replaces exactly these).
OUTPUT_NAMES = (RESULTS_CSV, RESULTS_JSON, MASKS_DIR, SEG_DIR, PNG_DIR)
RESULTS_FORMAT = "nodulekit-infer"
STAGING_PREFIX = ".infer-partial-"
RESULTS_FORMAT_VERSION = 1


@dataclass
class InferResult:
    """What :func:`infer` wrote: ``rows`` (results.csv), ``scans`` (per-scan summaries as in
    results.json), ``files`` (final paths), the plan's description and timings in seconds
    (``load``: reading scans, ``predict``: patches + models + masks, ``export``: writing)."""

    out_dir: Path
    rows: list[dict[str, Any]]
    scans: list[dict[str, Any]]
    files: list[Path]
    plan: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def infer(models: Sequence[Path], input: Path, nodules: NoduleSpec, out: Path = DEFAULT_OUT, *,
          device: str = "cpu", png: bool = False, batch_size: int = 16, precision: str = "auto",
          threads: int | None = None, progress: Callable[[str], None] | None = None) -> InferResult:
    """Analyse the nodules ``nodules`` of the scans under ``input`` with ``models``; write to ``out``.

    ``models``: run folders or checkpoints (several: an ensemble of one model's runs, or munet3d +
    msunet). ``device``: ``cpu`` or ``cuda[:N]``. ``batch_size``: patches per forward pass (all
    nodules of a scan are batched together). ``precision``: ``auto`` | ``fp32`` | ``bf16``
    (:func:`nodulekit.inference.nodules.resolve_precision`). ``threads``: CPU threads of torch during
    the call (None: torch's default, every core). ``progress``: called with one line per scan.
    """
    from nodulekit.inference.nodules import plan_models, resolve_precision

    start = time.perf_counter()
    out = Path(out)
    if batch_size < 1:
        raise NodulekitError(f"--batch-size {batch_size}: need at least 1")
    _check_device(device)
    precision = resolve_precision(precision, device)
    _check_out(out)
    loaded = _load_models(models, device)
    plan = plan_models(loaded)
    refs = nodules.select(find_scans(Path(input), exclude=[out]))
    created = [p for p in (out, *out.parents) if not p.exists()]  # removed again on failure
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    staging = out / f"{STAGING_PREFIX}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        with _torch_threads(threads):
            rows, scans, timings = _run(plan, refs, nodules, staging, device=device, png=png,
                                        batch_size=batch_size, precision=precision, progress=progress)
        document = _document(plan, list(zip(models, loaded)), input, nodules, device, batch_size, precision, rows,
                             scans, timings, time.perf_counter() - start)
        from nodulekit.inference.exports import write_results_csv, write_results_json

        write_results_csv(staging / RESULTS_CSV, rows)
        write_results_json(staging / RESULTS_JSON, document)
        files = _install(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return InferResult(out, rows, scans, files, plan.description, time.perf_counter() - start, timings)


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    if threads < 1:
        raise NodulekitError(f"--threads {threads}: need at least 1")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _remove_stale_staging(out: Path) -> None:
    """Delete staging folders left by infer processes that no longer run (killed mid-way)."""
    for folder in out.glob(f"{STAGING_PREFIX}*"):
        try:
            pid = int(folder.name[len(STAGING_PREFIX):])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            continue


def _check_device(device: str) -> None:
    if device == "cpu":
        return
    if not device.startswith("cuda"):
        raise NodulekitError(f"--device {device!r}: choose cpu or cuda (cuda:N for one GPU)")
    import torch

    if not torch.cuda.is_available():
        raise NodulekitError(f"--device {device}: no CUDA device available (torch {torch.__version__})")


def _check_out(out: Path) -> None:
    """``out`` may hold an earlier infer's outputs (replaced), but no foreign file of the same names."""
    import json

    if out.exists() and not out.is_dir():
        raise NodulekitError(f"--out {out}: exists and is not a folder")
    clashes = [n for n in OUTPUT_NAMES if (out / n).exists()]
    if not clashes:
        return
    try:
        ours = json.loads((out / RESULTS_JSON).read_text()).get("format") == RESULTS_FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise NodulekitError(f"--out {out}: holds {', '.join(clashes)} not written by nodulekit infer; "
                             "choose another --out")


def _load_models(models: Sequence[Path], device: str) -> list[Any]:
    """The loaded models; an msunet given without a munet3d gets the coarse run linked in its run.json."""
    from nodulekit.inference.chain import linked_coarse_run
    from nodulekit.inference.nodules import COARSE, FINE
    from nodulekit.inference.predict import load_model

    if not models:
        raise NodulekitError("give at least one --model (a training run folder or a checkpoint inside one)")
    loaded = [load_model(Path(m), device=device) for m in models]
    if not any(m.name == COARSE for m in loaded):
        for fine in (m for m in loaded if m.name == FINE and getattr(m, "coarse", None) is None):
            link = linked_coarse_run(fine.run_dir)
            if link is not None:
                fine.coarse = load_model(link, device=device, model=COARSE)
    return loaded


def _run(plan: Any, refs: Sequence[Any], nodules: NoduleSpec, staging: Path, *, device: str, png: bool,
         batch_size: int, precision: str, progress: Callable[[str], None] | None
         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    from nodulekit import __version__
    from nodulekit.inference import exports
    from nodulekit.inference.nodules import predict_scan

    rows: list[dict[str, Any]] = []
    scans: list[dict[str, Any]] = []
    timings = {"load": 0.0, "predict": 0.0, "export": 0.0}
    for ref in refs:
        t0 = time.perf_counter()
        scan = load_scan(ref)
        locations = nodules.locate(scan)
        check_inside(scan, locations)
        t1 = time.perf_counter()
        prediction = predict_scan(plan, scan, locations, batch_size=batch_size, device=device, precision=precision)
        t2 = time.perf_counter()
        files: dict[str, Any] = {}
        if prediction.labels is not None:
            mask_path = staging / MASKS_DIR / f"{ref.name}.nii.gz"
            mask_path.parent.mkdir(exist_ok=True)
            exports.write_label_nifti(mask_path, prediction.labels, scan)
            files["mask"] = f"{MASKS_DIR}/{mask_path.name}"
            if ref.kind == "dicom":
                seg_path = staging / SEG_DIR / f"{ref.name}.dcm"
                seg_path.parent.mkdir(exist_ok=True)
                labels = [f"nodule {n.index}" for n in prediction.nodules]
                exports.write_dicom_seg(seg_path, prediction.labels, scan, labels, software_version=__version__,
                                        description=f"nodulekit {plan.name} nodules")
                files["dicom_seg"] = f"{SEG_DIR}/{seg_path.name}"
        scan_rows = [exports.result_row(scan, n) for n in prediction.nodules]
        if png:
            (staging / PNG_DIR).mkdir(exist_ok=True)
            files["png"] = []
            for nodule, row in zip(prediction.nodules, scan_rows):
                name = f"{ref.name}-nodule{nodule.index}.png"
                exports.write_overlay_png(staging / PNG_DIR / name, scan, nodule, prediction.labels,
                                          _png_title(plan.name, ref.name, row))
                files["png"].append(f"{PNG_DIR}/{name}")
        t3 = time.perf_counter()
        rows.extend(scan_rows)
        scans.append({
            "scan": ref.name, "series_uid": ref.series_uid, "patient_id": scan.patient_id, "kind": ref.kind,
            "source": str(ref.path), "shape_zyx": list(scan.grid.shape_zyx),
            "spacing_zyx_mm": list(scan.grid.spacing_zyx_mm), "n_nodules": len(prediction.nodules),
            "n_patches": prediction.n_patches, "files": files, "notes": scan.notes,
            "nodules": [dict(row, class_probabilities=n.class_prob, **({"slices": n.slices} if n.slices else {}))
                        for row, n in zip(scan_rows, prediction.nodules)],
            "seconds": {"load": t1 - t0, "predict": t2 - t1, "export": t3 - t2}})
        timings["load"] += t1 - t0
        timings["predict"] += t2 - t1
        timings["export"] += t3 - t2
        if progress is not None:
            progress(f"{ref.name}: {len(prediction.nodules)} nodule(s), {prediction.n_patches} patch(es); "
                     f"load {t1 - t0:.1f} s, predict {t2 - t1:.1f} s, write {t3 - t2:.1f} s")
        del scan, prediction
    return rows, scans, timings


def _png_title(model: str, scan: str, row: dict[str, Any]) -> str:
    probs = ", ".join(f"{k[:-5]} {v:.2f}" for k, v in row.items() if k.endswith("_prob") and v is not None)
    size = f"d {row['diameter_mm']:.1f} mm, V {row['volume_mm3']:.0f} mm3" \
        if row.get("diameter_mm") is not None and row["diameter_mm"] == row["diameter_mm"] else "no mask"
    return f"{scan[-24:]} nodule {row['nodule']} ({model}): {probs or 'no class head'}; {size}"


def _document(plan: Any, models: Sequence[tuple[Path, Any]], input: Path, nodules: NoduleSpec, device: str,
              batch_size: int, precision: str, rows: list[dict[str, Any]], scans: list[dict[str, Any]],
              timings: dict[str, float], seconds: float) -> dict[str, Any]:
    from nodulekit import __version__

    return {
        "format": RESULTS_FORMAT, "format_version": RESULTS_FORMAT_VERSION, "nodulekit_version": __version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": str(Path(input).resolve()), "nodules_from": nodules.describe(),
        "models": [_model_record(p, m) for p, m in models],
        "plan": plan.description, "geometry": plan.geometry.fingerprint_params(), "device": device,
        "batch_size": batch_size, "precision": precision, "threshold": 0.5, "n_scans": len(scans),
        "n_nodules": len(rows),        "seconds": {"total": seconds, **timings}, "scans": scans,
    }


def _model_record(path: Path, model: Any) -> dict[str, Any]:
    record = {"path": str(Path(path).resolve()), "model": model.name,
              "run_dir": str(getattr(model, "run_dir", "") or ""),
              "checkpoint": str(getattr(model, "checkpoint", "") or ""),
              "trained_with": getattr(model, "trained_with", None)}
    coarse = getattr(model, "coarse", None)
    if coarse is not None:
        record["coarse"] = {"model": coarse.name, "run_dir": str(coarse.run_dir), "checkpoint": str(coarse.checkpoint)}
    return record


def _install(staging: Path, out: Path) -> list[Path]:
    """Move the staged outputs into ``out``, replacing an earlier infer's (only :data:`OUTPUT_NAMES`)."""
    previous = staging / ".previous"
    previous.mkdir()
    for name in OUTPUT_NAMES:
        if (out / name).exists():
            os.replace(out / name, previous / name)
    files = []
    for name in OUTPUT_NAMES:
        if (staging / name).exists():
            os.replace(staging / name, out / name)
            files.extend(sorted(p for p in (out / name).rglob("*") if p.is_file()) if (out / name).is_dir()
                         else [out / name])
    return files
