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

Times are the minimum of ``--repeats`` runs (least disturbed by other processes on the machine).
"""
from __future__ import annotations

import argparse
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


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (imports, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


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


def run_case(name: str, pred: np.ndarray, truth: np.ndarray, sd, monai_hd, repeats: int) -> list[str]:
    row = {"case": name}
    row["read"] = best_seconds(lambda: (np.any(pred, axis=(1, 2)), np.any(truth, axis=(1, 2))), repeats)
    row["any"] = best_seconds(lambda: (np.any(pred), np.any(truth)), repeats)
    row["HD"] = best_seconds(lambda: hausdorff(pred, truth, SPACING_ZYX_MM), repeats)
    row["HD95"] = best_seconds(lambda: hausdorff(pred, truth, SPACING_ZYX_MM, 95), repeats)
    row["ASSD"] = best_seconds(lambda: assd(pred, truth, SPACING_ZYX_MM), repeats)
    ours = hausdorff(pred, truth, SPACING_ZYX_MM)
    ours95 = hausdorff(pred, truth, SPACING_ZYX_MM, 95)
    notes = [f"{name}: nodulekit HD = {ours:.6f} mm, HD95 = {ours95:.6f} mm, "
             f"ASSD = {assd(pred, truth, SPACING_ZYX_MM):.6f} mm"]
    if sd is not None:
        row["deepmind"] = best_seconds(lambda: deepmind_hd(sd, pred, truth), max(3, repeats // 2))
        theirs, theirs95 = deepmind_hd(sd, pred, truth), deepmind_hd(sd, pred, truth, 95)
        assert agree(ours, theirs), f"{name}: HD {ours} vs surface-distance {theirs}"
        notes.append(f"{name}: surface-distance HD = {theirs:.6f} mm (agrees within 1e-6), "
                     f"HD95 = {theirs95:.6f} mm (other HD95 definition, not compared)")
    if monai_hd is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row["monai"] = best_seconds(lambda: monai_hd(pred, truth, None), 3)
            theirs, theirs95 = monai_hd(pred, truth, None), monai_hd(pred, truth, 95)
        assert agree(ours, theirs), f"{name}: HD {ours} vs MONAI {theirs}"
        assert agree(ours95, theirs95), f"{name}: HD95 {ours95} vs MONAI {theirs95}"
        notes.append(f"{name}: MONAI HD = {theirs:.6f}, HD95 = {theirs95:.6f} mm (agree within 1e-6)")
    return [format_row(row)] + notes


HEADER = (f"{'case':<22}{'read ms':>9}{'any ms':>8}{'HD ms':>8}{'HD95 ms':>9}{'ASSD ms':>9}"
          f"{'HD/read':>9}{'DeepMind ms':>13}{'x faster':>10}{'MONAI ms':>10}{'x faster':>10}")


def format_row(row: dict) -> str:
    ms = {k: v * 1e3 for k, v in row.items() if k != "case"}
    text = (f"{row['case']:<22}{ms['read']:>9.2f}{ms['any']:>8.2f}{ms['HD']:>8.2f}{ms['HD95']:>9.2f}"
            f"{ms['ASSD']:>9.2f}{ms['HD'] / ms['read']:>9.2f}")
    for key in ("deepmind", "monai"):
        if key in ms:
            text += f"{ms[key]:>13.1f}{ms[key] / ms['HD']:>10.1f}" if key == "deepmind" else \
                    f"{ms[key]:>10.1f}{ms[key] / ms['HD']:>10.1f}"
        else:
            text += f"{'n/a':>13}{'':>10}" if key == "deepmind" else f"{'n/a':>10}{'':>10}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    sd, monai_hd = load_surface_distance(), load_monai()
    print(f"volume {SHAPE_ZYX} bool, spacing_zyx_mm {SPACING_ZYX_MM}; best of {args.repeats} runs")
    print("surface-distance (DeepMind):", "available" if sd else "not installed, skipped")
    print("MONAI:", "available" if monai_hd else "not installed, skipped")
    cases = [
        ("spheres r=10 offset", sphere((150, 256, 256), 10), sphere((152, 258, 255), 10)),
        ("spheres r=5 / r=7", sphere((100, 300, 200), 5), sphere((101, 301, 199), 7)),
        ("boxes 21^3 dz=3", box((140, 240, 240), 21), box((143, 240, 240), 21)),
    ]
    lines, notes = [HEADER], []
    for name, pred, truth in cases:
        row, *case_notes = run_case(name, pred, truth, sd, monai_hd, args.repeats)
        lines.append(row)
        notes += case_notes
        del pred, truth
    print("\n".join(lines))
    print("x faster = their time / nodulekit HD time; HD/read = nodulekit HD time / read time")
    print("\n".join(notes))


if __name__ == "__main__":
    main()
