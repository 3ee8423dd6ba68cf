"""Training throughput of every registered model, and the data loader's share of a training step.

    python benchmarks/bench_train.py [--device cpu|cuda] [--batch 4] [--steps 3] [--width 1.0]
                                     [--models mtnet,dgnet] [--read memory|per-batch] [--threads N]

For each model: a synthetic patch store of its real geometry (discs / spheres, the label columns
its tasks read) in ``--workdir``, the model at ``--width`` (1.0 = the paper's network), its
default config with ``batch_size = --batch`` for every stream, and its first phase's step built
by ``nodulekit.training.from_spec`` (the engine's step: loss, backward, Adam step; bf16 autocast
on CUDA; the model's on-the-fly augmentation when its config has one). Two ways to feed the
same steps, interleaved step by step so a busy machine slows both alike:

- ``store``: the engine's data path -- the stream datasets of fold 0 (``stream_datasets``: in
  memory when they fit ``data.memory_budget_mb``, or ``--read per-batch``: each batch read from
  HDF5 by DataLoader workers), ``make_loader`` with the engine's sampler, ``to_device``;
- ``synthetic``: batches of the same keys, shapes and dtypes made once, already on the device.

Printed per model: images/s of each way, the loader's share of the store step time (time
waiting for the next batch, including the copy to the device, over the whole step) and the
overhead ``store / synthetic - 1`` (goal: <= 10 %). Times are sums over ``--steps`` steps after
one warm-up step, with ``torch.cuda.synchronize()`` on CUDA.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nodulekit.io.patch_store import PatchBatch, PatchGeometryInfo, write_patch_store  # noqa: E402
from nodulekit.models import get_spec, list_models  # noqa: E402
from nodulekit.training.api import build_config, on_the_fly_transform  # noqa: E402
from nodulekit.training.data import EpochBatchSampler, make_loader, to_device  # noqa: E402
from nodulekit.training.distributed import DistContext  # noqa: E402
from nodulekit.training.from_spec import build_phases, stream_datasets  # noqa: E402
from nodulekit.training.optim import build_optimizer  # noqa: E402
from nodulekit.training.phase import PhaseSettings, autocast, select_trainable, set_train_mode  # noqa: E402

#: The store each model reads: geometry, patch shape, label columns beside ``label``.
STORES: dict[str, tuple[str, tuple[int, ...], tuple[str, ...]]] = {
    "mtnet": ("2d", (64, 64), ()),
    "dgnet": ("2d", (128, 128), ()),
    "mtcnn": ("views9", (9, 64, 64), ()),
    "msunet": ("2.5d", (4, 64, 64), ("label_msunet_malignancy", "label_msunet_margin", "label_msunet_texture",
                                     "label_msunet_calcification")),
    "munet3d": ("3d", (64, 64, 64), ()),
    "cascade": ("3d", (32, 32, 32), ("label_mtcnn_malignancy",)),
}


def write_store(path: Path, preset: str, geometry: str, shape: tuple[int, ...], columns: tuple[str, ...],
                n: int) -> None:
    """``n`` patches of 4 patients in 2 folds: a disc (sphere) whose radius follows the 0/1 label."""
    rng = np.random.default_rng(0)
    spatial = shape if geometry == "3d" else shape[-2:]
    grids = np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in spatial], indexing="ij")
    dist = np.sqrt(sum(g ** 2 for g in grids))
    agreement = np.stack([np.broadcast_to((dist <= min(spatial) * (0.15 + 0.1 * (i % 2))).astype(np.float32), shape)
                          for i in range(n)])
    images = (agreement + 0.2 * rng.standard_normal(agreement.shape)).astype(np.float32)
    rows = [{"nodule_key": f"s{i % 4}/{i}", "patient_id": f"P{i % 4}", "series_uid": f"s{i % 4}", "nodule_id": i,
             "fold": i % 2, "label": i % 2, "kind": "nodule", "slice_offset": 0, "source_spacing_z_mm": 1.0,
             "source_spacing_y_mm": 1.0, "source_spacing_x_mm": 1.0, **{c: i % 2 for c in columns}}
            for i in range(n)]
    info = PatchGeometryInfo(geometry, shape, (1.0, 1.0, 1.0), (-1000.0, 400.0), "01", preset, 0.5)
    write_patch_store(path, info, [PatchBatch(images, agreement >= 0.5, agreement, rows)])


def synthetic_like(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A batch of the same keys, shapes and dtypes, made on ``device`` (random images, the same masks)."""
    out = {}
    for key, value in batch.items():
        value = value.to(device)
        out[key] = torch.rand_like(value) if key == "image" else value.clone()
    return out


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    spec = get_spec(name)
    geometry, shape, columns = STORES[name]
    workdir = args.workdir / name
    shutil.rmtree(workdir, ignore_errors=True)
    write_store(workdir / "crop" / spec.geometry.crop_preset / "patches.h5", spec.geometry.crop_preset, geometry,
                shape, columns, n=max(16, 4 * args.batch * (args.steps + 2)))
    config = build_config(workdir, name, config_overrides={"model": {"width": args.width}} if args.width != 1.0
                          and "width" in spec.default_config["model"] else {}, stores="crop")
    config["batch_size"] = ({s: args.batch for s in config["batch_size"]} if isinstance(config["batch_size"], dict)
                            else args.batch)
    if args.read == "per-batch":
        config["data"]["memory_budget_mb"] = 0
    phase = build_phases(spec, config)[0]
    settings = PhaseSettings.from_config(config, phase.name)
    torch.manual_seed(0)
    model = spec.factory(config["model"]).to(device)
    params = select_trainable(model, phase.trainable)
    optimizer = build_optimizer(params, settings.optimizer)
    transform = on_the_fly_transform(config, DistContext(device=device))
    train_sets, _ = stream_datasets(spec, config, workdir, fold=0)
    loaders = {}
    for stream in phase.streams:
        dataset = train_sets[stream]
        sampler = EpochBatchSampler(len(dataset), args.batch, shuffle=True, seed=0, drop_last=True)
        loaders[stream] = iter(make_loader(dataset, sampler, num_workers=int(config["data"]["num_workers"]),
                                           pin_memory=device.type == "cuda"))
    first = {s: next(loaders[s]) for s in phase.streams}
    synthetic = {s: synthetic_like(b, device) for s, b in first.items()}
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    set_train_mode(model, phase.frozen_eval)

    def step(batches: dict[str, Any]) -> None:
        if transform is not None and phase.augment:
            batches = {s: transform(b) for s, b in batches.items()}
        with autocast(device, settings.precision):
            losses = phase.step(model, batches)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        sync()

    def store_step() -> tuple[float, float]:
        sync()
        started = time.perf_counter()
        batches = {s: to_device(next(loaders[s]), device) for s in phase.streams}
        sync()
        waited = time.perf_counter() - started
        step(batches)
        return waited, time.perf_counter() - started

    def synthetic_step() -> float:
        started = time.perf_counter()
        step(dict(synthetic))
        return time.perf_counter() - started

    store_step(), synthetic_step()  # warm-up (allocator, autotuning, first-touch)
    data_s = store_s = synth_s = 0.0
    for _ in range(args.steps):
        waited, seconds = store_step()
        data_s, store_s = data_s + waited, store_s + seconds
        synth_s += synthetic_step()
    images = args.steps * args.batch * len(phase.streams)
    return {"model": name, "phase": phase.name, "patch": "x".join(map(str, shape)), "batch": args.batch,
            "store_ips": images / store_s, "synthetic_ips": images / synth_s, "data_share": data_s / store_s,
            "overhead": store_s / synth_s - 1, "in_memory": all(train_sets[s].in_memory for s in phase.streams),
            "augment": transform is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier (1.0 = the paper's network)")
    parser.add_argument("--models", default=",".join(list_models()))
    parser.add_argument("--read", default="memory", choices=("memory", "per-batch"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/nodulekit-bench-train"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                f" ({torch.get_num_threads()} threads)")
          + f", batch {args.batch}, {args.steps} steps after 1 warm-up, width {args.width}, reads: {args.read}")
    print(f"{'model':<9}{'phase':<10}{'patch':<11}{'store img/s':>12}{'synth img/s':>12}{'loader share':>13}"
          f"{'overhead':>10}  notes")
    for name in args.models.split(","):
        r = bench_model(name, args, device)
        notes = ", ".join(n for n, on in (("in memory", r["in_memory"]), ("on-the-fly aug", r["augment"])) if on)
        print(f"{r['model']:<9}{r['phase']:<10}{r['patch']:<11}{r['store_ips']:>12.2f}{r['synthetic_ips']:>12.2f}"
              f"{r['data_share']:>12.1%}{r['overhead']:>+10.1%}  {notes}", flush=True)
        if device.type == "cuda":
            print(f"{'':<9}peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
            torch.cuda.reset_peak_memory_stats(device)


if __name__ == "__main__":
    main()
