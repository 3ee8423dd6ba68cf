"""The report's figures as PNG bytes (matplotlib with the Agg backend, imported inside functions).

Every function takes plain arrays and returns ``bytes`` of a PNG, so the report can embed them
(base64) or write them next to report.md.
"""
from __future__ import annotations

import io
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TRUTH_COLOUR = "#00c853"   # green: ground truth (consensus) contour
PRED_COLOUR = "#ff3d00"    # red-orange: predicted contour
RUN_COLOUR = "#1565c0"
PAPER_COLOUR = "#ef6c00"
_DPI = 110


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def _grid(n: int, width_in: float = 4.0, height_in: float = 3.6) -> tuple[Any, list[Any]]:
    plt = _pyplot()
    fig, axes = plt.subplots(1, n, figsize=(width_in * n, height_in), squeeze=False)
    return fig, list(axes[0])


def roc_points(truth: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of the ROC curve, one point per distinct score from the highest (plus (0, 0)).

    Tied scores form one point, so the straight segment between points is the curve (its area
    is the Mann-Whitney AUC). Needs both classes in ``truth``.
    """
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="mergesort")
    ordered, positive = np.asarray(score)[order], np.asarray(truth).astype(bool)[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ordered)), ordered.size - 1]
    tp = np.cumsum(positive)[last_of_tie]
    fp = last_of_tie + 1 - tp
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def _roc_panel(ax: Any, task: str, labels: np.ndarray, scores: np.ndarray, legend: str,
               class_names: Sequence[str] = ()) -> None:
    """ROC curve (one-vs-rest curves per class for (N, C) scores, labelled with ``class_names``)
    with the chance diagonal."""
    names = list(class_names) if scores.ndim == 2 and len(class_names) == scores.shape[1] else \
        [f"class {k}" for k in range(scores.shape[1] if scores.ndim == 2 else 0)]
    curves = [(labels, scores, legend)] if scores.ndim == 1 else \
        [(labels == k, scores[:, k], f"{names[k]} vs rest") for k in range(scores.shape[1])]
    for truth, score, label in curves:
        if len(np.unique(truth)) == 2:
            fpr, tpr = roc_points(truth, score)
            ax.plot(fpr, tpr, lw=2, c=RUN_COLOUR if scores.ndim == 1 else None, label=label)
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1, label="chance")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal", title=f"ROC: {task}",
           xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity (true-positive rate)")
    ax.legend(loc="lower right", fontsize=8)


def _confusion_panel(ax: Any, task: str, matrix: np.ndarray, names: Sequence[str], threshold_text: str) -> None:
    """Counts with the share of each truth row; rows = truth, columns = prediction."""
    matrix = np.asarray(matrix)
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1, matrix.max()))
    for (i, j), count in np.ndenumerate(matrix):
        share = count / max(1, matrix[i].sum())
        ax.text(j, i, f"{count}\n({share:.0%} of row)", ha="center", va="center", fontsize=9,
                color="white" if count > matrix.max() / 2 else "black")
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xticklabels=names, yticklabels=names,
           xlabel=f"predicted ({threshold_text})", ylabel="truth", title=f"Confusion matrix: {task}")
    ax.tick_params(axis="y", labelrotation=90)


def distributions_figure(dice: np.ndarray, hd_mm: np.ndarray, hd95_mm: np.ndarray) -> bytes:
    """Histograms of per-patch Dice, HD and HD95 (finite values; the count of misses is in the title)."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _grid(3, 3.8, 3.0)
    panels = ((dice, "Dice (DI) per nodule patch", np.linspace(0, 1, 21)),
              (hd_mm, "Hausdorff distance HD (mm)", 20), (hd95_mm, "HD95 (mm)", 20))
    for ax, (values, title, bins) in zip(axes, panels):
        values = np.asarray(values, dtype=np.float64)
        finite = values[np.isfinite(values)]
        n_missing = values.size - finite.size
        if finite.size:
            ax.hist(finite, bins=bins, color=RUN_COLOUR, alpha=0.8)
            ax.axvline(np.median(finite), c="k", ls="--", lw=1, label=f"median {np.median(finite):.2f}")
            ax.legend(fontsize=8)
        plural = "patch" if n_missing == 1 else "patches"
        extra = f"\n({n_missing} {plural} with an empty prediction left out)" if n_missing else ""
        ax.set(title=title + extra, xlabel=title.split(" per")[0], ylabel="patches")
        ax.title.set_fontsize(9)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _png(fig)


def _calibration_panels(top: Any, bottom: Any, task: str, labels: np.ndarray, prob: np.ndarray,
                        n_bins: int = 10) -> None:
    """Reliability diagram: observed fraction of class 1 against mean P(class 1) per equal-width bin
    (marker area ~ the bin's count); below, the histogram of predicted probabilities."""
    from matplotlib.ticker import MaxNLocator

    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    used = counts > 0
    mean_prob = np.bincount(which, weights=prob, minlength=n_bins)[used] / counts[used]
    observed = np.bincount(which, weights=labels, minlength=n_bins)[used] / counts[used]
    top.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1, label="perfectly calibrated")
    top.plot(mean_prob, observed, "-o", c=RUN_COLOUR, label="this run")
    top.scatter(mean_prob, observed, s=20 + 200 * counts[used] / counts.max(), c=RUN_COLOUR, alpha=0.3)
    top.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="observed fraction of class 1", title=f"Calibration: {task}")
    top.tick_params(labelbottom=False)
    top.legend(fontsize=8, loc="upper left")
    bottom.hist(prob, bins=edges, color="0.5")
    bottom.set(xlim=(0, 1), xlabel="predicted P(class 1)", ylabel="patches")
    bottom.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=3))


def task_figure(task: str, labels: np.ndarray, scores: np.ndarray, auc_legend: str, matrix: np.ndarray,
                class_names: Sequence[str], threshold_text: str) -> bytes:
    """One classification task: ROC curve | confusion matrix | calibration (binary tasks only).

    labels (N,) truth classes; scores (N,) P(class 1) or (N, C); matrix (C, C) counts.
    """
    plt = _pyplot()
    binary = scores.ndim == 1
    fig = plt.figure(figsize=(12.6 if binary else 8.4, 4.2))
    grid = fig.add_gridspec(2, 3 if binary else 2, height_ratios=[3, 1], wspace=0.35, hspace=0.08)
    _roc_panel(fig.add_subplot(grid[:, 0]), task, labels, scores, auc_legend, class_names)
    _confusion_panel(fig.add_subplot(grid[:, 1]), task, matrix, class_names, threshold_text)
    if binary:
        _calibration_panels(fig.add_subplot(grid[0, 2]), fig.add_subplot(grid[1, 2]), task, labels, scores)
    return _png(fig)


def breakdown_figure(entries: Sequence[Mapping[str, Any]], paper: Mapping[tuple[str, str], float],
                     run_label: str, paper_label: str) -> bytes:
    """Mean Dice per characteristic category with its 95% CI; the paper's value as a diamond where it has one.

    entries: {"characteristic", "category", "label", "n", "metrics": {"dice": {"estimate", "low", "high"}}}.
    paper: {(characteristic, category): paper mean Dice}.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(entries) + 1.2))
    y = np.arange(len(entries))[::-1]
    labelled = {"run": False, "paper": False}
    for k, (yi, entry) in enumerate(zip(y, entries)):
        if k and entry["characteristic"] != entries[k - 1]["characteristic"]:
            ax.axhline(yi + 0.5, c="0.8", lw=0.8)
        dice = entry["metrics"]["dice"]
        if dice["estimate"] is None:
            continue
        low = dice["low"] if dice["low"] is not None else dice["estimate"]
        high = dice["high"] if dice["high"] is not None else dice["estimate"]
        ax.errorbar(dice["estimate"], yi, xerr=[[dice["estimate"] - low], [high - dice["estimate"]]], fmt="o",
                    c=RUN_COLOUR, capsize=3, label=None if labelled["run"] else run_label)
        labelled["run"] = True
        key = (entry["characteristic"], entry["category"])
        if key in paper:
            ax.plot(paper[key], yi, "D", c=PAPER_COLOUR, label=None if labelled["paper"] else paper_label)
            labelled["paper"] = True
    ax.set(yticks=y, yticklabels=[f"{e['label']} [n={e['n']}]" for e in entries], xlim=(0, 1),
           ylim=(-0.6, len(entries) - 0.4), xlabel="mean Dice (DI) with 95% CI",
           title="Segmentation by nodule characteristic (as paper 003 Table 9)")
    ax.grid(axis="x", alpha=0.3)
    if labelled["run"]:
        ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


#: Gallery captions wrap at this many characters per line (a 3.3 in panel at 8 pt holds about 48).
CAPTION_CHARS = 40
#: A DICOM UID in a caption: digits and dots, at least 5 components.
_UID = re.compile(r"\d+(?:\.\d+){4,}")


def short_uid(uid: str, keep: int = 6) -> str:
    """``1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860`` -> ``1.3.6…666836860``:
    its first components (within ``keep`` characters) and its last ``keep + 3`` characters, which
    tell LIDC series apart (they share the long prefix); UIDs of at most ``2 * keep + 1``
    characters are kept whole."""
    if len(uid) <= 2 * keep + 1:
        return uid
    head = uid[:keep].rsplit(".", 1)[0] if "." in uid[:keep] else uid[:keep]
    return f"{head}\u2026{uid[-(keep + 3):]}"


def short_caption(caption: str, width: int = CAPTION_CHARS) -> str:
    """A gallery caption that fits its panel: long DICOM UIDs ellipsized in the middle
    (:func:`short_uid`), then each line wrapped at ``width`` characters."""
    text = _UID.sub(lambda m: short_uid(m.group(0)), caption)
    return "\n".join(line for part in text.split("\n")
                     for line in textwrap.wrap(part, width, break_on_hyphens=False) or [""])


@dataclass
class GalleryCase:
    """One patch to show: its image and masks (2D or 3D) and a caption (shortened to fit its panel
    by :func:`short_caption` when drawn)."""

    title: str
    image: np.ndarray
    truth: np.ndarray
    pred: np.ndarray
    caption: str


def _display_slice(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, ...]:
    """2D arrays to show: a 3D patch's slice with the largest truth (else prediction) area."""
    if image.ndim == 2:
        return image, truth, pred
    area = truth.reshape(truth.shape[0], -1).sum(axis=1)
    if area.max() == 0:
        area = pred.reshape(pred.shape[0], -1).sum(axis=1)
    z = int(np.argmax(area)) if area.max() > 0 else image.shape[0] // 2
    return image[z], truth[z], pred[z]


def _outline(ax: Any, mask: np.ndarray, colour: str, upsample: int = 8) -> None:
    """Draw a 2D mask's outline along pixel edges (a contour of the nearest-upsampled mask)."""
    if not mask.any() or mask.all():
        return
    fine = np.kron(mask.astype(np.float32), np.ones((upsample, upsample), dtype=np.float32))
    y = (np.arange(fine.shape[0]) + 0.5) / upsample - 0.5
    x = (np.arange(fine.shape[1]) + 0.5) / upsample - 0.5
    ax.contour(x, y, fine, levels=[0.5], colors=[colour], linewidths=1.8)


def gallery_figure(cases: Sequence[GalleryCase]) -> bytes:
    """CT patches with the ground-truth (green) and predicted (red) outlines, one panel per case."""
    return _png(_gallery(cases))


def _gallery(cases: Sequence[GalleryCase]) -> Any:
    """The matplotlib figure of :func:`gallery_figure` (the caller closes it)."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, axes = _grid(len(cases), 3.3, 3.9)
    for ax, case in zip(axes, cases):
        image, truth, pred = _display_slice(case.image, case.truth, case.pred)
        ax.imshow(image, cmap="gray", interpolation="nearest")
        _outline(ax, truth, TRUTH_COLOUR)
        _outline(ax, pred, PRED_COLOUR)
        ax.set_title(case.title, fontsize=10, fontweight="bold")
        ax.set_xlabel(short_caption(case.caption), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], c=TRUTH_COLOUR, lw=2, label="ground truth (consensus mask)"),
               Line2D([], [], c=PRED_COLOUR, lw=2, label="prediction (P >= threshold)")]
    plt.tight_layout(rect=(0, 0, 1, 0.92))
    fig.legend(handles=handles, loc="upper center", ncol=2, fontsize=9, bbox_to_anchor=(0.5, 1.0))
    return fig


def finite_or_nan(values: Sequence[Any]) -> np.ndarray:
    """Floats with None as NaN (rows from metrics.json use None for undefined values)."""
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)
