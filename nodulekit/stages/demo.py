"""``nodulekit run --demo``: a small phantom and a small MT-Net through the whole pipeline.

    result = run_demo("nodulekit-demo")      # writes nodulekit-demo/phantom/ once, then run_pipeline(DEMO)
    result.report_html

:data:`DEMO_PHANTOM` says which scans the phantom copies and :data:`DEMO` how the pipeline runs
on them (docs/pipeline.md, "The demo"). Every stage is cached as in :func:`run_pipeline`, and the
phantom is written only when ``WORKDIR/phantom/phantom.json`` is missing or records other parameters.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from nodulekit.stages.run_all import EventCallback, PipelineResult, RunParams, StageEvent, StageReporter, run_pipeline

#: The phantom of the demo: real LIDC scans (their geometry and reader contours) with synthetic
#: anatomy, cut to a 128 x 128 window and a 32-slice slab around the nodules (nodulekit.phantom).
#: The patients are chosen so that MT-Net's cohort (malignancy 1-2 vs 4-5, 3-25 mm) has benign
#: and malignant nodules inside the window, and stratified folds give each fold some of both.
DEMO_PHANTOM: dict[str, Any] = dict(
    patients=["LIDC-IDRI-0049", "LIDC-IDRI-0136", "LIDC-IDRI-0148", "LIDC-IDRI-0188", "LIDC-IDRI-0195",
              "LIDC-IDRI-0204", "LIDC-IDRI-0250", "LIDC-IDRI-0321", "LIDC-IDRI-0748", "LIDC-IDRI-1008"],
    n_scans=10,
    seed=0,
    matrix=128,
    max_slices=32,
)

#: The demo's pipeline: MT-Net (paper 000) made small enough to train in a few minutes on a 2-core
#: CPU: 36 s on the quiet development machine, 3.5 minutes when other jobs load it; Dice 0.58 on the
#: held-out fold's phantom nodules (docs/pipeline.md, "The demo"). Changes from the paper's configuration:
#:
#: - ``model.width = 0.25``: a quarter of every channel width; with the next two, 1.7 M parameters instead of 61.9 M;
#: - ``model.input_size_px = 64``: the network works at the patch size instead of 224 x 224;
#: - one middle-flow unit / block in the Coarse Seg-net and Class-net backbones instead of 16 / 8;
#: - Adam at 2e-3 instead of 1e-4, batches of 8 instead of 16 / 32, 4 epochs per phase instead of 100;
#: - 2 augmented copies per patch instead of 8 (the paper's recipe: centre crop, zoom, flips);
#: - 200 bootstrap resamples per confidence interval instead of 1000.
#:
#: Three folds stratified by MT-Net's malignancy label (4 of the 10 patients in fold 0); the run
#: validates on fold 0, which ``evaluate`` then scores (its patients never train; its epochs chose
#: the kept weights, so the numbers carry that selection's optimism).
DEMO = RunParams(
    model="mtnet",
    folds=(0,),
    n_folds=3,
    cohort="mtnet",
    augment_factor=2,
    config_overrides=(
        "model.width=0.25",
        "model.input_size_px=64",
        "model.seg.middle_units=1",
        "model.cls.middle_blocks=1",
        "optimizer.lr=2e-3",
        "batch_size={seg = 8, malignancy = 8}",
    ),
    epochs=4,
    n_boot=200,
    preview_png=True,
    workers=2,
)


def _ignore_event(_event: StageEvent) -> None:
    return None


def demo_lidc_root(workdir: Path) -> Path:
    return Path(workdir) / "phantom"


def _write_demo_phantom(workdir: Path, force: bool, report: StageReporter) -> Path:
    """``WORKDIR/phantom/``: reused while its phantom.json records :data:`DEMO_PHANTOM`, else (re)written."""
    from nodulekit.phantom import write_phantom

    root = demo_lidc_root(workdir)
    report.start("phantom")
    try:
        written = json.loads((root / "phantom.json").read_text())
    except (OSError, ValueError):
        written = {}
    have = written.get("params") or {}
    if not force and all(have.get(k) == v for k, v in DEMO_PHANTOM.items()):
        report.done("up to date", f"{len(written.get('scans', []))} scans", root)
        return root
    summary = write_phantom(root, overwrite=True, **DEMO_PHANTOM)
    report.done("ran", f"{len(summary.scans)} scans, {DEMO_PHANTOM['matrix']}x{DEMO_PHANTOM['matrix']}x"
                       f"{DEMO_PHANTOM['max_slices']} voxels", root)
    return root


def run_demo(workdir: Path, *, params: RunParams = DEMO, force: bool = False, on_event: EventCallback | None = None,
             predictor: Any = None, progress: bool = False) -> PipelineResult:
    """Write the demo phantom under ``WORKDIR/phantom/`` (once) and run ``params`` (default
    :data:`DEMO`) on it; returns the :class:`PipelineResult` (``report_html`` is the report)."""
    workdir = Path(workdir)
    start = time.perf_counter()
    holder = PipelineResult(workdir, params.model)
    root = _write_demo_phantom(workdir, force, StageReporter(holder, on_event or _ignore_event))
    result = run_pipeline(workdir, replace(params, lidc_root=root), force=force, on_event=on_event,
                          predictor=predictor, progress=progress)
    result.stages[:0] = holder.stages
    result.seconds = time.perf_counter() - start
    return result
