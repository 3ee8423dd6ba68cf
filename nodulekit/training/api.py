"""``train()``: the library entry point of ``nodulekit train`` (the CLI only parses and prints).

    result = train(workdir, "mtnet", fold=0, config_overrides=["optimizer.lr=3e-4"], epochs=1, max_steps=5)
    result.run_dir, result.status, result.best, result.model_path
    results = train_folds(workdir, "mtnet", "all", epochs=1)      # cross-validation, fold by fold

A new run resolves the config (engine defaults < the model's TOML < ``config_files`` <
``config_overrides`` < ``epochs`` / ``max_steps`` / ``compile``; see
:mod:`nodulekit.training.config`), checks it follows the convention
(:func:`nodulekit.training.config.check_config`), picks the patch stores (:func:`default_stores`),
fills the model's phase defaults (:func:`nodulekit.training.from_spec.fill_phase_defaults`),
creates ``WORKDIR/runs/<model>-fold<k>-<UTC>/`` with ``config.toml`` and ``run.json``, then trains
in one process, N spawned processes (``--gpus N``, or ``cpu_processes`` on the CPU), or the
processes torchrun started. ``resume=RUN`` continues that run from its ``checkpoints/last.pt``
with its own config.toml (only ``max_steps`` may change; it does not alter what a step does).

Patch stores (``data.stores`` when the config names none): ``stores="crop"`` ->
``crop/<preset>``; ``"augment"`` -> ``augment/<preset>`` (originals + offline copies);
``"both"`` -> both (the augmented store's originals are skipped: :mod:`nodulekit.training.data`);
``None`` -> by ``augmentation.mode``: ``offline`` / ``both`` take ``augment/<preset>`` when it
exists, else ``crop/<preset>`` with a note in run.json; ``on_the_fly`` / ``none`` take
``crop/<preset>``. A missing store is a one-line error naming the command that makes it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodulekit.errors import NodulekitError
from nodulekit.training.config import Config, check_config, load_toml, resolve_config, save_config
from nodulekit.training.runs import (CONFIG_TOML, FINAL_MODEL, LOG_CSV, RunRecord, device_record, environment,
                                     new_run_dir, read_log_csv, read_run_json, resolve_run, store_record, utc_now)

STORE_CHOICES = ("crop", "augment", "both")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class RunResult:
    """What a training run produced (read back from its run.json)."""

    run_dir: Path
    model: str
    fold: int | None
    status: str
    steps: int
    resumed: bool
    best: dict[str, Any] = field(default_factory=dict)
    model_path: Path | None = None
    log_csv: Path | None = None
    notes: tuple[str, ...] = ()
    post_training: dict[str, Any] = field(default_factory=dict)
    last_row: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run_dir.name

    def final_metrics(self) -> dict[str, float]:
        """The last epoch's validation metrics (``val_*`` of the last row of log.csv)."""
        out = {}
        for key, value in self.last_row.items():
            if key.startswith("val_") and value not in ("", None):
                out[key] = float(value)
        return out


@dataclass(frozen=True)
class TrainJob:
    """What every training process needs (picklable: spawned processes receive it)."""

    workdir: Path
    run_dir: Path
    model: str
    fold: int | None
    resume: bool
    progress: bool


def train(workdir: Path, model_name: str | None, *, fold: int | None = 0,
          config_overrides: Sequence[str] | Mapping[str, Any] = (),
          config_files: Sequence[Path] = (), gpus: int | None = None, epochs: int | None = None,
          max_steps: int | None = None, resume: str | Path | None = None, compile: bool = False,
          stores: str | None = None, device: str = "auto", cpu_processes: int = 1,
          progress: bool = True) -> RunResult:
    """Train ``model_name`` on fold ``fold`` (None: all folds, no validation), or resume a run.

    ``stores``: ``"crop"``, ``"augment"``, ``"both"`` or None (see the module docstring);
    ``device``: ``"auto"`` (one GPU when visible, else the CPU), ``"cpu"`` or ``"cuda"``
    (``gpus`` GPUs, default 1). Under torchrun every process calls this; rank 0 creates (or
    reopens) the run folder and the others learn its name from it.
    """
    from nodulekit.training.distributed import launch, plan_devices, torchrun_group, under_torchrun

    workdir = Path(workdir)
    plan = plan_devices(gpus_for_device(device, gpus), cpu_processes=cpu_processes)

    def prepare() -> tuple[Path, str, int | None]:
        if resume is not None:
            if stores is not None:
                raise NodulekitError(f"--resume {resume}: a resumed run keeps its patch stores; drop --stores")
            return _prepare_resume(workdir, resume, model_name, config_overrides, config_files, epochs, max_steps,
                                   compile)
        if model_name is None:
            raise NodulekitError("name the model to train (see `nodulekit models`)")
        config = build_config(workdir, model_name, config_files=config_files, config_overrides=config_overrides,
                              epochs=epochs, max_steps=max_steps, compile=compile, stores=stores)
        return _create_run(workdir, model_name, fold, config, plan.kind, plan.world_size), model_name, fold

    if under_torchrun():
        with torchrun_group(plan) as ctx:
            run_dir, name, run_fold = _prepared_on_rank0(ctx, prepare)
            job = TrainJob(workdir, run_dir, name, run_fold, resume is not None, progress)
            fitted = _guarded(run_dir, lambda: train_process(ctx, job), ctx.is_main)
            ctx.barrier()
        if ctx.is_main:
            return _result(run_dir, resume is not None)
        return RunResult(run_dir, name, run_fold, fitted.status, fitted.steps, resume is not None)
    run_dir, name, run_fold = prepare()
    job = TrainJob(workdir, run_dir, name, run_fold, resume is not None, progress)
    _guarded(run_dir, lambda: launch(train_process, plan, job), True)
    return _result(run_dir, resume is not None)


def train_folds(workdir: Path, model_name: str, folds: str | Sequence[int] = "all", **kwargs: Any) -> list[RunResult]:
    """Cross-validation: one :func:`train` run per fold, in turn (``"all"``: every fold of the
    model's patch store). Stops at the first run that does not complete (interrupted)."""
    if "fold" in kwargs or kwargs.get("resume") is not None:
        raise NodulekitError("--folds trains new runs, one per fold: use --fold K with --resume")
    if folds == "all":
        config = build_config(workdir, model_name, config_files=kwargs.get("config_files", ()),
                              config_overrides=kwargs.get("config_overrides", ()), stores=kwargs.get("stores"))
        folds = store_folds(workdir, config)
    results = []
    for fold in folds:
        results.append(train(workdir, model_name, fold=int(fold), **kwargs))
        if results[-1].status != "complete":
            break
    return results


def store_folds(workdir: Path, config: Mapping[str, Any]) -> list[int]:
    """The folds of the config's patch stores (sorted), for ``--folds all``."""
    import numpy as np

    from nodulekit.io.patch_store import open_patch_store
    from nodulekit.training.data import DataParams

    params = DataParams.from_config(config["data"], workdir)
    _check_stores_exist(workdir, config, params.stores)
    folds: set[int] = set()
    for path in params.stores:
        with open_patch_store(path) as store:
            folds |= {int(f) for f in np.unique(np.asarray(store.table["fold"]).astype(np.int64))}
    return sorted(folds)


def gpus_for_device(device: str, gpus: int | None) -> int | None:
    """``--device`` and ``--gpus`` as the ``gpus`` of :func:`~nodulekit.training.distributed.plan_devices`."""
    from nodulekit.training.distributed import cuda_device_count

    if device not in DEVICES:
        raise NodulekitError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    if device == "cpu":
        if gpus:
            raise NodulekitError(f"--device cpu with --gpus {gpus}: choose one")
        return 0
    if device == "cuda":
        if cuda_device_count() == 0:
            import os

            raise NodulekitError("--device cuda: no CUDA device is visible (CUDA_VISIBLE_DEVICES="
                                 f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); use --device cpu")
        return gpus if gpus else 1
    return gpus


def _prepared_on_rank0(ctx: Any, prepare: Any) -> tuple[Path, str, int | None]:
    """Rank 0 prepares the run; every rank gets the outcome (or rank 0's error)."""
    outcome: Any = None
    if ctx.is_main:
        try:
            outcome = prepare()
        except NodulekitError as error:
            outcome = error
    outcome = ctx.broadcast(outcome if not isinstance(outcome, NodulekitError) else ("error", str(outcome)))
    if isinstance(outcome, tuple) and outcome and outcome[0] == "error":
        raise NodulekitError(outcome[1])
    return outcome


def _guarded(run_dir: Path, work: Any, writes: bool) -> Any:
    """Run ``work``; if it fails while run.json still says running, record failed/interrupted."""
    try:
        return work()
    except BaseException as error:
        if writes:
            record = RunRecord.load(run_dir)
            if record.data.get("status") == "running":
                status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
                record.update(status=status, error=str(error) or type(error).__name__, finished_utc=utc_now())
        raise


# -- config ---------------------------------------------------------------------------------------
def build_config(workdir: Path, model_name: str, *, config_files: Sequence[Path] = (),
                 config_overrides: Sequence[str] | Mapping[str, Any] = (), epochs: int | None = None,
                 max_steps: int | None = None, compile: bool = False, stores: str | None = None) -> Config:
    """The resolved config of a new run of ``model_name`` (what config.toml will hold)."""
    from nodulekit.models.registry import get_spec
    from nodulekit.training.from_spec import data_streams, fill_phase_defaults
    from nodulekit.training.phase import PhaseSettings

    spec = get_spec(model_name)
    config = resolve_config([spec.default_config], config_files, config_overrides)
    check_config(config)
    if stores is not None or not config["data"]["stores"]:
        config["data"]["stores"] = default_stores(workdir, spec.geometry.crop_preset,
                                                  str(config["augmentation"]["mode"]), stores)
    if epochs is not None:
        config["train"]["epochs"] = int(epochs)
        for table in config["phases"].values():
            table["epochs"] = int(epochs)
    if max_steps is not None:
        _set_max_steps(config, max_steps)
    if compile:
        config["train"]["compile"] = True
    config = fill_phase_defaults(spec, config)
    for phase_name in config["phases"]:
        PhaseSettings.from_config(config, phase_name)  # unknown optimizer / schedule names fail here
    data_streams(spec, config)  # a batch_size table without a task of a phase fails here
    return config


def default_stores(workdir: Path, crop_preset: str, mode: str = "offline", choice: str | None = None) -> list[str]:
    """The ``data.stores`` entries for ``--stores choice`` (see the module docstring)."""
    crop, augment = f"crop/{crop_preset}", f"augment/{crop_preset}"
    if choice is not None:
        if choice not in STORE_CHOICES:
            raise NodulekitError(f"--stores {choice!r}: expected one of {', '.join(STORE_CHOICES)}")
        return {"crop": [crop], "augment": [augment], "both": [crop, augment]}[choice]
    offline = mode in ("offline", "both") and (Path(workdir) / augment / "patches.h5").is_file()
    return [augment] if offline else [crop]


def store_notes(workdir: Path, crop_preset: str, config: Mapping[str, Any]) -> list[str]:
    """What a user should know about the stores chosen (recorded in run.json ``notes``)."""
    mode = str(config["augmentation"]["mode"])
    stores = [str(s) for s in config["data"]["stores"]]
    if mode in ("offline", "both") and not any(s.startswith("augment/") for s in stores):
        return [f"augmentation.mode = {mode!r} but no augment/{crop_preset} store is used: training without the "
                f"offline copies (make them with `nodulekit augment --for {crop_preset}`)"]
    return []


def _store_command(entry: str) -> str:
    parts = Path(entry).parts
    if len(parts) == 2 and parts[0] in ("crop", "augment"):
        return f"run `nodulekit {parts[0]} --for {parts[1]}` first"
    return "check data.stores"


def _check_stores_exist(workdir: Path, config: Mapping[str, Any], paths: Sequence[Path]) -> None:
    for entry, path in zip(config["data"]["stores"], paths):
        if not Path(path).is_file():
            raise NodulekitError(f"patch store {entry} not found ({path}): {_store_command(str(entry))}")


def _set_max_steps(config: Config, max_steps: int) -> None:
    config["train"]["max_steps"] = int(max_steps)
    for table in config.get("phases", {}).values():
        if "max_steps" in table:
            table["max_steps"] = int(max_steps)


# -- run folders ----------------------------------------------------------------------------------
def _create_run(workdir: Path, model_name: str, fold: int | None, config: Config, kind: str, world_size: int) -> Path:
    from nodulekit.training.data import DataParams

    from nodulekit.models.registry import get_spec

    params = DataParams.from_config(config["data"], workdir)
    _check_stores_exist(workdir, config, params.stores)
    stores = {str(entry): store_record(path, workdir) for entry, path in zip(config["data"]["stores"], params.stores)}
    notes = store_notes(workdir, get_spec(model_name).geometry.crop_preset, config)
    run_dir = new_run_dir(workdir, model_name, fold)
    save_config(run_dir / CONFIG_TOML, config)
    record = RunRecord(run_dir)
    record.update(model=model_name, fold=fold, status="running", started_utc=utc_now(), finished_utc=None,
                  stores=stores, **_eval_store(workdir, stores), config=CONFIG_TOML,
                  environment=environment(), devices=device_record(kind, world_size), resumes=[], notes=notes)
    return run_dir


def _eval_store(workdir: Path, stores: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``eval_store``: when every listed store holds augmented copies, the crop store of the first
    ``augment/<preset>`` one (evaluation must never score augmented copies)."""
    if any(not s["augmented"] for s in stores.values()):
        return {}
    for entry in stores:
        parts = Path(entry).parts
        if len(parts) >= 2 and parts[0] == "augment":
            crop = Path("crop") / parts[1] / "patches.h5"
            if (Path(workdir) / crop).is_file():
                return {"eval_store": str(crop)}
    return {}


def _prepare_resume(workdir: Path, resume: str | Path, model_name: str | None,
                    overrides: Sequence[str] | Mapping[str, Any],
                    files: Sequence[Path], epochs: int | None, max_steps: int | None,
                    compile: bool) -> tuple[Path, str, int | None]:
    run_dir = resolve_run(workdir, resume)
    info = read_run_json(run_dir)
    if model_name is not None and model_name != info["model"]:
        raise NodulekitError(f"--resume {resume}: that run trains {info['model']!r}, not {model_name!r}")
    if overrides or files or compile:
        raise NodulekitError(f"--resume {resume}: a resumed run keeps its config ({run_dir / CONFIG_TOML}); "
                             "start a new run to change it")
    config = load_toml(run_dir / CONFIG_TOML)
    if epochs is not None and any(t.get("epochs") != epochs for t in config.get("phases", {}).values()):
        raise NodulekitError(f"--resume {resume}: --epochs would change the LR schedule of the run; "
                             "start a new run to train for another number of epochs")
    if info.get("status") == "complete":
        raise NodulekitError(f"--resume {resume}: the run is already complete")
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        raise NodulekitError(f"--resume {resume}: no checkpoint yet ({run_dir / 'checkpoints' / 'last.pt'}); "
                             "start a new run")
    if max_steps is not None:
        _set_max_steps(config, max_steps)
        save_config(run_dir / CONFIG_TOML, config)
    record = RunRecord(run_dir, info)
    record.update(status="running", finished_utc=None,
                  resumes=[*info.get("resumes", []), {"started_utc": utc_now(), "max_steps": max_steps}])
    return run_dir, info["model"], info.get("fold")


def _result(run_dir: Path, resumed: bool) -> RunResult:
    info = read_run_json(run_dir)
    model_path = run_dir / FINAL_MODEL
    log_csv = run_dir / LOG_CSV
    rows = read_log_csv(log_csv) if log_csv.is_file() else []
    return RunResult(run_dir, info["model"], info.get("fold"), info["status"], int(info.get("steps", 0)), resumed,
                     info.get("best", {}), model_path if model_path.is_file() else None, log_csv,
                     tuple(info.get("notes", ())), dict(info.get("post_training") or {}), dict(rows[-1]) if rows else {})


# -- one training process -------------------------------------------------------------------------
def train_process(ctx: Any, job: TrainJob) -> Any:
    """Build everything from the run folder and train (every process; rank 0 writes).

    Returns the process's :class:`~nodulekit.training.engine.FitResult`."""
    import torch

    from nodulekit.models.registry import get_spec
    from nodulekit.training.engine import Trainer
    from nodulekit.training.from_spec import build_phases, post_training_hook, stream_datasets

    config = load_toml(job.run_dir / CONFIG_TOML)
    spec = get_spec(job.model)
    torch.manual_seed(int(config["train"]["seed"]))  # the same initial weights in every process
    model = spec.factory(config["model"])
    train_sets, val_sets = stream_datasets(spec, config, job.workdir, job.fold)
    record = RunRecord.load(job.run_dir) if ctx.is_main else None
    trainer = Trainer(model, build_phases(spec, config), train_sets, val_sets, config, dist=ctx, run_dir=job.run_dir,
                      train_transform=on_the_fly_transform(config, ctx), progress=job.progress,
                      num_workers=int(config["data"].get("num_workers", -1)),
                      on_epoch_end=(lambda row: record.update(progress=_progress_entry(row))) if record else None,
                      post_training=post_training_hook(spec, config, job.workdir, job.fold, ctx.device))
    try:
        result = trainer.fit(resume=job.resume)
    except BaseException as error:
        if record is not None:
            status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            record.update(status=status, error=str(error) or type(error).__name__, finished_utc=utc_now())
        raise
    if record is not None:
        extra = {"post_training": result.post_training} if result.post_training else {}
        record.update(status=result.status, finished_utc=utc_now(), steps=result.steps, best=result.best,
                      model_path=FINAL_MODEL if result.model_path else None, error=None, **extra)
    return result


def _progress_entry(row: dict[str, Any]) -> dict[str, Any]:
    return {"phase": row["phase"], "epoch": row["epoch"], "step": row["step"], "updated_utc": utc_now()}


class OnTheFlyAugment:
    """:class:`nodulekit.patches.gpu_augment.BatchAugment` on batch dicts, its generator checkpointed."""

    def __init__(self, settings: dict[str, Any], seed: int, device: Any) -> None:
        from nodulekit.patches.gpu_augment import BatchAugment

        self.augment = BatchAugment(settings, seed=seed)
        self.device = device

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = self.augment(batch["image"], batch.get("mask"), batch.get("agreement"))
        batch = dict(batch, image=out["images"])
        if "masks" in out:
            batch["mask"] = out["masks"]
        if "agreement" in out:
            batch["agreement"] = out["agreement"]
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.augment.generator(self.device).get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.augment.generator(self.device).set_state(state["generator"].to("cpu"))


def on_the_fly_transform(config: Config, ctx: Any) -> OnTheFlyAugment | None:
    """The ``[augmentation.on_the_fly]`` augmentation when ``augmentation.mode`` is ``on_the_fly``
    or ``both`` (None otherwise), on the training device, seeded per process. (Runs made before
    the ``[augmentation]`` table read a top-level ``[on_the_fly]`` table.)"""
    augmentation = config.get("augmentation")
    if augmentation is None:  # a config.toml of an older run
        settings = dict(config.get("on_the_fly", {}))
    elif augmentation.get("mode") in ("on_the_fly", "both"):
        settings = dict(augmentation.get("on_the_fly", {}))
        if not settings:
            raise NodulekitError(f"augmentation.mode = {augmentation['mode']!r} needs the settings of "
                                 "[augmentation.on_the_fly] (e.g. --set augmentation.on_the_fly.flip.p=0.5)")
    else:
        settings = {}
    if not settings:
        return None
    seed = int(config["train"]["seed"]) + 7777 * (ctx.rank + 1)
    try:
        return OnTheFlyAugment(settings, seed, ctx.device)
    except ValueError as error:
        raise NodulekitError(f"[on_the_fly]: {error}") from None
