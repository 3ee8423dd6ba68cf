"""Render docs/images/report-preview.png (the README's picture of the report) from a demo run.

    nodulekit run --demo
    python docs/images/render_report_preview.py [--workdir nodulekit-demo]

Draws the sections of the latest run's report that show results: how to read it, segmentation
(table beside the paper's, histograms, best / median / worst patch), classification (table, ROC,
confusion matrix, calibration). The other sections (run and data with the full config, the
per-characteristic breakdown, per fold, definitions) are in report.html. Same drawing code as
``EvaluateParams(preview_png=True)`` (nodulekit.evaluation.preview), 256 colours to stay small.
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "report-preview.png"
SHOWN = ("How to read this report", "Segmentation", "Classification")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("nodulekit-demo"))
    parser.add_argument("--dpi", type=int, default=80)
    args = parser.parse_args()

    from PIL import Image

    from nodulekit.evaluation.api import _gallery
    from nodulekit.evaluation.preview import render_preview_png
    from nodulekit.evaluation.report import build_sections, report_title
    from nodulekit.evaluation.runs import load_run
    from nodulekit.training.runs import latest_run

    run = latest_run(args.workdir)
    if run is None:
        raise SystemExit(f"{args.workdir}: no run; run `nodulekit run --demo` first")
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    sources = {run.name: (run / "evaluation" / "predictions.h5", load_run(args.workdir, run).eval_store)}
    gallery = _gallery(metrics["rows"], sources, metrics["settings"]["seg_threshold"])
    sections = [s for s in build_sections(metrics, gallery) if s.title in SHOWN]
    png = render_preview_png(report_title(metrics), sections, dpi=args.dpi)
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256)
    image.save(OUT, optimize=True)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KB, {image.width} x {image.height} px) from {run}")


if __name__ == "__main__":
    main()
