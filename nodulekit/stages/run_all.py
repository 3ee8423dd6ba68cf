"""``nodulekit run``: the whole pipeline for one model, each stage cached, so a rerun continues.

    result = run_pipeline("nodulekit-work", RunParams("mtnet", lidc_root=Path("LIDC-IDRI")))
    result.report_html            # WORKDIR/runs/<run>/evaluation/report.html

:func:`run_pipeline` calls each stage's library function in order::

    ingest -> consensus-label -> crop/<preset> -> [augment/<preset>] -> train/<model>-fold<k> -> evaluate/<...>

``<preset>`` is the model's crop preset (``spec.geometry.crop_preset`` of the registry);
``augment`` runs when the model's config asks for offline copies (``augmentation.mode`` is
``offline`` or ``both``). Every stage decides skip / resume / redo through
:mod:`nodulekit.pipeline` (fingerprints of parameters and upstream stages), so a second call
with the same parameters does no work, and a call after a crash continues where it stopped:
ingest, consensus-label, crop and augment resume item by item; training resumes its run from
``checkpoints/last.pt``.

Training and evaluation are stage instances too (``WORKDIR/train/<model>-fold<k>/stage.json``,
``WORKDIR/evaluate/<model>-fold<k>/stage.json``), so ``nodulekit status`` lists them. Their
outputs live where ``nodulekit train`` and ``nodulekit evaluate`` put them (``WORKDIR/runs/``).
The train stage's fingerprint covers the run's resolved config (what ``config.toml`` holds; its
SHA-256 is the stage parameter ``config_sha256``), the fold and the upstream store fingerprints. Before it trains, it looks for a run in
``WORKDIR/runs/`` with that config, fold and stores: a complete one is adopted (also one
started by hand with ``nodulekit train``), an interrupted one with a checkpoint is resumed
(``train(resume=...)``), otherwise a new run starts.

MSU-Net (paper 003) is two models: ``nodulekit run msunet`` also crops, (augments,) and trains its
3D coarse stage, a ``munet3d`` run per fold (``train/munet3d-fold<k>``, its own config layers:
``coarse_config_files`` / ``coarse_config_overrides``; epochs, steps and GPUs as the fine stage's),
links each msunet run to the munet3d run of its fold (run.json ``coarse_run``), and evaluates the
chain: each held-out nodule's cube through munet3d, its ROI slabs through MSU-Net.
``nodulekit infer --model`` on the msunet run then chains the stages as well. (MSU-Net alone, on
slabs around the ground-truth nodule: ``nodulekit train msunet`` + ``nodulekit evaluate``.)

The demo (``nodulekit run --demo``) is :mod:`nodulekit.stages.demo`.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nodulekit.errors import NodulekitError
from nodulekit.pipeline import CODE_VERSIONS, StageRun, StageSpec, read_manifest
from nodulekit.pipeline.spec import canonical_json

#: The stages of ``nodulekit run``, in order (``until`` names one of them).
STAGES: tuple[str, ...] = ("ingest", "consensus-label", "crop", "augment", "train", "evaluate")
OFFLINE_MODES = ("offline", "both")


class PipelineInterrupted(NodulekitError):
    """Training stopped before the end (Ctrl-C, SIGTERM); a rerun resumes it."""

    exit_code = 130


@dataclass(frozen=True)
class RunParams:
    """Options of ``nodulekit run``.

    ``model``: a registered model (``nodulekit models``). ``lidc_root``: the LIDC-IDRI download
    (any layout). ``patients``: ids or globs (``LIDC-IDRI-00*``), None = all.
    ``folds``: the validation fold of each training run (one run per fold; several = a
    cross-validation whose held-out predictions are pooled by ``evaluate``). ``n_folds``,
    ``fold_seed``, ``cohort``, ``clevel``: consensus-label's ``--folds``, ``--seed``, ``--cohort``
    (stratifies the folds) and ``--clevel``. ``augment``: None = the model config's
    ``augmentation.mode``; ``augment_factor``: copies per patch (None = the recipe's).
    ``config_files`` / ``config_overrides`` / ``epochs`` / ``max_steps`` / ``gpus`` / ``compile``:
    as ``nodulekit train``. ``n_boot``, ``report``, ``preview_png``: as ``nodulekit evaluate``
    (``preview_png`` also renders ``report-preview.png``). ``until``: stop after this stage.
    ``workers``: processes for ingest and crop (not part of any fingerprint).
    ``coarse_config_files``, ``coarse_config_overrides``: msunet only, the config layers of its
    munet3d stage (module docstring).
    """

    model: str
    lidc_root: Path | None = None
    patients: tuple[str, ...] | None = None
    folds: tuple[int, ...] = (0,)
    n_folds: int = 5
    fold_seed: int = 0
    cohort: str | None = None
    clevel: float = 0.5
    augment: bool | None = None
    augment_factor: int | None = None
    config_files: tuple[Path, ...] = ()
    config_overrides: tuple[str, ...] = ()
    epochs: int | None = None
    max_steps: int | None = None
    gpus: int | None = None
    compile: bool = False
    n_boot: int = 1000
    report: bool = True
    preview_png: bool = False
    until: str = "evaluate"
    workers: int = 1
    coarse_config_files: tuple[Path, ...] = ()
    coarse_config_overrides: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.until not in STAGES:
            raise NodulekitError(f"--until {self.until!r}: choose one of {', '.join(STAGES)}")
        if self.lidc_root is None:
            raise NodulekitError("give --lidc-root DIR (the LIDC-IDRI download), or try `nodulekit run --demo`")
        if not self.folds:
            raise NodulekitError("give at least one --fold")
        bad = [f for f in self.folds if not 0 <= f < self.n_folds]
        if bad:
            raise NodulekitError(f"--fold {bad[0]}: folds are 0..{self.n_folds - 1} (--folds {self.n_folds})")
        if len(set(self.folds)) != len(self.folds):
            raise NodulekitError(f"--fold: each fold once ({', '.join(map(str, self.folds))})")
        if (self.coarse_config_files or self.coarse_config_overrides) and coarse_params(self) is None:
            raise NodulekitError(f"--coarse-set / --coarse-config: only msunet has a coarse stage, not {self.model}")


def coarse_params(params: RunParams) -> RunParams | None:
    """The options of msunet's munet3d stage (module docstring), or None for a model without one."""
    from nodulekit.inference.chain import COARSE_MODEL

    if params.model != "msunet":
        return None
    return replace(params, model=COARSE_MODEL, config_files=params.coarse_config_files,
                   config_overrides=params.coarse_config_overrides, coarse_config_files=(),
                   coarse_config_overrides=())


def parse_folds(fold: Sequence[int] | None, folds: str | None, n_folds: int) -> tuple[int, ...]:
    """The training folds from ``--fold K`` (repeatable) or ``--folds all|0,2`` (as ``nodulekit train``);
    () when neither is given (the default, fold 0)."""
    if fold and folds is not None:
        raise NodulekitError("give --fold K or --folds all|LIST, not both")
    if folds is None:
        return tuple(fold or ())
    if folds.strip() == "all":
        return tuple(range(n_folds))
    try:
        return tuple(int(part) for part in folds.split(",") if part.strip())
    except ValueError:
        raise NodulekitError(f"--folds {folds!r}: expected 'all' or fold numbers like 0,1,2") from None


@dataclass(frozen=True)
class StageEvent:
    """What :func:`run_pipeline` reports to ``on_event``.

    ``kind``: ``start`` (a stage begins), ``items`` (``total`` items left to do), ``advance`` (one
    item done), ``done`` (``status`` is ``ran``, ``resumed`` or ``up to date``; ``detail`` a
    one-line summary; ``seconds`` its wall time).
    """

    stage: str
    kind: str
    status: str = ""
    detail: str = ""
    total: int | None = None
    seconds: float = 0.0


EventCallback = Callable[[StageEvent], None]


@dataclass(frozen=True)
class StageOutcome:
    """One stage of a pipeline call: its instance name, status, summary line, time and folder."""

    stage: str
    status: str
    detail: str
    seconds: float
    path: Path


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` did and where the results are."""

    workdir: Path
    model: str
    stages: list[StageOutcome] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)
    coarse_runs: list[Path] = field(default_factory=list)
    evaluation_dir: Path | None = None
    metrics_path: Path | None = None
    report_html: Path | None = None
    report_preview: Path | None = None
    seconds: float = 0.0

    @property
    def did_work(self) -> bool:
        """False when every stage was already up to date."""
        return any(s.status != "up to date" for s in self.stages)

    def metrics(self) -> dict[str, Any]:
        """The content of metrics.json ({} before evaluation)."""
        return json.loads(self.metrics_path.read_text()) if self.metrics_path else {}


def _ignore(_event: StageEvent) -> None:
    return None


class StageReporter:
    """Sends one stage's events to ``on_event`` and records its outcome in ``result``."""

    def __init__(self, result: PipelineResult, on_event: EventCallback) -> None:
        self.result = result
        self.on_event = on_event
        self.stage = ""
        self.started = 0.0

    def start(self, stage: str) -> None:
        self.stage, self.started = stage, time.perf_counter()
        self.on_event(StageEvent(stage, "start"))

    def items(self, total: int) -> None:
        self.on_event(StageEvent(self.stage, "items", total=total))

    def advance(self) -> None:
        self.on_event(StageEvent(self.stage, "advance"))

    def done(self, status: str, detail: str, path: Path) -> None:
        seconds = time.perf_counter() - self.started
        self.result.stages.append(StageOutcome(self.stage, status, detail, seconds, Path(path)))
        self.on_event(StageEvent(self.stage, "done", status=status, detail=detail, seconds=seconds))


def _status(up_to_date: bool, n_done: int, n_total: int) -> str:
    if up_to_date:
        return "up to date"
    return "resumed" if n_done < n_total else "ran"


# -- the pipeline ---------------------------------------------------------------------------------
def run_pipeline(workdir: Path, params: RunParams, *, force: bool = False, on_event: EventCallback | None = None,
                 predictor: Any = None, progress: bool = False) -> PipelineResult:
    """Run every stage for ``params.model`` (each skips when up to date; see the module docstring).

    ``force``: redo every stage. ``on_event``: called with :class:`StageEvent` s. ``predictor``:
    passed to :func:`nodulekit.evaluation.evaluate` (default: the one registered for the model).
    ``progress``: training's progress bars. Raises :class:`PipelineInterrupted` when training was
    stopped (rerun to resume) and :class:`~nodulekit.errors.NodulekitError` for bad input.
    """
    from nodulekit.models.registry import get_spec
    from nodulekit.training.distributed import under_torchrun

    params.validate()
    if under_torchrun():
        raise NodulekitError("nodulekit run starts its own processes (--gpus N); under torchrun, prepare the data "
                             "with `nodulekit run MODEL --until augment` and launch `nodulekit train` instead")
    workdir = Path(workdir)
    spec = get_spec(params.model)
    preset = spec.geometry.crop_preset
    start = time.perf_counter()
    result = PipelineResult(workdir, params.model)
    report = StageReporter(result, on_event or _ignore)

    _ingest(workdir, params, force, report)
    if params.until == "ingest":
        return _finish(result, start)
    _consensus(workdir, params, force, report)
    if params.until == "consensus-label":
        return _finish(result, start)
    models = [(params, preset)]
    coarse = coarse_params(params)
    if coarse is not None:
        models.append((coarse, get_spec(coarse.model).geometry.crop_preset))
    for _, model_preset in models:
        _crop(workdir, params, model_preset, force, report)
    if params.until == "crop":
        return _finish(result, start)
    plans = [[_train_plan(workdir, p, fold) for fold in p.folds] for p, _ in models]
    upstreams = []
    for (p, model_preset), model_plans in zip(models, plans):
        augmenting = _augments(p, model_plans[0].config)
        if augmenting:
            _augment(workdir, p, model_preset, force, report)
        upstreams.append((f"crop/{model_preset}",) + ((f"augment/{model_preset}",) if augmenting else ()))
    if params.until == "augment":
        return _finish(result, start)
    train_stages = []
    for (p, _), model_plans, upstream, runs in zip(models, plans, upstreams, (result.runs, result.coarse_runs)):
        for plan in model_plans:
            name, run_dir = _train(workdir, p, plan, upstream, force, report, progress)
            train_stages.append(name)
            runs.append(run_dir)
    _link_stages(result)
    if params.until == "train":
        return _finish(result, start)
    _evaluate(workdir, params, result, tuple(train_stages), force, report, predictor)
    return _finish(result, start)


def _link_stages(result: PipelineResult) -> None:
    """Each msunet run records the munet3d run of its fold as its coarse stage (run.json is
    rewritten only when that changes, so the predictions' cache key stays)."""
    from nodulekit.inference.chain import COARSE_RUN_KEY, link_coarse_run
    from nodulekit.training.runs import read_run_json

    for fine_dir, coarse_dir in zip(result.runs, result.coarse_runs):  # fold by fold, in params.folds order
        if read_run_json(fine_dir).get(COARSE_RUN_KEY) != coarse_dir.name:
            link_coarse_run(fine_dir, coarse_dir)


def _finish(result: PipelineResult, start: float) -> PipelineResult:
    result.seconds = time.perf_counter() - start
    return result


def _ingest(workdir: Path, params: RunParams, force: bool, report: StageReporter) -> None:
    from nodulekit.stages.ingest import IngestParams, ingest_lidc

    report.start("ingest")
    ingest_params = IngestParams(root=Path(params.lidc_root), patients=list(params.patients) if params.patients
                                 else None, workers=params.workers)
    out = ingest_lidc(workdir, ingest_params, force=force, on_start=report.items, on_advance=report.advance)
    scans, skipped = out.summary.get("scans", []), out.summary.get("skipped", [])
    report.done(_status(out.up_to_date, out.n_processed, len(scans)),
                f"{len(scans)} scans" + (f", {len(skipped)} other file(s) or series skipped (ingest/summary.json)"
                                         if skipped else ""), out.stage_dir)


def _consensus(workdir: Path, params: RunParams, force: bool, report: StageReporter) -> None:
    from nodulekit.stages.consensus import ConsensusParams, consensus_label

    report.start("consensus-label")
    consensus_params = ConsensusParams(clevel=params.clevel, cohort=params.cohort, folds=params.n_folds,
                                       seed=params.fold_seed)
    out = consensus_label(workdir, consensus_params, force=force, on_start=report.items, on_advance=report.advance)
    n_scans = int(out.summary.get("n_scans", 0))
    report.done(_status(out.up_to_date, out.n_processed, n_scans),
                f"{out.summary.get('n_nodules', 0)} nodules in {n_scans} scans, {params.n_folds} folds", out.stage_dir)


def _crop(workdir: Path, params: RunParams, preset: str, force: bool, report: StageReporter) -> None:
    from nodulekit.patches.presets import resolve_geometry
    from nodulekit.stages.crop import CropParams, crop

    report.start(f"crop/{preset}")
    out = crop(workdir, CropParams(resolve_geometry(preset), workers=params.workers), force=force,
               on_start=report.items, on_advance=report.advance)
    summary = out.summary
    shape = "x".join(map(str, summary["patch_shape"]))
    report.done(_status(out.up_to_date, out.n_processed, int(summary["n_scans"])),
                f"{summary['n_patches']} patches ({shape}) of {summary['n_nodules']} nodules, "
                f"cohort {summary['cohort']}", out.stage_dir)


def _augments(params: RunParams, config: Mapping[str, Any]) -> bool:
    """Offline copies: ``params.augment`` when given, else the config's ``augmentation.mode``."""
    if params.augment is not None:
        return params.augment
    return str((config.get("augmentation") or {}).get("mode", "none")) in OFFLINE_MODES


def _augment(workdir: Path, params: RunParams, preset: str, force: bool, report: StageReporter) -> None:
    from nodulekit.stages.augment import AugmentParams, augment

    report.start(f"augment/{preset}")
    out = augment(workdir, AugmentParams(preset=preset, factor=params.augment_factor), force=force,
                  on_start=report.items, on_advance=report.advance)
    summary = out.report
    report.done("up to date" if out.up_to_date else "ran",
                f"{summary['n_sources']} originals + {summary['n_copies']} copies "
                f"(recipe {summary['recipe']['name']} x{summary['recipe']['factor']})", out.stage_dir)


# -- train ----------------------------------------------------------------------------------------
def _user_sets_stores(params: RunParams) -> bool:
    from nodulekit.training.config import load_toml

    if any(item.partition("=")[0].strip() == "data.stores" for item in params.config_overrides):
        return True
    return any("stores" in (load_toml(path).get("data") or {}) for path in params.config_files)


@dataclass(frozen=True)
class TrainPlan:
    """One training run to make: its fold, the ``stores`` choice given to ``train()`` and the
    config that resolves to (normalised through TOML, as the run's config.toml reads back)."""

    fold: int
    stores: str | None
    config: dict[str, Any]


def _train_plan(workdir: Path, params: RunParams, fold: int) -> TrainPlan:
    """The config a new run of ``fold`` would save. Its data store is the one the pipeline makes
    (``augment/<preset>`` with offline copies, else ``crop/<preset>``), unless the user's config
    layers set ``data.stores``."""
    from nodulekit.training.api import build_config
    from nodulekit.training.config import dumps_toml

    layers = dict(config_files=params.config_files, config_overrides=params.config_overrides)
    stores = None
    if not _user_sets_stores(params):
        stores = "augment" if _augments(params, build_config(workdir, params.model, **layers)) else "crop"
    config = build_config(workdir, params.model, **layers, epochs=params.epochs, max_steps=params.max_steps,
                          compile=params.compile, stores=stores)
    return TrainPlan(fold, stores, tomllib.loads(dumps_toml(config)))


def config_digest(config: Mapping[str, Any]) -> str:
    """The train stage's key of a resolved config (the config itself is the run's config.toml)."""
    return hashlib.sha256(canonical_json(dict(config)).encode()).hexdigest()[:16]


def train_stage_name(model: str, fold: int) -> str:
    return f"train/{model}-fold{fold}"


def _normalised_config(run_dir: Path) -> dict[str, Any] | None:
    from nodulekit.training.config import dumps_toml, load_toml

    try:
        return tomllib.loads(dumps_toml(load_toml(run_dir / "config.toml")))
    except (NodulekitError, tomllib.TOMLDecodeError):
        return None


def _stores_current(workdir: Path, info: Mapping[str, Any]) -> bool:
    """Every store the run recorded still has the fingerprint of its stage's current outputs."""
    for entry, record in (info.get("stores") or {}).items():
        manifest = read_manifest(workdir, str(entry))
        if manifest is not None and manifest.get("fingerprint") != record.get("fingerprint"):
            return False
    return True


def matching_runs(workdir: Path, model: str, fold: int | None, config: Mapping[str, Any]) -> list[Path]:
    """Runs of ``model`` on ``fold`` trained with exactly ``config`` on the current stores, newest first."""
    from nodulekit.training.runs import list_runs, read_run_json

    found = []
    for run_dir in reversed(list_runs(workdir, model)):
        try:
            info = read_run_json(run_dir)
        except NodulekitError:
            continue
        if info.get("fold") != fold or _normalised_config(run_dir) != config:
            continue
        if _stores_current(workdir, info):
            found.append(run_dir)
    return found


def _train(workdir: Path, params: RunParams, plan: TrainPlan, upstream: tuple[str, ...], force: bool,
           report: StageReporter, progress: bool) -> tuple[str, Path]:
    from nodulekit.training.api import train
    from nodulekit.training.runs import read_run_json

    fold, config = plan.fold, plan.config
    name = train_stage_name(params.model, fold)
    report.start(name)
    spec = StageSpec(name, CODE_VERSIONS["train"], {"model": params.model, "fold": fold,
                                                    "stores": config["data"]["stores"],
                                                    "config_sha256": config_digest(config)}, upstream=upstream)
    with StageRun(workdir, spec, force=force) as run:
        if run.up_to_date:
            run_dir = workdir / "runs" / run.manifest["summary"]["run"]
            report.done("up to date", f"run {run_dir.name}", run_dir)
            return name, run_dir
        run.start(n_items=1)
        candidates = [] if force else matching_runs(workdir, params.model, fold, config)
        complete = [r for r in candidates if read_run_json(r).get("status") == "complete"
                    and (r / "model.pt").is_file()]
        resumable = [r for r in candidates if read_run_json(r).get("status") != "complete"
                     and (r / "checkpoints" / "last.pt").is_file()]
        if complete:
            run_dir, status = complete[0], "up to date"
        elif resumable:
            outcome = train(workdir, None, resume=resumable[0].name, gpus=params.gpus, progress=progress)
            run_dir, status = outcome.run_dir, "resumed"
        else:
            outcome = train(workdir, params.model, fold=fold, config_files=params.config_files,
                            config_overrides=params.config_overrides, epochs=params.epochs,
                            max_steps=params.max_steps, compile=params.compile, stores=plan.stores, gpus=params.gpus,
                            progress=progress)
            run_dir, status = outcome.run_dir, "ran"
        info = read_run_json(run_dir)
        if info.get("status") != "complete":
            raise PipelineInterrupted(f"training {info.get('status', 'stopped')} ({run_dir}); rerun the same "
                                      "command to resume it from its last checkpoint")
        rel = Path("..") / ".." / "runs" / run_dir.name
        run.record_item("run", {"run": run_dir.name})
        run.finish(outputs=[str(rel / "model.pt"), str(rel / "run.json")],
                   summary={"run": run_dir.name, "steps": info.get("steps"), "best": info.get("best", {})})
    report.done(status, f"run {run_dir.name}, {info.get('steps', 0)} steps" + _best_text(info.get("best")), run_dir)
    return name, run_dir


def _best_text(best: Any) -> str:
    if not isinstance(best, Mapping) or not best:
        return ""
    parts = []
    for phase, entry in best.items():
        if isinstance(entry, Mapping) and isinstance(entry.get("value"), (int, float)):
            parts.append(f"{phase} {entry.get('metric', 'best')} {entry['value']:.3f}")
    return ("; best " + ", ".join(parts)) if parts else ""


# -- evaluate -------------------------------------------------------------------------------------
def evaluate_stage_name(model: str, folds: Sequence[int]) -> str:
    if len(folds) == 1:
        return f"evaluate/{model}-fold{folds[0]}"
    return f"evaluate/{model}-cv-{'-'.join(map(str, sorted(folds)))}"


def _evaluate(workdir: Path, params: RunParams, result: PipelineResult, train_stages: tuple[str, ...], force: bool,
              report: StageReporter, predictor: Any) -> None:
    from nodulekit.evaluation import EvaluateParams, evaluate

    name = evaluate_stage_name(params.model, params.folds)
    report.start(name)
    eval_params = EvaluateParams(n_boot=params.n_boot, preview_png=params.preview_png, force=force)
    fingerprinted = {"n_boot": params.n_boot, "report": params.report, "preview_png": params.preview_png,
                     "seg_threshold": eval_params.seg_threshold, "class_threshold": eval_params.class_threshold,
                     "ci": eval_params.ci, "seed": eval_params.seed}
    spec = StageSpec(name, CODE_VERSIONS["evaluate"], fingerprinted, upstream=train_stages)
    with StageRun(workdir, spec, force=force) as run:
        if run.up_to_date:
            out_dir = Path(os.path.normpath(run.dir / run.manifest["summary"]["out_dir"]))
            _set_outputs(result, out_dir)
            report.done("up to date", _metrics_line(result), result.evaluation_dir or out_dir)
            return
        run.start(n_items=1)
        runs = [r.name for r in result.runs]
        out = evaluate(workdir, run=runs if len(runs) > 1 else runs[0], report=params.report, predictor=predictor,
                       params=eval_params)
        _set_outputs(result, out.out_dir)
        outputs = ["metrics.json"] + (["report.html", "report.md"] if params.report else []) \
            + (["report-preview.png"] if params.report and params.preview_png else [])
        rel = Path(_relpath(out.out_dir, run.dir))
        run.finish(outputs=[str(rel / o) for o in outputs], summary={"out_dir": str(rel)})
    report.done("ran", _metrics_line(result), out.out_dir)


def _relpath(path: Path, start: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())


def _set_outputs(result: PipelineResult, out_dir: Path) -> None:
    result.evaluation_dir = out_dir
    result.metrics_path = out_dir / "metrics.json"
    html, preview = out_dir / "report.html", out_dir / "report-preview.png"
    result.report_html = html if html.is_file() else None
    result.report_preview = preview if preview.is_file() else None


def _metrics_line(result: PipelineResult) -> str:
    """e.g. ``Dice 0.81 [0.74, 0.86]; malignancy AUC 0.90 [0.70, 1.00]`` from metrics.json."""
    metrics = result.metrics().get("aggregate", {})
    parts = []
    dice = ((metrics.get("segmentation") or {}).get("metrics") or {}).get("dice")
    if dice and dice.get("estimate") is not None:
        parts.append(f"Dice {_ci(dice)}")
    for task, table in (metrics.get("classification") or {}).items():
        auc = (table.get("metrics") or {}).get("auc")
        if auc and auc.get("estimate") is not None:
            parts.append(f"{task} AUC {_ci(auc)}")
    return "; ".join(parts) or "metrics.json written"


def _ci(entry: Mapping[str, Any]) -> str:
    low, high = entry.get("low"), entry.get("high")
    text = f"{entry['estimate']:.2f}"
    return text + (f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else "")
