"""Datasets over patch stores: folds, augmented copies, labels, reading modes, the sampler."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _training_helpers import INFO, PATCH_SHAPE, make_store, patch_rows, random_batch

from nodulekit.errors import NodulekitError
from nodulekit.io.patch_store import open_patch_store, write_patch_store
from nodulekit.training.data import (DataParams, EpochBatchSampler, PatchDataset, make_loader, resolve_store_path,
                                     split_datasets)


def params(*stores: Path, **kw) -> DataParams:
    return DataParams(tuple(stores), **kw)


def rows_of(dataset: PatchDataset, column: str) -> list:
    out = []
    for i in range(len(dataset)):
        path, row = dataset.row(i)
        with open_patch_store(path) as store:
            out.append(store.table[column][row])
    return out


def test_folds_split_by_patient(tmp_path: Path):
    store = make_store(tmp_path / "crop.h5", n_patients=6, per_patient=3, n_folds=3)
    train, val = split_datasets(params(store), fold=1)
    assert len(train) == 12 and len(val) == 6
    assert set(rows_of(train, "fold")) == {0, 2} and set(rows_of(val, "fold")) == {1}
    assert not set(train.patient_ids()) & set(val.patient_ids())
    everything, none = split_datasets(params(store), fold=None)
    assert len(everything) == 18 and none is None
    with pytest.raises(NodulekitError, match="fold 7"):
        split_datasets(params(store), fold=7)


def test_augmented_store_trains_on_copies_of_training_patients_and_validates_on_originals(tmp_path: Path):
    store = make_store(tmp_path / "aug.h5", n_patients=6, per_patient=2, n_folds=3, augment_copies=2)
    train, val = split_datasets(params(store), fold=0)
    train_aug, val_aug = rows_of(train, "is_augmented"), rows_of(val, "is_augmented")
    assert not any(val_aug) and len(val) == 4  # 2 patients x 2 nodules, originals only
    assert sum(train_aug) == 2 * 8 and len(train) == 3 * 8  # originals + 2 copies of 4 patients x 2
    assert set(rows_of(train, "fold")) == {1, 2}
    assert not set(train.patient_ids()) & set(val.patient_ids())


def test_crop_plus_augmented_stores(tmp_path: Path):
    crop = make_store(tmp_path / "crop.h5", n_patients=6, per_patient=2, n_folds=3)
    aug = make_store(tmp_path / "aug.h5", n_patients=6, per_patient=2, n_folds=3, augment_copies=1)
    train, val = split_datasets(params(crop, aug), fold=2)
    assert len(val) == 4  # the originals of fold 2, read from the crop store only
    assert len(train) == 8 + 8  # the crop store's originals + the augmented store's copies
    assert [train.row(i)[0].name for i in range(len(train))].count("aug.h5") == 8
    originals = PatchDataset.from_stores(params(crop, aug), "train", 2, originals_only=True)
    assert len(originals) == 8 and {p.name for p, _ in map(originals.row, range(8))} == {"crop.h5"}
    assert not set(train.patient_ids()) & set(val.patient_ids())


def test_patient_in_two_folds_is_an_error(tmp_path: Path):
    a = make_store(tmp_path / "a.h5", n_patients=4, per_patient=1, n_folds=2)
    b = tmp_path / "b.h5"
    rows = patch_rows(4, 1, 2)
    for row in rows:
        row["fold"] = 1 - row["fold"]  # the same patients, other folds
    write_patch_store(b, INFO, [random_batch(rows, 1)])
    with pytest.raises(NodulekitError, match="both the training and the validation"):
        split_datasets(params(a, b), fold=0)


def test_label_selection_and_kinds(tmp_path: Path):
    store = make_store(tmp_path / "s.h5", n_patients=6, per_patient=3, n_folds=3, unlabelled_every=4)
    train, _ = split_datasets(params(store, require_label=True), fold=0)
    assert (train.labels["label"] >= 0).all() and len(train) < 12
    train_all, _ = split_datasets(params(store), fold=0)
    assert (train_all.labels["label"] == -1).any() and len(train_all) == 12
    nodules, _ = split_datasets(params(store, kinds=("nodule",)), fold=0)
    assert len(nodules) == 12
    with pytest.raises(NodulekitError, match="kinds|validation"):
        split_datasets(params(store, kinds=("empty",)), fold=0)
    with pytest.raises(NodulekitError, match="nope"):
        split_datasets(params(store, label_column="nope", require_label=True), fold=0)


def test_in_memory_and_per_batch_reads_give_identical_batches(tmp_path: Path):
    a = make_store(tmp_path / "a.h5", n_patients=4, per_patient=3, seed=1)
    b = make_store(tmp_path / "b.h5", n_patients=4, per_patient=3, seed=2, augment_copies=1)
    memory, _ = split_datasets(params(a, b, labels_by_name={"malignancy": "label"}), fold=0)
    lazy, _ = split_datasets(params(a, b, memory_budget_mb=0, labels_by_name={"malignancy": "label"}), fold=0)
    assert memory.in_memory and not lazy.in_memory
    for workers in (0, 1):
        batches = []
        for dataset in (memory, lazy):
            sampler = EpochBatchSampler(len(dataset), 5, shuffle=True, seed=3)
            batches.append(list(make_loader(dataset, sampler, num_workers=workers)))
        assert len(batches[0]) == len(batches[1]) == 3  # 6 originals of a + 6 copies of b (its originals skipped)
        for x, y in zip(*batches):
            assert x.keys() == y.keys() == {"image", "mask", "agreement", "label", "malignancy", "index"}
            for key in x:
                assert torch.equal(x[key], y[key]), key
    one = lazy[3]
    assert one["image"].shape == (1, *PATCH_SHAPE) and one["image"].dtype == torch.float32
    assert one["mask"].dtype == torch.float32 and one["label"].dtype == torch.int64
    batch = memory.__getitems__([5, 0, 5])
    assert batch["image"].shape == (3, 1, *PATCH_SHAPE)
    assert batch["index"].tolist() == [5, 0, 5] and torch.equal(batch["image"][0], batch["image"][2])
    path, row = memory.row(5)
    with open_patch_store(path) as store:
        np.testing.assert_array_equal(batch["image"][0, 0].numpy(), store.read([row])["images"][0])


def test_channels_first_uses_the_patch_axis(tmp_path: Path):
    store = make_store(tmp_path / "s.h5")
    train, _ = split_datasets(params(store, channels="first"), fold=0)
    assert train.__getitems__([0, 1])["image"].shape == (2, *PATCH_SHAPE)


@pytest.mark.parametrize("n, batch, world", [(12, 4, 2), (13, 4, 2), (10, 6, 3)])
def test_sampler_ranks_split_each_global_batch(n, batch, world):
    single = EpochBatchSampler(n, batch, shuffle=True, seed=5)
    ranks = [EpochBatchSampler(n, batch, shuffle=True, seed=5, rank=r, world_size=world) for r in range(world)]
    for s in (single, *ranks):
        s.set_epoch(2)
    single_batches = list(single)
    rank_batches = [list(r) for r in ranks]
    assert len({len(b) for b in rank_batches}) == 1
    padded = -(-n // world) * world
    for k, whole in enumerate(single_batches):
        union = sorted(i for r in rank_batches for i in r[k])
        if padded == n or k < len(single_batches) - 1:
            assert union == sorted(whole)
    ranks[0].set_epoch(2, start_batch=1)
    assert list(ranks[0]) == rank_batches[0][1:]
    other = EpochBatchSampler(n, batch, shuffle=True, seed=5)
    other.set_epoch(3)
    assert list(other) != single_batches
    with pytest.raises(NodulekitError, match="divisible"):
        EpochBatchSampler(n, 5, shuffle=True, seed=0, world_size=2)


def test_store_entries_resolve_below_the_workdir(tmp_path: Path):
    assert resolve_store_path("augment/mtnet", tmp_path) == tmp_path / "augment/mtnet/patches.h5"
    assert resolve_store_path("x/p.h5", tmp_path) == tmp_path / "x/p.h5"
    with pytest.raises(NodulekitError, match="data.stores"):
        DataParams.from_config({"stores": []}, tmp_path)
