"""Model inference on patches: load a trained run, predict probabilities at the patch size.

::

    from nodulekit.inference import load_model, predict_patches
    model = load_model("nodulekit-work/runs/mtnet-fold0-20260101T000000Z")   # or .../model.pt
    pred = predict_patches(model, images)     # images (N, *model.patch_shape), as crop/<preset> stores them
    pred.seg_prob                             # (N, 64, 64) float32 in [0, 1], or None
    pred.class_prob                           # {"malignancy": (N,)} P(class 1); (N, C) for C > 2 classes

The same code serves every registered model; what differs is read from its
:class:`~nodulekit.models.registry.ModelSpec` and the run's config:

- **input**: the run's ``data.channels`` as training fed it: ``"add"`` puts a channel axis in
  front of the patch ((H, W) -> (1, H, W); 3D cubes likewise), ``"first"`` takes the patch's first
  axis as channels (2.5D slabs, the nine views). A model with a ``batch_inputs(batch)`` hook
  (cascade) gets its keyword arguments from it (mode ``gt_masked`` needs ``masks``).
- **outputs** (logits): the segmentation output ``seg`` (an output with spatial axes in
  ``spec.output_shapes``) and one output per classification task named after it
  (``malignancy``, ``nodule``, ``margin`` ..., ``cls``). Other outputs (MT-Net's ``seg_coarse``,
  MT-CNN's per-view logits and reconstruction) are not part of the predictions.
- **probabilities**: the module's own ``probabilities(outputs)`` when it has one (MSU-Net,
  MU-Net: sigmoid; cascade: the softmax's nodule channel), else sigmoid of a one-channel logit
  and softmax over two or more channels (for segmentation: the channel-1 probability). Binary
  tasks give P(class 1) as (N,); tasks of C > 2 classes give (N, C). MT-CNN's ``malignancy``
  is the logit of the AUC-weighted mean of its nine views (eq. 4), so its sigmoid is that mean.
- **patch size**: segmentation logits at another size than the patch (MT-Net works at 224 x 224)
  are resized to the patch bilinearly (trilinearly in 3D) before the sigmoid, as MT-Net's own
  ``output_resolution = "input"`` does.

Batches run under ``torch.inference_mode``, with bf16 autocast on CUDA (probabilities are
computed in float32). Two-stage inference (paper 003) is :func:`predict_two_stage`; ensembles
(cross-validation folds) are :func:`average_predictions`. Checkpoint checks:
:mod:`nodulekit.inference.checkpoints`.
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nodulekit.errors import NodulekitError
from nodulekit.inference.checkpoints import (CONFIG_TOML, check_same_config, check_state_dict,
                                             inference_model_table, locate, read_config, read_run_json, read_weights,
                                             trained_with)
from nodulekit.inference.fold_bn import fold_batchnorm
from nodulekit.io.patch_store import PatchGeometryInfo
from nodulekit.models.registry import ModelSpec, get_spec


@dataclass
class LoadedModel:
    """A trained model ready for inference (see :func:`load_model`).

    ``tasks``: the tasks it predicts, as the spec names them (``{"seg": "binary", "malignancy":
    "binary"}``); ``class_tasks``: ``{task: number of classes}``; ``patch_shape``: the patch
    shape ``predict_patches`` takes (the run's patch store's, else the crop preset's);
    ``store_info``: that store's geometry (spacing, HU window, normalisation; None when the
    store is not on this machine), so new scans can be cropped the same way.
    """

    name: str
    spec: ModelSpec
    config: dict[str, Any]
    module: nn.Module
    crop_preset: str
    patch_shape: tuple[int, ...]
    tasks: dict[str, str]
    run_dir: Path
    checkpoint: Path
    device: str
    channels: str
    class_tasks: dict[str, int]
    has_seg: bool
    needs_masks: bool
    meta: dict[str, Any] = field(default_factory=dict)
    store_info: PatchGeometryInfo | None = None
    coarse: LoadedModel | None = None  # msunet: its munet3d stage, set by nodulekit.inference.chain.load_two_stage

    @property
    def output_names(self) -> list[str]:
        """The outputs computed: ``seg`` (if any) and one per classification task."""
        return (["seg"] if self.has_seg else []) + list(self.class_tasks)

    @property
    def trained_with(self) -> str:
        """The nodulekit version the run was trained with."""
        return trained_with(self.meta)


@dataclass
class PatchPredictions:
    """Probabilities for N patches: ``seg_prob`` (N, *patch_shape) float32 in [0, 1] or None;
    ``class_prob`` ``{task: (N,) P(class 1) | (N, C)}`` float32."""

    seg_prob: np.ndarray | None
    class_prob: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        if self.seg_prob is not None:
            return len(self.seg_prob)
        return len(next(iter(self.class_prob.values()))) if self.class_prob else 0


@dataclass
class TwoStagePredictions(PatchPredictions):
    """:func:`predict_two_stage` for N cubes (a :class:`PatchPredictions` at the cube size):
    ``seg_prob`` (N, D, H, W) the fine stage's probabilities assembled per cube (0 on slices the
    coarse stage did not pick), ``class_prob`` {task: (N,) | (N, C)} the mean of each cube's slabs
    (NaN for a cube without slab); ``coarse_prob`` (N, D, H, W) the coarse stage's probabilities,
    ``n_slabs`` (N,) slabs refined per cube."""

    coarse_prob: np.ndarray | None = None
    n_slabs: np.ndarray | None = None


# -- loading --------------------------------------------------------------------------------------
def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise NodulekitError(f"device {device!r}: {error}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NodulekitError(f"device {device!r}: no CUDA GPU is visible (use device='cpu')")
    return dev


def load_model(path: Path, device: str = "cpu", *, model: str | None = None,
               fold_norms: bool = True) -> LoadedModel:
    """Load a trained model from a run folder or a checkpoint file inside one.

    Args:
        path: ``WORKDIR/runs/<run>`` (its final ``model.pt``) or a checkpoint in it
            (``model.pt``, ``checkpoints/model.pt``, ``checkpoints/best-<phase>.pt``, ``last.pt``).
        device: where the module goes (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        model: the model expected (e.g. ``"mtnet"``); a run of another model is an error.
        fold_norms: fold BatchNorm into the convolutions before it
            (:func:`~nodulekit.inference.fold_bn.fold_batchnorm`: same outputs up to float
            rounding, faster); the module is then for inference only.
    Returns:
        :class:`LoadedModel` in eval mode on ``device``. Errors (one line, ``NodulekitError``):
        not a run or checkpoint, missing config.toml, a run of another model, a checkpoint
        format this nodulekit does not read, weights that do not fit the model.
    """
    run_dir, weights = locate(Path(path))
    meta = read_run_json(run_dir)
    name = str(meta["model"])
    if model is not None and model != name:
        raise NodulekitError(f"{path}: a run of model '{name}', not '{model}'")
    config = read_config(run_dir)
    spec = get_spec(name)
    dev = _device(device)
    payload = read_weights(weights, meta)
    check_same_config(weights, payload.get("config"), config, run_dir)
    table = inference_model_table(config["model"])
    module = _module_with_weights(spec, table, payload["model"])
    if module is None:  # built the usual way: random initialisation, then the weights copied in
        try:
            module = spec.factory(table)
        except (KeyError, TypeError, ValueError) as error:
            raise NodulekitError(f"{run_dir / CONFIG_TOML}: cannot build model '{name}' from its [model] table "
                                 f"({type(error).__name__}: {error}); trained with nodulekit "
                                 f"{trained_with(meta)}?") from None
        check_state_dict(weights, payload["model"], module.state_dict(), name, meta)
        module.load_state_dict(payload["model"])
    module.to(dev).eval()
    if fold_norms:
        fold_batchnorm(module)
    store_info = _store_info(meta, run_dir)
    crop_preset = spec.geometry.crop_preset
    patch_shape = store_info.patch_shape if store_info is not None else _preset_patch_shape(crop_preset)
    seg, class_tasks = _outputs(spec, config)
    tasks = {**({"seg": str(spec.tasks.get("seg", "binary"))} if seg else {}),
             **{t: str(spec.tasks[t]) for t in class_tasks}}
    return LoadedModel(name=name, spec=spec, config=config, module=module, crop_preset=crop_preset,
                       patch_shape=tuple(patch_shape), tasks=tasks, run_dir=run_dir, checkpoint=weights,
                       device=str(dev), channels=str((config.get("data") or {}).get("channels", "add")),
                       class_tasks=class_tasks, has_seg=seg, needs_masks=_needs_masks(module), meta=meta,
                       store_info=store_info)


class _SkipInitOnMeta(torch.overrides.TorchFunctionMode):
    """Inside a meta-device build: the in-place fills of weight initialisation (``nn.init``'s
    ``normal_``, ``uniform_``, ``fill_`` ...) return their meta tensor untouched. On the meta device
    they compute nothing anyway, but each still runs through PyTorch's Python reference
    implementation (about 0.5 s for MT-Net's 222 convs); the weights are assigned afterwards."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in _INIT_FILLS and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


#: The in-place fills ``torch.nn.init`` and the models' own init code use.
_INIT_FILLS = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.fill_, torch.Tensor.zero_,
                         torch.Tensor.erfinv_, torch.Tensor.mul_, torch.Tensor.add_, torch.Tensor.clamp_,
                         torch.Tensor.copy_})


def _module_with_weights(spec: ModelSpec, model_table: Mapping[str, Any],
                         state: Mapping[str, torch.Tensor]) -> nn.Module | None:
    """The module built on the meta device (no memory, no random initialisation: MT-Net's load took
    1.3 s instead of 2.0 s, benchmarks/README.md) with the checkpoint's tensors assigned in; exactly what
    building it and loading the weights gives. None whenever that shortcut does not apply: the
    factory fails on meta tensors, the keys or shapes differ (the caller's usual path then names
    the problem), a tensor stays on meta (e.g. a non-persistent buffer) or assigning would untie
    shared parameters."""
    try:
        with torch.device("meta"), _SkipInitOnMeta():
            module = spec.factory(model_table)
    except Exception:  # noqa: BLE001 - any failure here means "build it the usual way"
        return None
    expected = module.state_dict()
    if set(expected) != set(state) or any(tuple(expected[k].shape) != tuple(state[k].shape) for k in state):
        return None
    n_parameters = len(list(module.parameters()))
    module.load_state_dict(state, assign=True)
    tensors = [*module.parameters(), *module.buffers()]
    if any(t.is_meta for t in tensors) or len(list(module.parameters())) != n_parameters:
        return None
    return module


def _outputs(spec: ModelSpec, config: Mapping[str, Any]) -> tuple[bool, dict[str, int]]:
    """(has a ``seg`` output, {classification task: classes}) from ``spec.output_shapes``."""
    shapes = spec.output_shapes(config, 1, tuple(spec.geometry.patch_shape_px))
    seg = "seg" in shapes and len(shapes["seg"]) > 2
    class_tasks = {}
    for task in spec.tasks:
        shape = shapes.get(task)
        if task != "seg" and shape is not None and len(shape) <= 2:
            class_tasks[task] = int(shape[1]) if len(shape) == 2 and shape[1] > 1 else 2
    return seg, class_tasks


def _needs_masks(module: nn.Module) -> bool:
    """Whether the module's ``batch_inputs`` hook asks for the ground-truth mask (cascade gt_masked)."""
    hook = getattr(module, "batch_inputs", None)
    if not callable(hook):
        return False
    try:
        hook({"image": None})
    except KeyError:
        return True
    return False


def _store_entries(meta: Mapping[str, Any]) -> Iterator[str]:
    """The run's training stores (they define what it takes), then its ``eval_store``."""
    stores = meta.get("stores") or {}
    for value in (stores.values() if isinstance(stores, Mapping) else stores):
        text = value.get("path") if isinstance(value, Mapping) else value
        if text:
            yield str(text)
    if meta.get("eval_store"):
        yield str(meta["eval_store"])


def _store_info(meta: Mapping[str, Any], run_dir: Path) -> PatchGeometryInfo | None:
    """The geometry of the run's (first readable) patch store, or None when none is on this machine."""
    import h5py

    workdir = run_dir.parent.parent
    for text in _store_entries(meta):
        path = Path(text)
        candidates = [path] if path.is_absolute() else [workdir / path, run_dir / path]
        for candidate in candidates:
            candidate = candidate if candidate.suffix == ".h5" else candidate / "patches.h5"
            if candidate.is_file():
                try:
                    with h5py.File(candidate, "r") as f:
                        return PatchGeometryInfo.from_attrs(f.attrs)
                except (OSError, KeyError, ValueError):
                    continue
    return None


def _preset_patch_shape(preset: str) -> tuple[int, ...]:
    from nodulekit.patches.presets import PRESETS

    if preset not in PRESETS:
        raise NodulekitError(f"crop preset '{preset}' is unknown and the run's patch store is not here; "
                             "cannot tell the patch shape")
    return tuple(PRESETS[preset].patch_shape)


# -- prediction -----------------------------------------------------------------------------------
def predict_patches(model: LoadedModel, images: np.ndarray, *, batch_size: int = 32, device: str | None = None,
                    masks: np.ndarray | None = None) -> PatchPredictions:
    """Probabilities of ``model`` for ``images`` (N, *model.patch_shape), as its crop preset stores them.

    Args:
        batch_size: patches per forward pass. device: move the model there first (default: where
            it is). masks: ground-truth masks (N, *patch_shape), only for models that take them
            (``model.needs_masks``: cascade in mode ``gt_masked``).
    Returns:
        :class:`PatchPredictions`: ``seg_prob`` (N, *patch_shape) float32 in [0, 1] (None when the
        model does not segment), ``class_prob`` {task: (N,) P(class 1) | (N, C)}.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.shape[1:] != tuple(model.patch_shape):
        raise NodulekitError(f"{model.name}: images have shape {images.shape[1:]} per patch, the model takes "
                             f"{tuple(model.patch_shape)} (crop preset '{model.crop_preset}')")
    if batch_size < 1:
        raise NodulekitError(f"batch_size must be >= 1, got {batch_size}")
    if model.needs_masks and masks is None:
        raise NodulekitError(f"{model.name} (model.mode = {model.config['model'].get('mode')!r}) classifies the CT "
                             "masked by the ground truth: pass masks=")
    if masks is not None and np.shape(masks) != images.shape:
        raise NodulekitError(f"masks have shape {np.shape(masks)}, the images {images.shape}")
    dev = _device(device) if device is not None else torch.device(model.device)
    if str(dev) != model.device:
        model.module.to(dev)
        model.device = str(dev)
    n = len(images)
    seg = np.empty((n, *model.patch_shape), dtype=np.float32) if model.has_seg else None
    probs = {t: np.empty((n,) if c == 2 else (n, c), dtype=np.float32) for t, c in model.class_tasks.items()}
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x = torch.from_numpy(images[start:stop]).to(dev)
            m = None if masks is None else torch.from_numpy(np.asarray(masks[start:stop], dtype=np.float32)).to(dev)
            seg_b, cls_b = _probabilities(model, _forward(model, x, m))
            if seg is not None:
                seg[start:stop] = seg_b.cpu().numpy()
            for task, values in cls_b.items():
                probs[task][start:stop] = values.cpu().numpy()
    return PatchPredictions(seg, probs)


def _autocast(dev: torch.device) -> contextlib.AbstractContextManager[Any]:
    if dev.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _takes_outputs(module: nn.Module) -> bool:
    try:
        return "outputs" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def _forward(model: LoadedModel, x: torch.Tensor, mask: torch.Tensor | None) -> Mapping[str, torch.Tensor]:
    """One forward pass: the input laid out as in training, only the outputs predicted."""
    if model.channels == "add":
        x = x.unsqueeze(1)
        mask = None if mask is None else mask.unsqueeze(1)
    batch: dict[str, Any] = {"image": x}
    if mask is not None:
        batch["mask"] = mask
    hook = getattr(model.module, "batch_inputs", None)
    kwargs = dict(hook(batch)) if callable(hook) else {"image": x}
    if _takes_outputs(model.module):
        kwargs["outputs"] = model.output_names
    with _autocast(x.device):
        return model.module(**kwargs)


def _probabilities(model: LoadedModel, outputs: Mapping[str, torch.Tensor]
                   ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """(seg probabilities (B, *patch_shape), {task: (B,) | (B, C)}) from the logits (see the module doc)."""
    logits = {name: outputs[name].float() for name in model.output_names}
    if model.has_seg:
        logits["seg"] = _resize(logits["seg"], model)
    own = getattr(model.module, "probabilities", None)
    probs = dict(own(logits)) if callable(own) else {}
    seg = None
    if model.has_seg:
        seg = probs.get("seg")
        if seg is None:
            seg = _channel_probability(logits["seg"], model.channels)
        if model.channels == "add" and seg.ndim == len(model.patch_shape) + 2:
            seg = seg[:, 0] if seg.shape[1] == 1 else seg[:, -1]
        seg = seg.clamp(0.0, 1.0)
    classes = {}
    for task in model.class_tasks:
        value = probs.get(task)
        if value is None:
            raw = logits[task]
            value = torch.sigmoid(raw) if raw.ndim == 1 or raw.shape[1] == 1 else torch.softmax(raw, dim=1)
        if value.ndim == 2 and value.shape[1] == 1:
            value = value[:, 0]
        elif value.ndim == 2 and value.shape[1] == 2:
            value = value[:, 1]
        classes[task] = value.clamp(0.0, 1.0)
    return seg, classes


def _channel_probability(logits: torch.Tensor, channels: str) -> torch.Tensor:
    """Sigmoid of one-channel (or per-slice, ``channels = "first"``) logits; the channel-1 softmax otherwise."""
    if channels == "first" or logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)[:, 1:2]


def _resize(logits: torch.Tensor, model: LoadedModel) -> torch.Tensor:
    """Segmentation logits (B, C, *spatial) at the patch's spatial size (bilinear / trilinear)."""
    target = tuple(model.patch_shape[1:] if model.channels == "first" else model.patch_shape)
    if tuple(logits.shape[2:]) == target:
        return logits
    if len(target) not in (2, 3) or logits.ndim != len(target) + 2:
        raise NodulekitError(f"{model.name}: segmentation output {tuple(logits.shape)} cannot be resized to the "
                             f"patch {tuple(model.patch_shape)}")
    mode = "bilinear" if len(target) == 2 else "trilinear"
    return F.interpolate(logits, size=target, mode=mode, align_corners=False)


# -- ensembles ------------------------------------------------------------------------------------
def average_predictions(predictions: Sequence[PatchPredictions]) -> PatchPredictions:
    """The mean of several models' predictions of the same patches (e.g. one model per
    cross-validation fold): seg and class probabilities averaged element-wise."""
    predictions = list(predictions)
    if not predictions:
        raise NodulekitError("average_predictions: no predictions to average")
    first = predictions[0]
    for k, other in enumerate(predictions[1:], start=1):
        if (first.seg_prob is None) != (other.seg_prob is None) or (
                first.seg_prob is not None and first.seg_prob.shape != other.seg_prob.shape):
            raise NodulekitError(f"average_predictions: prediction {k} has other segmentation outputs than "
                                 "prediction 0")
        if set(first.class_prob) != set(other.class_prob) or any(
                first.class_prob[t].shape != other.class_prob[t].shape for t in first.class_prob):
            raise NodulekitError(f"average_predictions: prediction {k} has other tasks or shapes than prediction 0 "
                                 f"({sorted(other.class_prob)} vs {sorted(first.class_prob)})")
    seg = None
    if first.seg_prob is not None:
        seg = np.mean([p.seg_prob for p in predictions], axis=0, dtype=np.float64).astype(np.float32)
    classes = {t: np.mean([p.class_prob[t] for p in predictions], axis=0, dtype=np.float64).astype(np.float32)
               for t in first.class_prob}
    return PatchPredictions(seg, classes)


# -- two stages (paper 003) -----------------------------------------------------------------------
def predict_two_stage(coarse: LoadedModel, fine: LoadedModel, cubes: np.ndarray, *, batch_size: int = 8,
                      device: str | None = None, threshold: float = 0.5, fallback: str = "centre"
                      ) -> TwoStagePredictions:
    """Paper 003's coarse-to-fine inference on cubes (N, D, H, W), e.g. munet3d -> msunet on 64^3.

    The coarse model's mask picks each cube's ROI slices (probability > ``threshold``; none:
    ``fallback`` ``"centre"`` refines the central slab, ``"none"`` nothing); the fine model
    refines slabs of its depth cut from the cube (fewer ROI slices than the depth: resampled),
    and the slab probabilities are assembled back into one 3D mask per cube
    (:func:`nodulekit.models.two_stage.refine_cubes`). Both models must share the grid and the
    intensity convention (the ``munet3d`` and ``msunet`` presets do: 1 mm, HU [-1000, 500] -> [0, 1]).
    ``batch_size``: cubes per coarse forward pass (slabs go 8x as many at a time, at most 64).
    """
    from nodulekit.models.two_stage import nodule_plans, refine_cubes

    cubes = np.asarray(cubes, dtype=np.float32)
    _check_stages(coarse, fine, cubes)
    coarse_prob = predict_patches(coarse, cubes, batch_size=batch_size, device=device).seg_prob
    assert coarse_prob is not None
    depth = int(fine.patch_shape[0])

    def refine(slabs: torch.Tensor) -> dict[str, torch.Tensor]:
        pred = predict_patches(fine, slabs.numpy(), batch_size=min(8 * batch_size, 64), device=device)
        out = {"seg": torch.from_numpy(pred.seg_prob)}
        for task, values in pred.class_prob.items():
            out[task] = torch.from_numpy(np.stack([1 - values, values], axis=1) if values.ndim == 1 else values)
        return out

    result = refine_cubes(torch.from_numpy(cubes), torch.from_numpy(coarse_prob), refine, depth=depth,
                          threshold=threshold, fallback=fallback)
    n = len(cubes)
    classes = {}
    for task, n_classes in fine.class_tasks.items():
        values = result[task].numpy() if task in result else np.full((n, n_classes), np.nan, dtype=np.float32)
        classes[task] = (values[:, 1] if n_classes == 2 else values).astype(np.float32)
    n_slabs = np.array([len(nodule_plans(torch.from_numpy(p), depth, threshold, fallback)) for p in coarse_prob],
                       dtype=np.int64)
    return TwoStagePredictions(result["seg"].numpy().astype(np.float32), classes, coarse_prob=coarse_prob,
                               n_slabs=n_slabs)


def _check_stages(coarse: LoadedModel, fine: LoadedModel, cubes: np.ndarray) -> None:
    if not coarse.has_seg or len(coarse.patch_shape) != 3 or coarse.channels != "add":
        raise NodulekitError(f"coarse stage '{coarse.name}' must segment 3D cubes (e.g. munet3d)")
    if not fine.has_seg or fine.channels != "first" or len(fine.patch_shape) != 3:
        raise NodulekitError(f"fine stage '{fine.name}' must segment 2.5D slabs (e.g. msunet)")
    if cubes.ndim != 4 or cubes.shape[1:] != tuple(coarse.patch_shape):
        raise NodulekitError(f"cubes have shape {cubes.shape[1:]} each, '{coarse.name}' takes {coarse.patch_shape}")
    if tuple(fine.patch_shape[1:]) != tuple(coarse.patch_shape[1:]):
        raise NodulekitError(f"'{fine.name}' slabs are {fine.patch_shape[1:]} in-plane, '{coarse.name}' cubes "
                             f"{coarse.patch_shape[1:]}: the stages must share the in-plane grid")
    a, b = coarse.spec.geometry.intensity, fine.spec.geometry.intensity
    if a != b:
        raise NodulekitError(f"'{coarse.name}' ({a}) and '{fine.name}' ({b}) expect other intensities")
