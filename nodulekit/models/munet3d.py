"""3D MU-Net, the localization stage of Ni et al. 2022 (QIMS 12:292; papers/003_1acb948d5a20bb04.txt).

Section "3D network for localization": a 3D U-Net with the MSU-Net's multiscale input and 3D
gate units ("The 3D gate unit applied the attention mechanism by fusing 2 types of feature
maps. The multiscale strategy was applied to merge different scale inputs with that of the
top-down feature maps"), on 64^3 cubes at 1 mm (HU [-1000, 500] -> [0, 1]). It is
:class:`~nodulekit.models.msunet.MultiscaleGatedUNet` with ``nd = 3``, ungrouped, and a 1x1x1
conv to one nodule logit per voxel (a 2-class softmax, as eq. 4). It is trained on its own,
with eq. (11) minus the classification term (``log DL + 0.2 FL``); at inference its mask picks
the slices MSU-Net refines (:func:`nodulekit.models.two_stage.refine_cube`).

Parameter count (default widths): 25.77 M vs the paper's 25.97 M (section "Coarse stage
segmentation": 3D U-Net 25.88 M, MU-Net 25.97 M, i.e. the pyramid and gate units add only
0.09 M). The widths are not given; four levels of 64, 128, 256, 512 channels (three poolings:
64^3 -> 8^3) with the MSU-Net's decoder (rescale + 3x3x3 conv, gate, double conv) give a plain
3D U-Net of 25.67 M (25.88 M in the paper) and 0.10 M of pyramid and 1x1x1 gate units (0.09 M).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nodulekit.errors import NodulekitError
from nodulekit.models.blocks import conv_nd, init_he, round_to_multiple
from nodulekit.models.msunet import PAPER_003, MultiscaleGatedUNet, msunet_loss, wanted_outputs
from nodulekit.models.registry import InputGeometry, ModelSpec, OutputSpec, PhaseSpec, register_model

CONFIG_PATH = Path(__file__).parent / "configs" / "munet3d.toml"


class MUNet3D(nn.Module):
    """3D MU-Net (see the module docstring), from the ``model`` table of munet3d.toml.

    ``forward(image, outputs=None)``: ``image`` ``(B, 1, D, H, W)`` -> ``{"seg": (B, 1, D, H, W)}``
    nodule logits.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        cfg = dict(config)
        self.config = cfg
        widths = [round_to_multiple(c * float(cfg["width"]), 2) for c in cfg["channels"]]
        self.unet = MultiscaleGatedUNet(
            3, 1, widths, 1, bool(cfg["multiscale_input"]), bool(cfg["gate_units"]),
            int(cfg["gate_kernel"]), float(cfg["gate_ratio"]), str(cfg["pyramid_pool"]), str(cfg["upsample"]))
        self.seg_head = conv_nd(3)(widths[0], 1, 1)
        init_he(self)

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("seg",)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"seg_net": list(self.parameters())}

    def subnetworks(self) -> dict[str, list[nn.Module]]:
        return {"seg_net": [self.unet, self.seg_head]}

    @staticmethod
    def probabilities(outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logits -> probabilities: sigmoid of ``seg``."""
        return {name: torch.sigmoid(v) for name, v in outputs.items()}

    def forward(self, image: torch.Tensor, outputs: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        if image.ndim != 5 or image.shape[1] != 1:
            raise NodulekitError(f"MU-Net expects (B, 1, D, H, W) cubes, got {tuple(image.shape)}")
        wanted_outputs(outputs, self.output_names, "MU-Net")
        _, decoded = self.unet(image)
        return {"seg": self.seg_head(decoded)}


def build_munet3d(model_config: Mapping[str, Any]) -> MUNet3D:
    """Factory of the registry: the ``model`` table -> :class:`MUNet3D`."""
    return MUNet3D(model_config)


def munet3d_phases(config: Mapping[str, Any]) -> tuple[PhaseSpec, ...]:
    """One phase: MU-Net on the cubes with ``log DL + 0.2 FL`` (eq. 11 without CL)."""
    return (PhaseSpec("seg", ("seg_net",), {"seg": 1.0}, int(config["phases"]["seg"]["epochs"]),
                      "3D MU-Net localization network on 64^3 cubes: log DL + 0.2 FL (eq. 8, 9, 11).",
                      "'3D network for localization'; 'Loss function'; 'Coarse stage segmentation'"),)


def munet3d_output_shapes(config: Mapping[str, Any], batch: int,
                          patch_shape_px: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return {"seg": (batch, 1, *patch_shape_px)}


@register_model("munet3d")
def _munet3d_spec() -> ModelSpec:
    return ModelSpec(
        name="munet3d",
        factory=build_munet3d,
        paper=PAPER_003,
        tasks={"seg": "binary"},
        outputs={"seg": OutputSpec("seg", "(B, 1, D, H, W)", "nodule logits of the 64^3 cube")},
        geometry=InputGeometry(crop_preset="munet3d", patch_shape_px=(64, 64, 64), channels=1,
                               intensity="hu_-1000_500_to_01", model_shape_px=(64, 64, 64),
                               resized_by="none"),
        config_path=CONFIG_PATH,
        phases=munet3d_phases,
        loss=msunet_loss,
        output_shapes=munet3d_output_shapes,
        test_overrides={"width": 0.0625},
    )
