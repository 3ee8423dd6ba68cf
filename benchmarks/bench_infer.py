"""``nodulekit infer`` speed: all nodules of one scan, per model, at the models' default widths.

    python benchmarks/bench_infer.py [--models mtnet,dgnet] [--patients LIDC-IDRI-0005,...] [--device cpu]
                                     [--repeats 2] [--batch-size 16] [--precision auto] [--threads N]

Goal (issue 9): all nodules of one scan in under 10 s on the 2-core CPU for the 2D models
(mtnet, dgnet); a recorded figure on a GPU when one is available (``--device cuda``).

Setup (cached in ``--workdir``): a full-size LIDC phantom (512 x 512, every slice of the real
scans) of ``--patients``: by default three scans with three outlined nodules each, the mean of
the LIDC scans with nodules, at 2.5, 1.25 and 0.625 mm slices (the 2D models look at every
nodule slice, so thin slices cost more); and per model a run folder with randomly initialised
weights at the default width (speed does not depend on the weights).

Measured per scan: ``infer`` on every outlined nodule of the scan's LIDC XML (the 50 % consensus
centroids), ``--repeats`` times after one warm-up, median of: load (DICOM series), predict
(patches + model + masks back in the scan), write (NIfTI, DICOM-SEG, tables), other (loading the
model's weights, finding the series) and the whole call. Random weights
segment at random, so the 2D slice growth would stop at once or run to its cap; to make the
number of patches what a trained model would need, the benchmark replaces the *masks* a model
returns by CT > -300 HU (the phantom's nodules; the model itself still runs in full on every
patch) and prints the number of patches.

Bound: the benchmark counts each model's arithmetic per patch (convolutions and linear layers,
forward hooks) and measures this device's fastest fp32 pointwise convolution (the layer that
dominates both models); ``bound s`` = patches x GFLOP per patch / that rate is the model time that
no implementation of the same arithmetic can beat here. Where ``bound s`` alone exceeds the goal,
the goal needs fewer patches or another device, not faster code.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

#: Three outlined nodules each (all reader counts; the LIDC mean is 3.0) at 2.5, 1.25, 0.625 mm slices.
PATIENTS = "LIDC-IDRI-0005,LIDC-IDRI-0010,LIDC-IDRI-0308"


def prepare_phantom(workdir: Path, patients: list[str]) -> Path:
    from nodulekit.phantom import write_phantom

    root = workdir / "lidc"
    if not (root / "phantom.json").exists():
        shutil.rmtree(root, ignore_errors=True)
        print(f"writing a full-size phantom of {len(patients)} scans to {root} ...", flush=True)
        write_phantom(root, patients=patients, seed=0)
    return root


def random_run(workdir: Path, model: str) -> Path:
    """A run folder of ``model`` at its default config with random weights (written once)."""
    import torch

    from nodulekit.models.registry import get_spec
    from nodulekit.training.checkpoint import save_checkpoint
    from nodulekit.training.config import resolve_config, save_config
    from nodulekit.training.runs import CONFIG_TOML, RunRecord, environment, utc_now

    run_dir = workdir / "runs" / f"{model}-random"
    if (run_dir / "model.pt").is_file():
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    spec = get_spec(model)
    config = resolve_config([spec.default_config])
    save_config(run_dir / CONFIG_TOML, config)
    torch.manual_seed(0)
    module = spec.factory(config["model"])
    RunRecord(run_dir).update(model=model, fold=0, status="complete", started_utc=utc_now(), finished_utc=utc_now(),
                              stores={}, config=CONFIG_TOML, environment=environment())
    save_checkpoint(run_dir / "model.pt", {"model": module.state_dict(), "phase": "random", "epoch": 0, "step": 0,
                                           "metric": None, "value": None, "config": config})
    return run_dir


def model_gflop_per_patch(run: Path) -> float:
    """Multiply-adds x 2 of the convolutions and linear layers for one patch, counted with forward
    hooks on the loaded (BatchNorm-folded) module: the arithmetic no implementation can skip."""
    import torch

    from nodulekit.inference.predict import load_model, predict_patches

    model = load_model(run)
    flops = [0]

    def count(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Linear):
            flops[0] += 2 * output.numel() * module.in_features
        else:
            taps = int(np.prod(module.kernel_size)) * (module.in_channels // module.groups)
            flops[0] += 2 * output.numel() * taps

    layers = (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
    hooks = [m.register_forward_hook(count) for m in model.module.modules() if isinstance(m, layers)]
    predict_patches(model, np.zeros((1, *model.patch_shape), np.float32), batch_size=1)
    for hook in hooks:
        hook.remove()
    return flops[0] / 1e9


def peak_conv_gflops(device: str, repeats: int = 5) -> float:
    """The best fp32 throughput (GFLOP/s) of this device on the kind of layer that dominates the 2D
    models (pointwise convs, channels-last, a wave-sized batch of 6), over a few of their shapes:
    the rate no layer of the models runs faster than, so patches x GFLOP / this rate bounds the model time."""
    import torch

    best = 0.0
    for channels, size in ((728, 28), (1024, 14), (256, 56)):
        conv = torch.nn.Conv2d(channels, channels, 1, bias=False).to(device).eval()
        x = torch.randn(6, channels, size, size, device=device).to(memory_format=torch.channels_last)
        conv = conv.to(memory_format=torch.channels_last)
        flop = 2 * 6 * size * size * channels * channels
        with torch.inference_mode():
            conv(x)
            for _ in range(repeats):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(5):
                    conv(x)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                best = max(best, 5 * flop / (time.perf_counter() - start) / 1e9)
    return best


def load_seconds(run: Path, repeats: int = 3) -> tuple[float, float]:
    """Median seconds of ``load_model(run, fold_norms=False)`` (build + weights) and of folding its
    BatchNorms (``fold_batchnorm``), after one warm-up (page cache)."""
    from nodulekit.inference.fold_bn import fold_batchnorm
    from nodulekit.inference.predict import load_model

    load_model(run)
    loads, folds = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        model = load_model(run, fold_norms=False)
        loaded = time.perf_counter()
        fold_batchnorm(model.module)
        loads.append(loaded - start)
        folds.append(time.perf_counter() - loaded)
    return statistics.median(loads), statistics.median(folds)


def emulate_trained_masks() -> None:
    """Masks as a trained model would give them (CT > -300 HU), after running the model in full."""
    import nodulekit.inference.predict as engine
    from nodulekit.inference.nodules import geometry_of
    from nodulekit.patches.crop import window_hu

    real = engine.predict_patches

    def predict(model, images, **kwargs):
        out = real(model, images, **kwargs)
        if out.seg_prob is not None:
            g = geometry_of(model)
            threshold = float(window_hu(np.array([-300.0]), g.hu_window, g.normalize)[0])
            out.seg_prob = (np.asarray(images) > threshold).astype(np.float32).reshape(out.seg_prob.shape)
        return out

    engine.predict_patches = predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mtnet,dgnet")
    parser.add_argument("--patients", default=PATIENTS)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/nodulekit-bench-infer"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", default="auto", help="auto | fp32 | bf16 (infer's --precision)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    from nodulekit.inference.infer import infer
    from nodulekit.inference.inputs import NoduleSpec, find_scans

    if args.threads:
        torch.set_num_threads(args.threads)
    root = prepare_phantom(args.workdir, args.patients.split(","))
    refs = find_scans(root)
    emulate_trained_masks()
    from nodulekit.inference.nodules import resolve_precision

    precision = resolve_precision(args.precision, args.device)
    peak = peak_conv_gflops(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, batch "
          f"{args.batch_size}, precision {precision}; {len(refs)} scans; fastest pointwise conv here "
          f"{peak:.0f} GFLOP/s (fp32)")
    print("bound s: patches x GFLOP per patch / that rate, the least model time any implementation of the same "
          "arithmetic needs here (fp32; bf16 is not bounded by it)")
    print(f"{'model':8} {'patient':15} {'slice mm':>8} {'nodules':>7} {'patches':>7} {'load s':>7} "
          f"{'predict s':>9} {'bound s':>7} {'write s':>7} {'other s':>7} {'total s':>7}  goal < 10 s (2D)")
    for model in args.models.split(","):
        run = random_run(args.workdir, model)
        gflop = model_gflop_per_patch(run)
        load_s, fold_s = load_seconds(run)
        print(f"{model}: {gflop:.1f} GFLOP per patch; load_model {load_s + fold_s:.2f} s "
              f"(build + weights {load_s:.2f} s, BatchNorm fold {fold_s:.2f} s)")
        for ref in refs:
            spec = NoduleSpec.parse(nodules=ref.series.xml_files[0])
            out = args.workdir / "out" / model
            times = []
            for repeat in range(args.repeats + 1):
                start = time.perf_counter()
                result = infer([run], ref.path, spec, out, device=args.device, batch_size=args.batch_size,
                               precision=args.precision)
                total = time.perf_counter() - start
                if repeat:  # the first run warms caches (imports, page cache, oneDNN kernels)
                    times.append((result.timings["load"], result.timings["predict"], result.timings["export"], total))
            load, predict, write, total = (statistics.median(t[i] for t in times) for i in range(4))
            scan = result.scans[0]
            verdict = "" if model not in ("mtnet", "dgnet") else ("ok" if total < 10 else "over")
            print(f"{model:8} {scan['patient_id']:15} {scan['spacing_zyx_mm'][0]:8.3g} {scan['n_nodules']:7d} "
                  f"{scan['n_patches']:7d} {load:7.2f} {predict:9.2f} {scan['n_patches'] * gflop / peak:7.2f} "
                  f"{write:7.2f} "
                  f"{total - load - predict - write:7.2f} "
                  f"{total:7.2f}  {verdict}", flush=True)


if __name__ == "__main__":
    main()
