"""Stage ``augment/<preset>``: offline augmented copies of a crop store, in a store of their own.

Reads ``WORKDIR/crop/<preset>/patches.h5`` and writes, in ``WORKDIR/augment/<preset>/``:

- ``parts/chunk-<first source index, 7 digits>.h5``: a run of source patches, each followed by its copies,
  written atomically; each chunk is an item of the stage's journal, so an interrupted run resumes
  with the chunks it has not finished (the parts are deleted once the store is final);
- ``patches.h5``: the augmented store (schema :mod:`nodulekit.io.patch_store`), every original patch
  (``is_augmented`` False) then its ``factor`` copies, with the columns of the crop store plus
  ``source_index`` (row in the crop store), ``copy_index`` (0 = the original), ``is_augmented`` and
  ``augmentation`` (JSON of the applied op parameters, ``{}`` for an original);
- ``report.json``: the resolved recipe, patches per fold, originals and copies.

Reader masks (``/reader_masks``, when the crop store has them): originals keep theirs; copies
carry none (all-False rows, ``n_reader_masks`` 0). Readers only serve the evaluation's
reader-agreement table, which scores originals only, so transforming them would cost space for
nothing.

Which folds get copies (the argument is in :func:`nodulekit.patches.augment.split_by_fold`): every
fold except ``held_out_folds`` (``--val-fold``) gets copies, each keeping its source's fold and
patient; originals of every fold are kept untouched. A run validating on fold k trains on the rows
of the other folds (originals and copies) and validates on the originals of fold k only, so no
augmented patch of a validation or test patient is ever used. Held-out folds get no copies at all.

The copies of a source patch depend only on (seed, source index) (:func:`~nodulekit.patches.augment.patch_rng`),
so chunking and resuming do not change the store; the same seed gives an identical store.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from nodulekit.errors import InputFileError, NodulekitError
from nodulekit.io.patch_store import (ARRAYS, READER_ARRAY, READER_COUNT_COLUMN, PatchBatch, PatchStore,
                                      open_patch_store, write_patch_store)
from nodulekit.patches.augment import (RECIPES, PatchArrays, PatchLayout, Recipe, air_value, apply_copy,
                                       augmentation_json, check_recipe, intensity_range, patch_layout, patch_rng,
                                       recipe_for_preset, resolve_recipe, sample_copy)
from nodulekit.pipeline import CODE_VERSIONS, StageRun, StageSpec, atomic_write_json, read_manifest

STAGE = "augment"
STORE_NAME = "patches.h5"
REPORT_NAME = "report.json"
PARTS_DIR = "parts"
CHUNK_BYTES = 128 * 2**20  # output bytes per journal item (memory bound of one chunk)
MAX_CHUNK_SOURCES = 512


@dataclass
class AugmentParams:
    """Options of ``nodulekit augment`` (all change the outputs, so all are fingerprinted).

    ``preset``: the crop instance to read (``crop/<preset>``); ``recipe``: default the preset's own;
    ``ops`` (``"flip,rot90:1"``) and ``factor`` override the recipe's; ``held_out_folds``: folds that
    never train (fixed validation / test split) and so get no copies.
    """

    preset: str
    recipe: str | None = None
    ops: str | None = None
    factor: int | None = None
    seed: int = 0
    held_out_folds: tuple[int, ...] = ()

    def resolved_recipe(self) -> Recipe:
        name = self.recipe or recipe_for_preset(self.preset)
        if name is None:
            raise NodulekitError(f"no augmentation recipe for preset {self.preset!r}; pass --recipe "
                                 f"({', '.join(RECIPES)})")
        return resolve_recipe(name, self.ops, self.factor)

    def validate(self) -> Recipe:
        if self.seed < 0:
            raise NodulekitError(f"--seed {self.seed}: must be >= 0")
        return self.resolved_recipe()

    def fingerprint_params(self) -> dict[str, Any]:
        """The resolved recipe, ops with their probabilities and ranges included (see ``OpSpec.label``)."""
        recipe = self.resolved_recipe()
        return {"preset": self.preset, "recipe": recipe.name, "factor": recipe.factor, "ops": recipe.ops_label(),
                "seed": self.seed, "held_out_folds": sorted(set(self.held_out_folds))}


@dataclass
class AugmentResult:
    up_to_date: bool
    stage_dir: Path
    report: dict[str, Any]
    n_chunks_processed: int = 0


def stage_name(preset: str) -> str:
    return f"{STAGE}/{preset}"


def crop_store_path(workdir: Path, preset: str) -> Path:
    return Path(workdir) / "crop" / preset / "patches.h5"


def _check_upstream(workdir: Path, preset: str) -> None:
    manifest = read_manifest(workdir, f"crop/{preset}")
    if manifest is None or manifest.get("state") != "complete":
        state = "has not run" if manifest is None else "is not finished"
        raise NodulekitError(f"{Path(workdir) / 'crop' / preset}: crop for {preset!r} {state}; "
                             f"run `nodulekit crop --for {preset}` on this workdir first")


def store_layout(store: PatchStore) -> tuple[PatchLayout, float]:
    """The augmentation layout of a store's patches and its normalised intensity range."""
    info = store.info
    fill = air_value(info.hu_window, info.normalize)
    return (patch_layout(info.geometry, info.patch_shape, info.spacing_zyx_mm, fill, info.clevel),
            intensity_range(info.hu_window, info.normalize))


def chunk_ranges(n_sources: int, patch_bytes: int, factor: int) -> list[range]:
    """Runs of source patches whose output (originals + copies) is about :data:`CHUNK_BYTES`."""
    per_source = max(1, patch_bytes * (1 + factor))
    size = int(min(MAX_CHUNK_SOURCES, max(1, CHUNK_BYTES // per_source)))
    return [range(start, min(start + size, n_sources)) for start in range(0, n_sources, size)]


def augment(workdir: Path, params: AugmentParams, *, force: bool = False,
            on_start: Callable[[int], None] | None = None,
            on_advance: Callable[[], None] | None = None) -> AugmentResult:
    """Run the stage (skip when up to date, resume after an interruption)."""
    workdir = Path(workdir)
    recipe = params.validate()
    _check_upstream(workdir, params.preset)
    spec = StageSpec(stage_name(params.preset), CODE_VERSIONS[STAGE], params.fingerprint_params(),
                     upstream=(f"crop/{params.preset}",))
    with StageRun(workdir, spec, force=force) as run:
        if run.up_to_date:
            return AugmentResult(True, run.dir, json.loads((run.dir / REPORT_NAME).read_text()))
        with open_patch_store(crop_store_path(workdir, params.preset)) as source:
            layout, value_range = store_layout(source)
            check_recipe(recipe, layout)
            _check_folds(source, params.held_out_folds)
            # float32 image + agreement, bool mask (+ bool reader masks, originals only)
            patch_bytes = int(np.prod(source.info.patch_shape)) * (9 + 4 * source.has_reader_masks)
            chunks = chunk_ranges(len(source), patch_bytes, recipe.factor)
            if not run.resuming and (run.dir / PARTS_DIR).exists():
                shutil.rmtree(run.dir / PARTS_DIR)
            run.start(n_items=len(chunks))
            done = run.done_items()
            todo = [c for c in chunks if _chunk_key(c) not in done]
            if on_start:
                on_start(len(todo))
            for chunk in todo:
                batch = augment_chunk(source, chunk, recipe, layout, value_range, params)
                write_patch_store(_part_path(run, chunk), source.info, [batch])
                run.record_item(_chunk_key(chunk), {"n_out": len(batch)})
                if on_advance:
                    on_advance()
            report = _finalise(run, source, chunks, recipe, params)
        return AugmentResult(False, run.dir, report, n_chunks_processed=len(todo))


def _check_folds(source: PatchStore, held_out_folds: Sequence[int]) -> None:
    folds = sorted({int(f) for f in source.table["fold"]})
    unknown = sorted(set(held_out_folds) - set(folds))
    if unknown:
        raise NodulekitError(f"--val-fold {unknown[0]}: {source.path} has folds {', '.join(map(str, folds))}")


def _chunk_key(chunk: range) -> str:
    return f"chunk-{chunk.start:07d}"


def _part_path(run: StageRun, chunk: range) -> Path:
    return run.dir / PARTS_DIR / f"{_chunk_key(chunk)}.h5"


def augment_chunk(source: PatchStore, chunk: range, recipe: Recipe, layout: PatchLayout, value_range: float,
                  params: AugmentParams) -> PatchBatch:
    """The originals of ``chunk`` and the copies of those not in a held-out fold (copies without
    reader masks, see the module docstring)."""
    arrays = source.read(list(chunk), arrays=(*ARRAYS, READER_ARRAY) if source.has_reader_masks else ARRAYS)
    rows = source.rows(chunk)
    held_out = set(params.held_out_folds)
    images, masks, agreement, out_rows, readers = [], [], [], [], []
    for i, (index, row) in enumerate(zip(chunk, rows)):
        original = PatchArrays(arrays["images"][i], arrays["masks"][i], arrays["agreement"][i])
        copies: list[tuple[dict[str, Any] | None, PatchArrays]] = [(None, original)]
        if int(row["fold"]) not in held_out:
            rng = patch_rng(params.seed, index)
            for _ in range(recipe.factor):
                drawn = sample_copy(recipe, rng, layout, value_range)
                copies.append((drawn, apply_copy(original, drawn, layout)))
        for copy_index, (drawn, patch) in enumerate(copies):
            images.append(patch.image)
            masks.append(patch.mask)
            agreement.append(patch.agreement)
            out_rows.append({**row, "source_index": int(index), "copy_index": copy_index,
                             "is_augmented": drawn is not None, "augmentation": augmentation_json(drawn)})
            if source.has_reader_masks:
                original_readers = arrays[READER_ARRAY][i]
                readers.append(original_readers if drawn is None else np.zeros_like(original_readers))
                if drawn is not None:
                    out_rows[-1][READER_COUNT_COLUMN] = 0
    return PatchBatch(np.stack(images).astype(np.float32), np.stack(masks).astype(bool),
                      np.stack(agreement).astype(np.float32), out_rows,
                      np.stack(readers).astype(bool) if source.has_reader_masks else None)


def _finalise(run: StageRun, source: PatchStore, chunks: Sequence[range], recipe: Recipe,
              params: AugmentParams) -> dict[str, Any]:
    parts = [_part_path(run, chunk) for chunk in chunks]
    missing = [p for p in parts if not p.exists()]
    if missing:
        raise InputFileError(missing[0], "journal says this chunk is done but its part file is missing; "
                                         "rerun with --force")
    attrs = {**run.provenance().as_attrs(), "params_json": json.dumps(params.fingerprint_params()),
             "source_store": str(source.path), "held_out_folds_json": json.dumps(sorted(set(params.held_out_folds)))}
    attrs = {**source_attrs(source), **attrs}
    n_out = write_patch_store(run.dir / STORE_NAME, source.info, parts, attrs=attrs)
    report = _report(run.dir / STORE_NAME, len(source), n_out, recipe, params)
    atomic_write_json(run.dir / REPORT_NAME, report)
    run.finish(outputs=[STORE_NAME, REPORT_NAME], summary={"n_sources": len(source), "n_patches": n_out})
    shutil.rmtree(run.dir / PARTS_DIR, ignore_errors=True)
    return report


def source_attrs(source: PatchStore) -> dict[str, Any]:
    """Attributes of the crop store worth keeping (its own provenance, renamed ``crop_*``)."""
    keep = {}
    for key, value in source.attrs.items():
        if key.startswith("nodulekit_"):
            keep["crop_" + key] = value
        elif key == "params_json":
            keep["crop_params_json"] = value
    return keep


def _report(path: Path, n_sources: int, n_out: int, recipe: Recipe, params: AugmentParams) -> dict[str, Any]:
    with open_patch_store(path) as store:
        folds = store.table["fold"]
        augmented = np.asarray(store.table["is_augmented"], dtype=bool)
    originals = Counter(int(f) for f in folds[~augmented])
    copies = Counter(int(f) for f in folds[augmented])
    return {"recipe": recipe.as_params(), "source": recipe.source, "seed": params.seed,
            "held_out_folds": sorted(set(params.held_out_folds)), "n_sources": n_sources, "n_patches": n_out,
            "n_copies": int(augmented.sum()),
            "folds": {str(f): {"originals": originals[f], "copies": copies[f]} for f in sorted(originals)}}
