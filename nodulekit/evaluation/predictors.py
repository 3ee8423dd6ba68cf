"""Predictors of the built-in models (mtnet, dgnet, mtcnn, msunet, munet3d, cascade) for ``evaluate``.

Registered here with :func:`~nodulekit.evaluation.predictor.register_predictor`; the registry
imports this module on its first lookup. Importing it does not import torch: a predictor loads
its run (:func:`nodulekit.inference.load_model`: config.toml + run.json + final weights) only
when ``evaluate`` builds it, on the GPU when one is visible.

- :class:`ModelPredictor` (every model): the held-out patches in batches through
  :func:`nodulekit.inference.predict_patches`; probabilities at the patch size. Truth of a
  classification task: the column the run trained on (config ``data.labels.<task>``, else
  ``data.label_column``); dgnet's ``nodule`` task is "the patch shows a nodule" (``kind``).
  Cascade in mode ``gt_masked`` is given the store's masks (the paper's upper-bound baseline).
- :class:`MSUNetPredictor`: MSU-Net alone on its slabs (paper 003 Table 5, the refinement
  stage), or, when the msunet run is linked to a munet3d run (run.json ``coarse_run``, see
  :mod:`nodulekit.inference.chain`), both stages chained as at test time: each held-out nodule's
  cube (the munet3d run's patch store, matched by ``nodule_key``) goes through
  :func:`nodulekit.inference.predict_two_stage`, and every slab is scored on the assembled 3D
  probabilities sampled at the slab's own slices (z positions from the ``centre_z_mm`` and
  ``slab_spacing_z_mm`` columns; both presets share the in-plane grid), so single- and two-stage
  numbers come from the same slabs. Class probabilities are then per nodule (the mean of the
  chain's slabs), the same for each of its slabs. The munet3d run must hold out the same fold.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nodulekit.errors import NodulekitError
from nodulekit.evaluation.predictor import PredictionBatch, register_predictor
from nodulekit.evaluation.rows import KIND_IS_NODULE
from nodulekit.evaluation.runs import RunInfo, load_run
from nodulekit.io.patch_store import augmented_flags

BUILTIN_MODELS = ("mtnet", "dgnet", "mtcnn", "msunet", "munet3d", "cascade")
#: Tasks whose truth training derives from the patch instead of a label column.
DERIVED_TRUTH = {("dgnet", "nodule"): KIND_IS_NODULE}
#: Patches per forward pass: 2D / 2.5D / nine views, 3D cubes.
BATCH_2D, BATCH_3D = 32, 4


def truth_columns(model: Any) -> dict[str, str]:
    """``{task: store column}`` of a loaded model's classification tasks, as its training read them."""
    data = model.config.get("data") or {}
    labels = dict(data.get("labels") or {})
    default = str(data.get("label_column") or "label")
    return {task: DERIVED_TRUTH.get((model.name, task)) or str(labels.get(task, default))
            for task in model.class_tasks}


def check_store(model: Any, store: Any) -> None:
    """The store's patches must be what the model was trained on: shape, HU window, normalisation."""
    info = store.info
    if tuple(info.patch_shape) != tuple(model.patch_shape):
        raise NodulekitError(f"{store.path}: patches of shape {tuple(info.patch_shape)}, but {model.name} "
                             f"({model.run_dir.name}) takes {tuple(model.patch_shape)} (crop preset "
                             f"'{model.crop_preset}')")
    trained = model.store_info
    if trained is not None and (tuple(trained.hu_window), trained.normalize) != (tuple(info.hu_window), info.normalize):
        raise NodulekitError(f"{store.path}: HU window {list(info.hu_window)} ({info.normalize}), but "
                             f"{model.run_dir.name} trained on {list(trained.hu_window)} ({trained.normalize})")


def _chunks(indices: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), size):
        yield indices[start:start + size]


class ModelPredictor:
    """A built-in model's predictor (see the module docstring); ``run`` a :class:`RunInfo`."""

    version = "1"

    def __init__(self, run: RunInfo, device: str | None = None) -> None:
        from nodulekit.inference.predict import default_device, load_model

        self.run = run
        self.device = device or default_device()
        self.model = load_model(run.dir, self.device, model=run.model)
        self.batch_size = BATCH_3D if len(self.model.patch_shape) == 3 and self.model.channels == "add" else BATCH_2D
        self.label_columns = truth_columns(self.model)

    def predict(self, store: Any, indices: np.ndarray, fold: int) -> Iterator[PredictionBatch]:
        from nodulekit.inference.predict import predict_patches

        check_store(self.model, store)
        arrays = ("images", "masks") if self.model.needs_masks else ("images",)
        for chunk in _chunks(np.asarray(indices, dtype=np.int64), self.batch_size):
            read = store.read(chunk, arrays=arrays)
            pred = predict_patches(self.model, read["images"], batch_size=self.batch_size, masks=read.get("masks"))
            yield PredictionBatch(chunk, pred.seg_prob, pred.class_prob)


class MSUNetPredictor(ModelPredictor):
    """MSU-Net alone, or chained after its linked munet3d run (module docstring).

    ``coarse_run``: a munet3d run folder to chain to instead of the one linked in run.json
    (library use: ``evaluate(..., predictor=lambda run: MSUNetPredictor(run, coarse_run=...))``).
    """

    version = "1"

    def __init__(self, run: RunInfo, device: str | None = None, coarse_run: str | Path | None = None) -> None:
        from nodulekit.inference.chain import COARSE_MODEL, linked_coarse_run
        from nodulekit.inference.predict import load_model

        super().__init__(run, device)
        coarse_dir = Path(coarse_run) if coarse_run is not None else linked_coarse_run(run.dir)
        self.coarse = self.coarse_info = None
        if coarse_dir is not None:
            self.coarse = load_model(coarse_dir, self.device, model=COARSE_MODEL)
            self.coarse_info = load_run(run.dir.parent.parent, self.coarse.run_dir)

    def predict(self, store: Any, indices: np.ndarray, fold: int) -> Iterator[PredictionBatch]:
        if self.coarse is None:
            yield from super().predict(store, indices, fold)
            return
        yield from self._two_stage(store, np.asarray(indices, dtype=np.int64), fold)

    def _two_stage(self, store: Any, indices: np.ndarray, fold: int) -> Iterator[PredictionBatch]:
        import torch

        from nodulekit.inference.predict import predict_two_stage
        from nodulekit.io.patch_store import open_patch_store
        from nodulekit.models.two_stage import sample_z

        assert self.coarse is not None and self.coarse_info is not None
        check_store(self.model, store)
        if fold not in self.coarse_info.folds:
            raise NodulekitError(f"coarse run {self.coarse_info.name} holds out folds {list(self.coarse_info.folds)}, "
                                 f"not fold {fold}: its masks of fold {fold} would come from its training data")
        with open_patch_store(self.coarse_info.eval_store) as cubes:
            check_store(self.coarse, cubes)
            grid = _SlabGrid(store, cubes)
            by_nodule: dict[str, list[int]] = {}
            for i in indices:
                by_nodule.setdefault(str(store.table["nodule_key"][i]), []).append(int(i))
            keys = list(by_nodule)
            for start in range(0, len(keys), BATCH_3D):
                batch_keys = keys[start:start + BATCH_3D]
                cube_rows = [grid.cube_row(key) for key in batch_keys]
                images = cubes.read(cube_rows, arrays=("images",))["images"]
                chained = predict_two_stage(self.coarse, self.model, images, batch_size=BATCH_3D)
                rows = [i for key in batch_keys for i in by_nodule[key]]
                seg = np.empty((len(rows), *self.model.patch_shape), dtype=np.float32)
                classes = {t: np.empty((len(rows), *v.shape[1:]), dtype=np.float32)
                           for t, v in chained.class_prob.items()}
                k = 0
                for j, key in enumerate(batch_keys):
                    volume = torch.from_numpy(chained.seg_prob[j])
                    for i in by_nodule[key]:
                        seg[k] = sample_z(volume, torch.from_numpy(grid.positions(i, cube_rows[j]))).numpy()
                        for task, values in chained.class_prob.items():
                            classes[task][k] = values[j]
                        k += 1
                yield PredictionBatch(np.asarray(rows, dtype=np.int64), np.clip(seg, 0, 1), classes)


class _SlabGrid:
    """Where a slab's slices lie in its nodule's cube (slice units along the cube's z axis)."""

    def __init__(self, slabs: Any, cubes: Any) -> None:
        for store in (slabs, cubes):
            missing = [c for c in ("nodule_key", "centre_z_mm", "centre_y_mm", "centre_x_mm") if c not in store.table]
            if missing:
                raise NodulekitError(f"{store.path}: no column(s) {', '.join(missing)}; crop it again to chain the "
                                     "two stages")
        s_info, c_info = slabs.info, cubes.info
        if s_info.spacing_zyx_mm is None or c_info.spacing_zyx_mm is None or \
                tuple(s_info.spacing_zyx_mm[1:]) != tuple(c_info.spacing_zyx_mm[1:]):
            raise NodulekitError(f"{slabs.path} and {cubes.path}: the slabs and cubes need the same in-plane spacing")
        self.slabs, self.cubes = slabs, cubes
        self.depth = int(s_info.patch_shape[0])
        self.cube_depth = int(c_info.patch_shape[0])
        self.slab_dz = float(s_info.spacing_zyx_mm[0])
        self.cube_dz = float(c_info.spacing_zyx_mm[0])
        keep = ~augmented_flags(cubes.table)
        self.rows = {str(k): i for i, k in enumerate(cubes.table["nodule_key"]) if keep[i]}

    def cube_row(self, key: str) -> int:
        if key not in self.rows:
            raise NodulekitError(f"{self.cubes.path}: no cube of nodule {key} (the coarse run's store must hold every "
                                 "nodule of the slab store)")
        return self.rows[key]

    def positions(self, slab_row: int, cube_row: int) -> np.ndarray:
        """Cube z positions (slice units) of the slab's ``depth`` slices; in-plane centres must agree."""
        s, c = self.slabs.table, self.cubes.table
        for axis in "yx":
            if abs(float(s[f"centre_{axis}_mm"][slab_row]) - float(c[f"centre_{axis}_mm"][cube_row])) > 1e-3:
                raise NodulekitError(f"{self.slabs.path}: slab {slab_row} and its cube are not centred alike in {axis}")
        dz = float(s["slab_spacing_z_mm"][slab_row]) if "slab_spacing_z_mm" in s else self.slab_dz
        z = float(s["centre_z_mm"][slab_row]) + (np.arange(self.depth) - (self.depth - 1) / 2) * dz
        return (z - float(c["centre_z_mm"][cube_row])) / self.cube_dz + (self.cube_depth - 1) / 2


for _name in BUILTIN_MODELS:
    register_predictor(_name)(MSUNetPredictor if _name == "msunet" else ModelPredictor)
