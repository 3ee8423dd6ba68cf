"""Shared by the run-pipeline tests (tests/stages, tests/cli)."""
from __future__ import annotations

import numpy as np

from nodulekit.evaluation import PredictionBatch


class IntensityPredictor:
    """A stand-in model for the evaluate stage: P(nodule) from the patch intensity."""

    version = "test"

    def __init__(self, run=None) -> None:
        self.run = run

    def predict(self, store, indices, fold):
        images = store.read(indices, arrays=("images",))["images"].astype(np.float32)
        seg = np.clip((images - 0.3) * 3, 0, 1)
        malignancy = np.clip(seg.reshape(len(indices), -1).mean(axis=1) * 5, 0, 1)
        yield PredictionBatch(indices=indices, seg_prob=seg, class_prob={"malignancy": malignancy})
