"""Benchmark augmentation: on-the-fly :class:`BatchAugment` on a device, and offline copies (numpy).

Run:  python benchmarks/bench_augment.py [--device cpu|cuda] [--repeats 5] [--skip-offline]

On the fly: batches of images (N, 1, 224, 224) (2D, MT-Net's input size) and (N, 1, 64, 64, 64)
(3D cubes) with their bool masks and float agreement maps, through three configurations:
``rigid`` (flip p 0.5 per axis + rot90 p 0.5), ``paper004`` (the cascade preset: flip on 3 axes,
rot90, noise) and ``all`` (flip, rot90, affine p 1, noise p 1: every sample resampled, the worst
case). Reference: a plain copy of the same batch (images, masks, agreement) on the same device
into preallocated tensors (``copy_``, memory-bandwidth bound); ``x copy`` says how many batch copies
one augmentation costs. ``clone()`` (allocation + copy) is printed too: on the CPU it swings with
the allocator (fresh pages fault in), so it is not the ratio's base. Times are the minimum of
``--repeats`` runs after a warm-up, with ``torch.cuda.synchronize()`` on CUDA.

Offline: one augmented copy (sample + apply) per preset recipe on its geometry, patches/s on one
core, against ``np.copy`` of the three arrays.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nodulekit.patches.augment import RECIPES, PatchArrays, apply_copy, patch_layout, sample_copy  # noqa: E402
from nodulekit.patches.gpu_augment import PRESETS, BatchAugment  # noqa: E402

CONFIGS = {
    "rigid": {"flip": {"p": 0.5}, "rot90": {"p": 0.5}},
    "paper004": PRESETS["cascade"],
    "all": {"flip": {"p": 0.5}, "rot90": {"p": 0.5}, "affine": {"p": 1.0}, "noise": {"p": 1.0}},
}
BATCHES = {"2d": (32, 1, 224, 224), "3d": (8, 1, 64, 64, 64)}


def best_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def on_the_fly(device: torch.device, repeats: int) -> None:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"on the fly, device {device} ({torch.get_num_threads()} CPU threads)")
    print(f"{'batch':<22}{'config':<10}{'patches/s':>10}{'ms/batch':>10}{'copy ms':>9}{'clone ms':>9}{'x copy':>8}")
    for name, shape in BATCHES.items():
        g = torch.Generator(device=device).manual_seed(0)
        images = torch.rand(shape, generator=g, device=device)
        masks = images[:, 0] > 0.5
        agreement = images[:, 0].clone()
        batch = (images, masks, agreement)
        buffers = tuple(torch.empty_like(t) for t in batch)
        copy = best_time(lambda: [b.copy_(t) for b, t in zip(buffers, batch)], repeats * 4, sync)
        clone = best_time(lambda: [t.clone() for t in batch], repeats * 4, sync)
        for config_name, config in CONFIGS.items():
            aug = BatchAugment(config, seed=0)
            if name == "2d" and config_name == "paper004":
                aug = BatchAugment({**config, "flip": {"p": 0.5, "axes": ["y", "x"]}}, seed=0)
            t = best_time(lambda: aug(images, masks, agreement=agreement), repeats, sync)
            label = f"{name} {tuple(shape)}"
            print(f"{label:<22}{config_name:<10}{shape[0] / t:>10.0f}{t * 1e3:>10.2f}{copy * 1e3:>9.2f}"
                  f"{clone * 1e3:>9.2f}{t / copy:>8.0f}")


OFFLINE = [  # (preset recipe, geometry, patch shape, spacing)
    ("mtnet", "2d", (64, 64), None),
    ("mtcnn", "views9", (9, 64, 64), (1.0, 1.0, 1.0)),
    ("msunet", "2.5d", (4, 64, 64), (1.0, 1.0, 1.0)),
    ("msunet", "3d", (64, 64, 64), (1.0, 1.0, 1.0)),
    ("cascade", "3d", (32, 32, 32), (1.0, 0.7, 0.7)),
]


def offline(repeats: int, n_copies: int = 40) -> None:
    print(f"\noffline copies (numpy / scipy, one process), {n_copies} copies per row")
    print(f"{'recipe':<9}{'geometry':<9}{'patch':<14}{'copies/s':>10}{'copy us':>9}{'x copy':>8}")
    rng = np.random.default_rng(0)
    for recipe, geometry, shape, spacing in OFFLINE:
        layout = patch_layout(geometry, shape, spacing, 0.0, 0.5)
        image = rng.random(shape, dtype=np.float32)
        patch = PatchArrays(image, image > 0.5, image.copy())
        params = [sample_copy(RECIPES[recipe], np.random.default_rng(i), layout) for i in range(n_copies)]
        t = best_time(lambda: [apply_copy(patch, p, layout) for p in params], repeats, lambda: None) / n_copies
        copy = best_time(lambda: (patch.image.copy(), patch.mask.copy(), patch.agreement.copy()),
                         repeats * 20, lambda: None)
        print(f"{recipe:<9}{geometry:<9}{str(shape):<14}{1 / t:>10.0f}{copy * 1e6:>9.1f}{t / copy:>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-offline", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    on_the_fly(device, args.repeats)
    if not args.skip_offline:
        offline(args.repeats)


if __name__ == "__main__":
    main()
