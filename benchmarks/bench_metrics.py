"""Benchmark nodulekit's surface-distance metrics against a plain read of the masks,
DeepMind's ``surface-distance`` and MONAI's ``compute_hausdorff_distance``.

Run:  python benchmarks/bench_metrics.py [--repeats 9]

Case: two nodule-sized objects in a 300x512x512 CT-sized volume, spacing (1.25, 0.7, 0.7) mm.
"read" is one full pass over both masks (``np.any(mask, axis=(1, 2))``, a bounding-box scan);
"any" is ``np.any(mask)`` for both masks, which stops at the first True (so reads about half).
The masks are written explicitly (``fill(False)``): a fresh ``np.zeros`` array is backed by the
kernel's shared zero page until written, and reads of it would look impossibly fast.

Value checks (HD100 must agree within 1e-6 relative):
- MONAI uses the same boundary as nodulekit (``mask ^ binary_erosion(mask)``, face
  connectivity, voxel centres), so HD100 and HD95 are compared on every case. MONAI returns
  float32, hence a relative tolerance.
- surface-distance puts its surface points on voxel corners (2x2x2 neighbourhood codes). Its
  HD100 equals the voxel-centre HD100 on balls and boxes (asserted here for every case; boxes
  offset by k voxels give exactly k * spacing in both), but not on ragged masks (random noise
  masks differ by a fraction of a voxel). Its HD95 is surfel-area weighted nearest-rank, not
  MONAI's per-voxel linear percentile, so HD95 values differ and are only printed.

Timing: nodulekit (HD, HD95, ASSD), the reads and surface-distance run round-robin, one call of
each per round for ``--repeats`` rounds, so a burst of load from other processes hits all of them
alike; MONAI (about a second per call) runs 3 times afterwards. Both the minimum (least disturbed)
and the median are printed, with the ratios of each, and the load average before and after.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nodulekit.metrics import assd, hausdorff  # noqa: E402

SHAPE_ZYX = (300, 512, 512)
SPACING_ZYX_MM = (1.25, 0.7, 0.7)


def blank_volume() -> np.ndarray:
    volume = np.empty(SHAPE_ZYX, dtype=bool)
    volume.fill(False)  # touch every page (see module docstring)
    return volume


def sphere(centre_zyx: tuple[int, int, int], radius_vox: int) -> np.ndarray:
    volume = blank_volume()
    box = tuple(slice(c - radius_vox, c + radius_vox + 1) for c in centre_zyx)
    grids = np.ogrid[box]
    volume[box] = sum((g - c) ** 2 for g, c in zip(grids, centre_zyx)) <= radius_vox**2
    return volume


def box(start_zyx: tuple[int, int, int], size_vox: int) -> np.ndarray:
    volume = blank_volume()
    volume[tuple(slice(s, s + size_vox) for s in start_zyx)] = True
    return volume


def round_robin_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall times of ``repeats`` rounds, each calling every function once, in turn."""
    for fn in fns.values():
        fn()  # warm-up (imports, caches)
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return times


def load_average() -> str:
    return "load average %.2f, %.2f, %.2f (1, 5, 15 min)" % os.getloadavg()


def load_surface_distance():
    try:
        import surface_distance
    except ImportError:
        return None
    return surface_distance


def load_monai():
    try:
        import torch
        from monai.metrics import compute_hausdorff_distance
    except ImportError:
        return None
    return lambda pred, truth, q: float(compute_hausdorff_distance(
        torch.from_numpy(pred)[None, None], torch.from_numpy(truth)[None, None],
        include_background=True, percentile=q, spacing=list(SPACING_ZYX_MM)))


def deepmind_hd(sd, pred: np.ndarray, truth: np.ndarray, q: float = 100.0) -> float:
    distances = sd.compute_surface_distances(truth, pred, SPACING_ZYX_MM)
    return float(sd.compute_robust_hausdorff(distances, q))


def agree(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def run_case(name: str, pred: np.ndarray, truth: np.ndarray, sd, monai_hd,
             repeats: int) -> tuple[dict, dict, list[str]]:
    """Times of one case: (minimum, median) seconds per function, and notes on the values."""
    fns = {
        "read": lambda: (np.any(pred, axis=(1, 2)), np.any(truth, axis=(1, 2))),
        "any": lambda: (np.any(pred), np.any(truth)),
        "HD": lambda: hausdorff(pred, truth, SPACING_ZYX_MM),
        "HD95": lambda: hausdorff(pred, truth, SPACING_ZYX_MM, 95),
        "ASSD": lambda: assd(pred, truth, SPACING_ZYX_MM),
    }
    if sd is not None:
        fns["deepmind"] = lambda: deepmind_hd(sd, pred, truth)
    times = round_robin_seconds(fns, repeats)
    ours = hausdorff(pred, truth, SPACING_ZYX_MM)
    ours95 = hausdorff(pred, truth, SPACING_ZYX_MM, 95)
    notes = [f"{name}: nodulekit HD = {ours:.6f} mm, HD95 = {ours95:.6f} mm, "
             f"ASSD = {assd(pred, truth, SPACING_ZYX_MM):.6f} mm"]
    if sd is not None:
        theirs, theirs95 = deepmind_hd(sd, pred, truth), deepmind_hd(sd, pred, truth, 95)
        assert agree(ours, theirs), f"{name}: HD {ours} vs surface-distance {theirs}"
        notes.append(f"{name}: surface-distance HD = {theirs:.6f} mm (agrees within 1e-6), "
                     f"HD95 = {theirs95:.6f} mm (other HD95 definition, not compared)")
    if monai_hd is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            times.update(round_robin_seconds({"monai": lambda: monai_hd(pred, truth, None)}, 3))
            theirs, theirs95 = monai_hd(pred, truth, None), monai_hd(pred, truth, 95)
        assert agree(ours, theirs), f"{name}: HD {ours} vs MONAI {theirs}"
        assert agree(ours95, theirs95), f"{name}: HD95 {ours95} vs MONAI {theirs95}"
        notes.append(f"{name}: MONAI HD = {theirs:.6f}, HD95 = {theirs95:.6f} mm (agree within 1e-6)")
    best = {"case": name, **{key: min(v) for key, v in times.items()}}
    median = {"case": name, **{key: float(np.median(v)) for key, v in times.items()}}
    return best, median, notes


HEADER = (f"{'case':<22}{'read ms':>9}{'any ms':>8}{'HD ms':>8}{'HD95 ms':>9}{'ASSD ms':>9}"
          f"{'HD/read':>9}{'DeepMind ms':>13}{'x faster':>10}{'MONAI ms':>10}{'x faster':>10}")


def format_row(row: dict) -> str:
    ms = {k: v * 1e3 for k, v in row.items() if k != "case"}
    text = (f"{row['case']:<22}{ms['read']:>9.2f}{ms['any']:>8.2f}{ms['HD']:>8.2f}{ms['HD95']:>9.2f}"
            f"{ms['ASSD']:>9.2f}{ms['HD'] / ms['read']:>9.2f}")
    for key, width in (("deepmind", 13), ("monai", 10)):
        if key in ms:
            text += f"{ms[key]:>{width}.1f}{ms[key] / ms['HD']:>10.1f}"
        else:
            text += f"{'n/a':>{width}}{'':>10}"
    return text


def summary(rows: list[dict], label: str) -> str:
    """Smallest ratio over the cases against each goal (5x surface-distance, 50x MONAI)."""
    parts = []
    for key, goal, title in (("deepmind", 5.0, "surface-distance"), ("monai", 50.0, "MONAI")):
        if all(key in row for row in rows):
            worst = min(row[key] / row["HD"] for row in rows)
            verdict = "met" if worst >= goal else "MISSED"
            parts.append(f"vs {title} >= {worst:.2f}x (goal {goal:g}x: {verdict})")
    worst_read = max(row["HD"] / row["read"] for row in rows)
    parts.append(f"HD/read <= {worst_read:.2f}")
    return f"{label}: " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    sd, monai_hd = load_surface_distance(), load_monai()
    print(f"volume {SHAPE_ZYX} bool, spacing_zyx_mm {SPACING_ZYX_MM}; {args.repeats} round-robin rounds")
    print("surface-distance (DeepMind):", "available" if sd else "not installed, skipped")
    print("MONAI:", "available (3 calls per case)" if monai_hd else "not installed, skipped")
    print("before:", load_average())
    cases = [
        ("spheres r=10 offset", sphere((150, 256, 256), 10), sphere((152, 258, 255), 10)),
        ("spheres r=5 / r=7", sphere((100, 300, 200), 5), sphere((101, 301, 199), 7)),
        ("boxes 21^3 dz=3", box((140, 240, 240), 21), box((143, 240, 240), 21)),
    ]
    best_rows, median_rows, notes = [], [], []
    for name, pred, truth in cases:
        best, median, case_notes = run_case(name, pred, truth, sd, monai_hd, args.repeats)
        best_rows.append(best)
        median_rows.append(median)
        notes += case_notes
        del pred, truth
    for label, rows in (("minimum", best_rows), ("median", median_rows)):
        print(f"\n{label} of the runs")
        print("\n".join([HEADER] + [format_row(row) for row in rows]))
    print("x faster = their time / nodulekit HD time; HD/read = nodulekit HD time / read time\n")
    print(summary(best_rows, "minimum"))
    print(summary(median_rows, "median"))
    print("after:", load_average())
    print("\n".join(notes))


if __name__ == "__main__":
    main()
