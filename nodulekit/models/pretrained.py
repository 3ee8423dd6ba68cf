"""Loading local pre-trained weights into MT-Net (sections 3.2.2 and 3.2.4: Coarse Seg-net
pre-trained on MS-COCO, Class-net on ImageNet; neither can be downloaded here, so both are
files the user provides). The key mapping is documented in docs/models.md.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from nodulekit.errors import NodulekitError

if TYPE_CHECKING:
    from nodulekit.models.mtnet import MTNet


@dataclass(frozen=True)
class PretrainedReport:
    """What :func:`load_pretrained` did: the file's naming, the keys loaded and ignored."""

    naming: str
    loaded: tuple[str, ...]
    ignored: tuple[str, ...]


_OWN_PREFIXES = ("seg.", "fine_layer.", "fine_head.", "class_net.")
_XCEPTION_HEAD = re.compile(r"^(fc|last_linear)\.(weight|bias)$")
_XCEPTION_DEPTHWISE = re.compile(r"^(block\d+\.rep\.\d+|conv3|conv4)\.conv1\.")


def map_imagenet_xception_key(key: str) -> str | None:
    """ImageNet Xception key (Cadene ``pretrainedmodels`` / timm ``legacy_xception``) -> ours.

    ``fc.*`` / ``last_linear.*`` (the 1000-class head) -> None (Class-net's 1-logit FC stays
    randomly initialised); ``<sepconv>.conv1.*`` (the depthwise conv of a separable conv) ->
    ``<sepconv>.depthwise.*``; every other key is kept; all get the prefix ``class_net.``.
    """
    if _XCEPTION_HEAD.match(key):
        return None
    return "class_net." + _XCEPTION_DEPTHWISE.sub(lambda m: f"{m.group(1)}.depthwise.", key)


def load_pretrained(model: MTNet, path: str | Path) -> PretrainedReport:
    """Load local weights into ``model`` (section 3.2.2 COCO / 3.2.4 ImageNet pre-training).

    ``torch.load(path, weights_only=True, map_location="cpu")``; a ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper and a ``module.`` prefix (DataParallel) are unwrapped. Two
    namings are recognised:

    - nodulekit's own (keys starting with ``seg.``, ``fine_layer.``, ``fine_head.``,
      ``class_net.``, e.g. a previous MT-Net run or a converted DeepLabv3+): loaded as they are
      into the sub-networks the file covers;
    - the ImageNet Xception (``conv1.weight``, ``blockN.rep.I.conv1.weight``, ...): mapped by
      :func:`map_imagenet_xception_key` into Class-net. Its first conv ``(32, 3, 3, 3)`` is
      adapted to Class-net's input: summed over RGB when ``ct_channels = 1``, and the coarse
      mask channel set to the mean of the RGB weights (section 3.2.4).

    Every sub-network the file touches must be covered completely: missing keys (except the
    re-initialised head and BatchNorm's ``num_batches_tracked``), unexpected keys and shape
    mismatches raise one ``NodulekitError`` that lists them.
    """
    state = _read_state_dict(Path(path))
    own = any(key.startswith(_OWN_PREFIXES) for key in state)
    naming = "nodulekit" if own else "imagenet-xception"
    mapped: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, tensor in state.items():
        target = key if own else map_imagenet_xception_key(key)
        if target is None:
            ignored.append(key)
        else:
            mapped[target] = tensor
    if not own and "class_net.conv1.weight" in mapped:
        mapped["class_net.conv1.weight"] = _adapt_first_conv(
            mapped["class_net.conv1.weight"], model.ct_channels, model.class_uses_coarse_mask)
    optional = set() if own else {"class_net.fc.weight", "class_net.fc.bias"}
    _check_keys(model, mapped, optional, Path(path), naming)
    model.load_state_dict(mapped, strict=False)
    return PretrainedReport(naming, tuple(mapped), tuple(ignored))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise NodulekitError(f"{path}: pretrained weights file not found")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # pickle errors, non-tensor objects, truncated files
        raise NodulekitError(f"{path}: not a weights-only PyTorch state dict ({exc})") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NodulekitError(f"{path}: expected a dict of tensors (a state dict)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _adapt_first_conv(weight_rgb: torch.Tensor, ct_channels: int, with_mask: bool) -> torch.Tensor:
    """ImageNet ``(C_out, 3, k, k)`` -> ``(C_out, ct_channels + with_mask, k, k)`` (section 3.2.4)."""
    if weight_rgb.shape[1] != 3:
        return weight_rgb  # not an RGB stem: left to the shape check
    ct = weight_rgb if ct_channels == 3 else weight_rgb.sum(dim=1, keepdim=True)
    if not with_mask:
        return ct
    return torch.cat([ct, weight_rgb.mean(dim=1, keepdim=True)], dim=1)


def _check_keys(model: nn.Module, mapped: Mapping[str, torch.Tensor], optional: set[str],
                path: Path, naming: str) -> None:
    expected = model.state_dict()
    covered = {key.split(".", 1)[0] for key in mapped}
    missing = [k for k in expected if k.split(".", 1)[0] in covered and k not in mapped
               and k not in optional and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in mapped if k not in expected]
    mismatched = [f"{k} {tuple(mapped[k].shape)} != {tuple(expected[k].shape)}"
                  for k in mapped if k in expected and mapped[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{path}: {naming} weights do not fit this MT-Net"]
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise NodulekitError("; ".join(parts))
