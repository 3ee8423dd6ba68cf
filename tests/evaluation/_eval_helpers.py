"""Test helpers (imported as ``_eval_helpers``): a tiny synthetic patch store, fake training runs,
and a threshold "model" that the tests register (never the package).

Patches are spheres (3D) of varying radius and brightness on a noisy background. The truth
mask is the sphere; the image is bright out to radius + delta (delta in [-1, 1] voxels), so a
threshold on the image gives a mask that differs from the truth by a known amount. Labels are
correlated with brightness (malignant nodules are brighter), so the threshold model's
"mean intensity inside its mask" is an informative but imperfect malignancy score.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from nodulekit.evaluation import PredictionBatch
from nodulekit.io.patch_store import PatchBatch, PatchGeometryInfo, write_patch_store

MODEL = "threshold-test"
PATCH_SHAPE = (8, 16, 16)
SPACING_ZYX_MM = (1.5, 0.7, 0.7)
STORE_REL = "crop/threshold-test/patches.h5"


def sphere_patch(rng: np.random.Generator, radius_vox: float, brightness: float,
                 delta_vox: float) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 in [0, 1], truth mask bool) of one sphere centred in the patch."""
    z, y, x = np.indices(PATCH_SHAPE, dtype=np.float32)
    centre = (np.array(PATCH_SHAPE, dtype=np.float32) - 1) / 2
    r = np.sqrt(((z - centre[0]) * 2.0) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
    truth = r <= radius_vox
    image = rng.normal(0.2, 0.05, PATCH_SHAPE).astype(np.float32)
    image[r <= radius_vox + delta_vox] = brightness + rng.normal(0, 0.03, int((r <= radius_vox + delta_vox).sum()))
    return np.clip(image, 0, 1).astype(np.float32), truth


def patient_layout(n_patients: int, big_patient_patches: int) -> list[str]:
    """Patient id per patch: patient P00 has ``big_patient_patches`` patches, the others one or two."""
    ids = ["P00"] * big_patient_patches
    for p in range(1, n_patients):
        ids += [f"P{p:02d}"] * (1 + p % 2)
    return ids


def make_batch(seed: int = 0, n_patients: int = 10, big_patient_patches: int = 6,
               n_empty: int = 2) -> PatchBatch:
    """Patches and table rows; folds by patient (even patient number -> fold 0).

    Patient P00's patches are all small and over-segmented (low Dice together), as the nodules
    of one patient are more alike than those of different patients.
    """
    rng = np.random.default_rng(seed)
    patients = patient_layout(n_patients, big_patient_patches)
    images, masks, rows = [], [], []
    for i, patient in enumerate(patients):
        label = int(rng.random() < 0.5)
        brightness = float(np.clip(rng.normal(0.8 if label else 0.62, 0.08), 0.53, 0.98))
        if i == 3:
            brightness = 0.4  # below the threshold: an empty prediction (a missed nodule)
        radius = float(rng.uniform(2.0, 5.0))
        delta = float(rng.uniform(-1, 1))
        if patient == "P00":  # one patient's patches are alike (small, over-segmented): correlated rows
            radius, delta = float(rng.uniform(2.0, 2.5)), 1.6
        image, truth = sphere_patch(rng, radius, brightness, delta)
        images.append(image)
        masks.append(truth)
        rows.append(_row(i, patient, label, radius, rng, "nodule"))
    for k in range(n_empty):
        images.append(rng.normal(0.2, 0.05, PATCH_SHAPE).clip(0, 1).astype(np.float32))
        masks.append(np.zeros(PATCH_SHAPE, dtype=bool))
        rows.append(_row(len(rows), patients[k + 1], -1, 0.0, rng, "empty"))
    masks_arr = np.stack(masks)
    return PatchBatch(np.stack(images), masks_arr, masks_arr.astype(np.float32), rows)


def _row(i: int, patient: str, label: int, radius_vox: float, rng: np.random.Generator, kind: str) -> dict:
    return {"nodule_key": f"1.2.{patient}/{i}", "patient_id": patient, "series_uid": f"1.2.{patient}", "nodule_id": i,
            "fold": int(patient[1:]) % 2, "label": label, "kind": kind, "slice_offset": 0,
            "source_spacing_z_mm": 2.5, "source_spacing_y_mm": 0.7, "source_spacing_x_mm": 0.7,
            "diameter_mm": round(2 * radius_vox * 0.7, 2), "malignancy": {1: 4.5, 0: 2.0}.get(label, 3.0),
            "margin": float(rng.integers(1, 6)), "texture": float(rng.integers(2, 6)),
            "calcification": float(rng.choice([3, 6])), "label_test_malignancy": label}


INFO = PatchGeometryInfo("3d", PATCH_SHAPE, SPACING_ZYX_MM, (-1000.0, 400.0), "01", "test", 0.5)


def write_store(path: Path, batch: PatchBatch, attrs: dict | None = None) -> Path:
    write_patch_store(path, INFO, [batch], attrs=attrs or {"dataset": "synthetic spheres"})
    return path


def write_run(workdir: Path, name: str, fold: int | list[int] | None, started_utc: str,
              threshold: float = 0.5, store_rel: str = STORE_REL, model: str = MODEL) -> Path:
    """A fake training run folder: run.json as nodulekit.training writes it, config.toml."""
    run_dir = workdir / "runs" / name
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "model.pt").write_bytes(b"weights")
    meta = {"model": model, "fold": fold, "started_utc": started_utc, "status": "complete",
            "stores": [{"path": store_rel, "augmented": False, "fingerprint": "", "n_patches": 0}],
            "versions": {"torch": "test"}}
    (run_dir / "run.json").write_text(json.dumps(meta))
    (run_dir / "config.toml").write_text(f"[model]\nthreshold = {threshold}\n\n[data]\nlabel_column = \"label\"\n")
    return run_dir


class ThresholdPredictor:
    """Reference model for tests: mask = image > t; malignancy P = (mean image inside the mask - 0.5) / 0.4."""

    version = "1"

    def __init__(self, run) -> None:
        self.threshold = float(run.config["model"]["threshold"])
        self.calls: list[tuple[int, int]] = []

    def predict(self, store, indices: np.ndarray, fold: int):
        self.calls.append((fold, len(indices)))
        for chunk in np.array_split(indices, max(1, len(indices) // 4))[::-1]:  # any order is allowed
            images = store.read(chunk, arrays=("images",))["images"]
            masks = images > self.threshold
            masks, score = threshold_outputs(images, self.threshold)
            yield PredictionBatch(chunk, seg_prob=masks.astype(np.float32), class_prob={"malignancy": score})


def threshold_outputs(images: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """What ThresholdPredictor predicts for ``images``: (masks, P(malignant))."""
    masks = images > threshold
    inside = np.array([img[m].mean() if m.any() else 0.0 for img, m in zip(images, masks)])
    return masks, np.clip((inside - 0.5) / 0.4, 0.0, 1.0)
