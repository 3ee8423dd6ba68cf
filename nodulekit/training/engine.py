"""The Trainer: one training loop for every model, built by composition; variants are config.

What a model provides (the whole interface): an ``nn.Module`` and a list of
:class:`~nodulekit.training.phase.Phase`::

    Phase(name="coarse",                       # config: [phases.coarse] over [train]
          step=coarse_step,                    # (model, batch) -> {"loss": t, "dice": t, ...}
          trainable=["coarse", "decoder"],     # parameter-name prefixes (or a callable, or None = all)
          metrics=seg_metrics,                 # optional (model, val_batches) -> {"dice": 0.8, ...}
          data="seg")                          # the data stream(s) it reads

- ``step(model, batch)`` computes the losses of one training batch and returns a dict of scalar
  tensors with the total under ``"loss"`` (the engine calls ``backward`` on it, clips, steps;
  every entry is logged as ``train_<name>``). It may call any sub-network of ``model`` -- the
  engine wraps the *step* in DistributedDataParallel, so gradients are synchronised whatever
  the step calls. Under bf16 autocast (CUDA) use losses on logits (``binary_cross_entropy_
  with_logits``), not ``binary_cross_entropy``.
- ``trainable`` picks the parameters this phase optimises; all others get
  ``requires_grad=False``, and sub-modules with only frozen parameters are kept in eval mode
  (frozen BatchNorm statistics) unless ``frozen_eval=False``. A phase that needs another
  network's output (MT-Net's fine phase uses the coarse masks) just calls it inside ``step``.
- ``metrics(model, batches)`` gets the model in eval mode (no grad, autocast) and an iterable
  of validation batches already on the device; it returns floats, logged as ``val_<name>``.
  Without it the validation metrics are the step's losses averaged over the validation set.
- ``data``: the name of a data stream (``"default"`` when the Trainer gets a single dataset) --
  ``step`` then receives one batch dict -- or a tuple of names, and ``step`` receives
  ``{name: batch}`` (MT-Net: a segmentation stream of all nodules and a classification stream
  of the labelled ones, each with its own batch size). An epoch is one pass over the first
  stream; the others cycle. Validation batches have the same structure (a tuple-phase's
  ``metrics`` gets ``{name: iterable of batches}``).

Everything else comes from the resolved config, per phase (:func:`nodulekit.training.config.
phase_config`: ``[phases.<name>]`` over ``[train]``, ``batch_size``, ``[optimizer]``,
``[scheduler]``, ``[early_stopping]``): epochs, batch_size (global; a table ``{stream = n}``
for several streams), max_steps, optimizer, scheduler, early_stopping, grad_clip_norm,
precision, compile, val_max_batches, load_best_at_end.

Loop per phase: build the optimizer over the trainable parameters and its scheduler; per epoch:
train (on-the-fly ``train_transform`` on the device, autocast, backward, clip, step), validate
(rank 0), step the scheduler (``plateau``: with the epoch's value of ``scheduler.monitor``,
``train_<loss>`` or ``val_<metric>``, the same on every rank), update early stopping, save
``best-<phase>.pt`` when the monitored metric improves (and ``best-<phase>-<group>.pt`` when a
``keep_best`` metric of a parameter group improves), append the CSV row, save ``last.pt``. The
phase ends after ``epochs``, at ``max_steps`` optimizer steps, or when early stopping triggers;
with ``load_best_at_end`` its best weights are restored before the next phase starts: the
monitored best, then each ``keep_best`` group's own best (``[phases.fine_cls.keep_best]
class_net = "val_malignancy_auc"``: MT-Net's Class-net by AUC, the rest by Jaccard).

After the last phase, ``post_training(model) -> dict`` (optional) runs once on the restored best
weights (rank 0; the weights are then broadcast), before ``model.pt`` is written; its dict is
``FitResult.post_training`` (mtcnn's AUC view weights, Algorithm 1).

Registered models do not write phases by hand: :mod:`nodulekit.training.from_spec` builds them
from the model's ``ModelSpec`` (docs/training.md, "What a model must provide").

Resume is exact: ``last.pt`` holds model, optimizer, scheduler, early-stopping state, the
position (phase, epoch, batch within the epoch, steps), the log so far, and every rank's RNG
states, running loss sums and transform state. Batch order depends only on (seed, phase, epoch)
(:class:`nodulekit.training.data.EpochBatchSampler`), so a run interrupted mid-epoch (Ctrl-C or
SIGTERM: the ranks agree on a step, save, and stop) continues with the very batches it would
have seen. A killed run resumes from the last epoch boundary.
"""
from __future__ import annotations

import contextlib
import gc
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from nodulekit.errors import NodulekitError
from nodulekit.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nodulekit.training.data import EpochBatchSampler, make_loader, to_device
from nodulekit.training.distributed import DistContext
from nodulekit.training.optim import EarlyStopping, build_optimizer, build_scheduler, is_plateau, plateau_monitor
from nodulekit.training.phase import (DEFAULT_STREAM, Phase, PhaseSettings, StepModule, autocast, seed_everything,
                                      select_trainable, set_train_mode)
from nodulekit.training.runs import (CHECKPOINTS_DIR, FINAL_MODEL, LAST_CHECKPOINT, LOG_CSV, TensorBoardLog,
                                     write_log_csv)

__all__ = ["FitResult", "Phase", "Position", "StepInfo", "Trainer"]
STOP_CHECK_EVERY_STEPS = 10  # DDP: how often the ranks agree on a Ctrl-C (one tiny all-reduce)


@dataclass
class Position:
    """Where training is: phase, epoch in it (0-based), batches done in that epoch, steps."""

    phase_index: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    phase_step: int = 0
    step: int = 0

    def state_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class StepInfo:
    """Passed to ``on_step_end`` after each optimizer step (losses as floats)."""

    phase: str
    epoch: int
    batch_in_epoch: int
    phase_step: int
    step: int
    losses: dict[str, float]


@dataclass
class FitResult:
    """How :meth:`Trainer.fit` ended: ``status`` "complete" or "interrupted"."""

    status: str
    steps: int
    log_rows: list[dict[str, Any]]
    best: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_path: Path | None = None
    last_checkpoint: Path | None = None
    post_training: dict[str, Any] = field(default_factory=dict)


# -- streams -----------------------------------------------------------------------------------
class _Stream:
    """A data stream of one phase: its loader, cycling within an epoch (secondary streams)."""

    def __init__(self, dataset: Dataset, sampler: EpochBatchSampler, loader: Any) -> None:
        self.dataset, self.sampler, self.loader = dataset, sampler, loader
        self.n_batches = sampler.batches_per_epoch()
        self.epoch, self.cycle, self.batch = 0, 0, 0
        self._it: Iterator[Any] | None = None

    def start(self, epoch: int, batches_done: int) -> None:
        """Position the stream after ``batches_done`` batches of ``epoch`` (resume)."""
        if self.n_batches == 0:
            raise NodulekitError("a training data stream has no batch (empty dataset?)")
        self.epoch, self.cycle, self.batch = epoch, batches_done // self.n_batches, batches_done % self.n_batches
        self._reset()

    def _reset(self) -> None:
        self.sampler.set_epoch(self.epoch * 1000 + self.cycle, self.batch)
        self._it = iter(self.loader)

    def next(self) -> Any:
        if self.batch == self.n_batches:
            self.cycle, self.batch = self.cycle + 1, 0
            self._reset()
        assert self._it is not None
        self.batch += 1
        return next(self._it)


def _cycle_zip(iterables: Mapping[str, Callable[[], Iterable[Any]]], lengths: Mapping[str, int]) -> Iterator[dict[str, Any]]:
    """Dicts of one batch per stream until the longest stream is exhausted (shorter ones restart)."""
    n = max(lengths.values()) if lengths else 0
    its = {name: iter(make()) for name, make in iterables.items()}
    for _ in range(n):
        out = {}
        for name, make in iterables.items():
            try:
                out[name] = next(its[name])
            except StopIteration:
                its[name] = iter(make())
                out[name] = next(its[name])
        yield out


# -- the trainer -------------------------------------------------------------------------------
class Trainer:
    """Trains ``model`` through ``phases``; writes into ``run_dir`` on rank 0 (None: nothing written).

    ``train_data`` / ``val_data``: one dataset (the ``"default"`` stream) or ``{stream: dataset}``
    (validation None: no validation, no early stopping, no best checkpoint).
    ``train_transform(batch) -> batch``: on-the-fly augmentation on the device (phases with
    ``augment=True``); if it has ``state_dict``/``load_state_dict`` its RNG is checkpointed.
    ``on_step_end(StepInfo)`` / ``on_epoch_end(row)``: hooks (progress reporting, tests).
    ``post_training(model) -> dict``: run once after the last phase (see the module docstring).
    """

    def __init__(self, model: nn.Module, phases: Sequence[Phase], train_data: Dataset | Mapping[str, Dataset],
                 val_data: Dataset | Mapping[str, Dataset] | None, config: Mapping[str, Any], *,
                 dist: DistContext | None = None, run_dir: Path | None = None,
                 train_transform: Callable[[Any], Any] | None = None, progress: bool = True,
                 num_workers: int = -1, on_step_end: Callable[[StepInfo], None] | None = None,
                 on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
                 post_training: Callable[[nn.Module], Mapping[str, Any]] | None = None) -> None:
        self.dist = dist or DistContext()
        self.model = model.to(self.dist.device)
        self.phases = list(phases)
        self.train_data = dict(train_data) if isinstance(train_data, Mapping) else {DEFAULT_STREAM: train_data}
        self.val_data = (None if val_data is None else
                         dict(val_data) if isinstance(val_data, Mapping) else {DEFAULT_STREAM: val_data})
        self.config = config
        self.settings = [PhaseSettings.from_config(config, p.name) for p in self.phases]
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.train_transform = train_transform
        self.progress = progress and self.dist.is_main
        self.num_workers = num_workers
        self.on_step_end, self.on_epoch_end = on_step_end, on_epoch_end
        self.post_training = post_training
        self.post_training_info: dict[str, Any] = {}
        self.position = Position()
        self.log_rows: list[dict[str, Any]] = []
        self.best: dict[str, dict[str, Any]] = {}
        self._stop_requested = False
        self._resume: dict[str, Any] | None = None
        self._tb: TensorBoardLog | None = None
        self._val_loaders: dict[tuple[str, int, int], Any] = {}
        self._check_phases()

    def _check_phases(self) -> None:
        if not self.phases:
            raise NodulekitError("a model needs at least one training phase")
        for phase in self.phases:
            for split, data in (("training", self.train_data), ("validation", self.val_data or {})):
                missing = [s for s in phase.streams if s not in data]
                if missing and (split == "training" or self.val_data is not None):
                    raise NodulekitError(f"phase {phase.name!r} reads data stream(s) {missing}; the {split} "
                                         f"data has {sorted(data)}")

    # -- public ----------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop after the current step, save a resumable checkpoint (what Ctrl-C does)."""
        self._stop_requested = True

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.run_dir / CHECKPOINTS_DIR if self.run_dir is not None else None

    def fit(self, resume: bool = False) -> FitResult:
        """Run every phase from the start, or from ``last.pt`` of ``run_dir`` when ``resume``."""
        if resume:
            self._load_resume_state()
        else:
            seed_everything(self.settings[0].seed + self.dist.rank)
        if self.dist.is_main and self.run_dir is not None:
            self._tb = TensorBoardLog(self.run_dir / "tensorboard", purge_step=self.position.step or None)
        try:
            with _interrupt_signals(self.request_stop):
                for index in range(self.position.phase_index, len(self.phases)):
                    if not self._run_phase(index):
                        return self._result("interrupted")
            return self._finish()
        finally:
            if self._tb is not None:
                self._tb.close()

    # -- resume ----------------------------------------------------------------------------
    def _load_resume_state(self) -> None:
        if self.checkpoint_dir is None:
            raise NodulekitError("resume needs the run folder")
        payload = load_checkpoint(self.checkpoint_dir / LAST_CHECKPOINT, map_location="cpu")
        self.model.load_state_dict(payload["model"])
        self.position = Position(**payload["position"])
        self.log_rows = [dict(r) for r in payload["log_rows"]]
        self.best = {k: dict(v) for k, v in payload["best"].items()}
        ranks = payload["ranks"]
        if len(ranks) != self.dist.world_size and self.dist.is_main:
            print(f"note: the checkpoint was written by {len(ranks)} process(es), this run has "
                  f"{self.dist.world_size}: global batches are the same, random draws are not")
        payload["rank_state"] = ranks[self.dist.rank % len(ranks)]
        self._resume = payload

    # -- one phase -------------------------------------------------------------------------
    def _run_phase(self, index: int) -> bool:
        """Train phase ``index`` to its end; False when interrupted (checkpoint saved)."""
        phase, settings = self.phases[index], self.settings[index]
        params = select_trainable(self.model, phase.trainable)
        optimizer = build_optimizer(params, settings.optimizer)
        scheduler = build_scheduler(optimizer, settings.scheduler, settings.epochs)
        if is_plateau(scheduler) and plateau_monitor(settings.scheduler)[0] == "val" and self.val_data is None:
            raise NodulekitError(f"phase {phase.name!r}: scheduler.monitor = {settings.scheduler.get('monitor')!r} "
                                 "needs validation data (train with a fold), or monitor a training loss")
        early = EarlyStopping.from_config(settings.early_stopping)
        runner = self._runner(phase, settings)
        streams = self._train_streams(index, phase, settings)
        totals = _Totals()
        resume, self._resume = self._resume, None
        if resume is not None and resume["position"]["phase_index"] == index:
            if resume["optimizer"] is not None:
                optimizer.load_state_dict(resume["optimizer"])
            if scheduler is not None and resume["scheduler"] is not None:
                scheduler.load_state_dict(resume["scheduler"])
            early.load_state_dict(resume["early_stopping"])
            totals = _Totals.from_state(resume["rank_state"]["totals"], self.dist.device)
        if resume is not None:
            self._restore_rank_state(resume["rank_state"])
        pos = self.position
        while pos.epoch < settings.epochs and not early.stopped and (
                pos.batch_in_epoch > 0 or not self._max_steps_reached(settings)):  # finish a started epoch
            interrupted = self._train_epoch(phase, settings, runner, streams, optimizer, totals, params)
            if interrupted:
                self._save_last(optimizer, scheduler, early, totals)
                return False
            row = self._end_epoch(phase, settings, optimizer, scheduler, early, totals)
            totals = _Totals()
            pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
            self._save_last(optimizer, scheduler, early, totals)
            if self.on_epoch_end is not None and self.dist.is_main:
                self.on_epoch_end(row)
            if self.dist.any_true(self._stop_requested):
                return False
        del runner
        if self.dist.distributed:
            gc.collect()  # drop the phase's DDP reducer hooks before the next phase wraps the model
        self._end_phase(index, phase, settings)
        return True

    def _max_steps_reached(self, settings: PhaseSettings) -> bool:
        return settings.max_steps > 0 and self.position.phase_step >= settings.max_steps

    def _runner(self, phase: Phase, settings: PhaseSettings) -> nn.Module:
        runner: nn.Module = StepModule(self.model, phase.step)
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            runner = DDP(runner, device_ids=device_ids, find_unused_parameters=settings.find_unused_parameters)
        if settings.compile:
            runner = torch.compile(runner)
        return runner

    def _train_streams(self, index: int, phase: Phase, settings: PhaseSettings) -> dict[str, _Stream]:
        streams = {}
        for number, name in enumerate(phase.streams):
            dataset = self.train_data[name]
            sampler = EpochBatchSampler(len(dataset), settings.batch_size_of(name), shuffle=True,
                                        seed=settings.seed + 7919 * number + 1_000_003 * index,
                                        rank=self.dist.rank, world_size=self.dist.world_size,
                                        drop_last=settings.drop_last)
            loader = make_loader(dataset, sampler, num_workers=self.num_workers,
                                 pin_memory=self.dist.device.type == "cuda")
            streams[name] = _Stream(dataset, sampler, loader)
        return streams

    def _next_batch(self, phase: Phase, streams: Mapping[str, _Stream], totals: "_Totals") -> Any:
        """The next training batch (or ``{stream: batch}``) on the device, augmented; the time spent
        waiting for the loaders is added to ``totals.data_seconds``."""
        batches = {}
        for name, stream in streams.items():
            waited = time.perf_counter()
            host_batch = stream.next()
            totals.data_seconds += time.perf_counter() - waited
            batch = to_device(host_batch, self.dist.device)
            if phase.augment and self.train_transform is not None:
                batch = self.train_transform(batch)
            batches[name] = batch
        return batches[phase.data] if isinstance(phase.data, str) else batches

    # -- one epoch -------------------------------------------------------------------------
    def _train_epoch(self, phase: Phase, settings: PhaseSettings, runner: nn.Module, streams: Mapping[str, _Stream],
                     optimizer: torch.optim.Optimizer, totals: "_Totals", params: list[nn.Parameter]) -> bool:
        """Train until the epoch ends or max_steps; True when stopped by an interrupt."""
        pos = self.position
        for stream in streams.values():
            stream.start(pos.epoch, pos.batch_in_epoch)
        first = next(iter(streams.values()))
        set_train_mode(self.model, phase.frozen_eval)
        total = first.n_batches
        if settings.max_steps > 0:  # the bar (and its ETA) ends where max_steps stops the epoch
            total = min(total, pos.batch_in_epoch + max(0, settings.max_steps - pos.phase_step))
        with _progress(self.progress, f"{phase.name} epoch {pos.epoch + 1}/{settings.epochs}",
                       total, pos.batch_in_epoch) as advance:
            started = time.perf_counter()
            while pos.batch_in_epoch < first.n_batches and not self._max_steps_reached(settings):
                batch = self._next_batch(phase, streams, totals)
                losses = self._optimizer_step(runner, batch, settings, optimizer, params)
                totals.add(losses, _batch_size(batch, phase))
                pos.batch_in_epoch += 1
                pos.phase_step += 1
                pos.step += 1
                advance(losses, pos.phase_step % 20 == 0)
                if self.on_step_end is not None:
                    self.on_step_end(StepInfo(phase.name, pos.epoch, pos.batch_in_epoch, pos.phase_step, pos.step,
                                              {k: float(v) for k, v in losses.items()}))
                if self._stop_agreed(pos.step):
                    totals.seconds += time.perf_counter() - started
                    return True
            if self.dist.device.type == "cuda":
                torch.cuda.synchronize(self.dist.device)
            totals.seconds += time.perf_counter() - started
        return False

    def _stop_agreed(self, step: int) -> bool:
        if not self.dist.distributed:
            return self._stop_requested
        if step % STOP_CHECK_EVERY_STEPS:
            return False
        return self.dist.any_true(self._stop_requested)

    def _optimizer_step(self, runner: nn.Module, batch: Any, settings: PhaseSettings,
                        optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> dict[str, torch.Tensor]:
        with autocast(self.dist.device, settings.precision):
            losses = dict(runner(batch))
        if "loss" not in losses:
            raise NodulekitError(f"the step function returned {sorted(losses)}: it must return the total as 'loss'")
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if settings.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip_norm)
        optimizer.step()
        return {k: v.detach() for k, v in losses.items()}

    def _end_epoch(self, phase: Phase, settings: PhaseSettings, optimizer: torch.optim.Optimizer,
                   scheduler: Any, early: EarlyStopping, totals: "_Totals") -> dict[str, Any]:
        """Validate, schedule, early-stop, save the best weights; returns the log row."""
        pos = self.position
        train = totals.means(self.dist)
        started = time.perf_counter()
        metrics = self._validate(phase, settings) if self.dist.is_main else {}
        val_seconds = time.perf_counter() - started
        lr = float(optimizer.param_groups[0]["lr"])
        plateau = is_plateau(scheduler)
        plateau_value = _plateau_value(settings, train, metrics, phase.name) if plateau and (
            self.dist.is_main or plateau_monitor(settings.scheduler)[0] == "train") else None
        improved = False
        group_updates: dict[str, float] = {}
        if self.dist.is_main and metrics:
            for name in (early.monitor, *settings.keep_best.values()):
                if name not in metrics:
                    raise NodulekitError(f"{name!r} (early_stopping.monitor or keep_best) is not a validation "
                                         f"metric of phase {phase.name!r} (it has {', '.join(sorted(metrics))})")
            improved = early.update(metrics[early.monitor], pos.epoch)
            group_updates = self._group_improvements(phase.name, settings, metrics)
        improved, early_state, plateau_value, group_updates = self.dist.broadcast(
            (improved, early.state_dict(), plateau_value, group_updates))
        early.load_state_dict(early_state)
        if plateau:
            scheduler.step(plateau_value)
        elif scheduler is not None:
            scheduler.step()
        images = train.pop("_images")
        row: dict[str, Any] = {"phase": phase.name, "epoch": pos.epoch + 1, "step": pos.step,
                               **{f"train_{k}": v for k, v in train.items()}, **metrics, "lr": lr,
                               "seconds": totals.seconds + val_seconds, "data_seconds": totals.data_seconds,
                               "images_per_s": images / totals.seconds if totals.seconds > 0 else 0.0}
        self.log_rows.append(row)
        if improved:
            self._save_best(phase, early)
        for group, value in group_updates.items():
            self._save_group_best(phase, group, settings.keep_best[group], value)
        if self.dist.is_main:
            if self.run_dir is not None:
                write_log_csv(self.run_dir / LOG_CSV, self.log_rows)
            if self._tb is not None:
                self._tb.add_row(row)
            self._keep_snapshot(phase, pos.epoch + 1)
        return row

    # -- validation ------------------------------------------------------------------------
    def _validate(self, phase: Phase, settings: PhaseSettings) -> dict[str, float]:
        """Validation metrics (``val_`` names) of the phase; {} without validation data."""
        if self.val_data is None:
            return {}
        makers = {name: self._val_batches(name, settings) for name in phase.streams}
        self.model.eval()
        with torch.no_grad(), autocast(self.dist.device, settings.precision):
            if phase.metrics is not None:
                arg = makers[phase.data]() if isinstance(phase.data, str) else {n: m() for n, m in makers.items()}
                raw = dict(phase.metrics(self.model, arg))
            else:
                raw = self._mean_losses(phase, makers, settings)
        return {(k if k.startswith("val_") else f"val_{k}"): float(v) for k, v in raw.items()}

    def _val_batches(self, stream: str, settings: PhaseSettings) -> Callable[[], Iterator[Any]]:
        assert self.val_data is not None
        dataset = self.val_data[stream]
        local = max(1, settings.batch_size_of(stream) // self.dist.world_size)
        sampler = EpochBatchSampler(len(dataset), local, shuffle=False, seed=settings.seed)
        limit = settings.val_max_batches
        key = (stream, local, limit)
        if key not in self._val_loaders:
            self._val_loaders[key] = make_loader(dataset, sampler, num_workers=0 if limit else self.num_workers,
                                                 pin_memory=self.dist.device.type == "cuda")
        loader = self._val_loaders[key]

        def batches() -> Iterator[Any]:
            for k, batch in enumerate(loader):
                if limit and k >= limit:
                    break
                yield to_device(batch, self.dist.device)

        batches.n_batches = min(sampler.batches_per_epoch(), limit or 10**12)  # type: ignore[attr-defined]
        return batches

    def _mean_losses(self, phase: Phase, makers: Mapping[str, Callable[[], Iterator[Any]]],
                     settings: PhaseSettings) -> dict[str, float]:
        totals = _Totals()
        if isinstance(phase.data, str):
            batches: Iterable[Any] = makers[phase.data]()
        else:
            batches = _cycle_zip(makers, {n: m.n_batches for n, m in makers.items()})  # type: ignore[attr-defined]
        for batch in batches:
            losses = {k: v.detach() for k, v in phase.step(self.model, batch).items()}
            totals.add(losses, _batch_size(batch, phase))
        means = totals.means(DistContext(device=self.dist.device))
        means.pop("_images")
        return means

    # -- checkpoints -----------------------------------------------------------------------
    def _rank_state(self, totals: "_Totals") -> dict[str, Any]:
        transform = self.train_transform
        return {"rng": rng_state(self.dist.device), "totals": totals.state(),
                "transform": transform.state_dict() if hasattr(transform, "state_dict") else None}

    def _restore_rank_state(self, state: Mapping[str, Any]) -> None:
        set_rng_state(state["rng"], self.dist.device)
        if state.get("transform") is not None and hasattr(self.train_transform, "load_state_dict"):
            self.train_transform.load_state_dict(state["transform"])  # type: ignore[union-attr]

    def _save_last(self, optimizer: torch.optim.Optimizer | None, scheduler: Any, early: EarlyStopping | None,
                   totals: "_Totals") -> None:
        ranks = self.dist.gather(self._rank_state(totals))
        if not self.dist.is_main or self.checkpoint_dir is None:
            return
        save_checkpoint(self.checkpoint_dir / LAST_CHECKPOINT, {
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "position": self.position.state_dict(),
            "early_stopping": (early or EarlyStopping()).state_dict(),
            "log_rows": self.log_rows, "best": self.best, "ranks": ranks,
            "config": dict(self.config), "world_size": self.dist.world_size})

    def _weights_payload(self, phase: str, metric: str | None, value: float | None) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "phase": phase, "epoch": self.position.epoch + 1,
                "step": self.position.step, "metric": metric, "value": value, "config": dict(self.config)}

    def _save_best(self, phase: Phase, early: EarlyStopping) -> None:
        """Record the new best on every rank; rank 0 keeps its weights (file, or memory without a run folder)."""
        entry: dict[str, Any] = {"metric": early.monitor, "value": early.best, "epoch": self.position.epoch + 1,
                                 "path": None}
        if self.dist.is_main and self.checkpoint_dir is not None:
            path = self.checkpoint_dir / f"best-{phase.name}.pt"
            save_checkpoint(path, self._weights_payload(phase.name, early.monitor, early.best))
            entry["path"] = path.name
        elif self.dist.is_main:
            entry["state"] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if "groups" in self.best.get(phase.name, {}):
            entry["groups"] = self.best[phase.name]["groups"]
        self.best[phase.name] = entry

    def _group_improvements(self, phase: str, settings: PhaseSettings, metrics: Mapping[str, float]
                            ) -> dict[str, float]:
        """``keep_best`` groups whose metric improved this epoch: {group: value} (rank 0)."""
        import math

        groups = self.best.get(phase, {}).get("groups", {})
        out = {}
        for group, metric in settings.keep_best.items():
            value = float(metrics[metric])
            best = groups.get(group, {}).get("value")
            higher = not metric.endswith("loss")
            if not math.isnan(value) and (best is None or (value > best if higher else value < best)):
                out[group] = value
        return out

    def _save_group_best(self, phase: Phase, group: str, metric: str, value: float) -> None:
        """Keep parameter group ``group``'s weights of this epoch, its ``keep_best`` metric's best."""
        entry: dict[str, Any] = {"metric": metric, "mode": "min" if metric.endswith("loss") else "max",
                                 "value": value, "epoch": self.position.epoch + 1, "path": None}
        if self.dist.is_main:
            state = self.model.state_dict()
            weights = {k: state[k].detach().clone() for k in group_state_keys(self.model, group)}
            if self.checkpoint_dir is not None:
                path = self.checkpoint_dir / f"best-{phase.name}-{group}.pt"
                save_checkpoint(path, {"model": weights, "phase": phase.name, "group": group,
                                       "epoch": entry["epoch"], "step": self.position.step, "metric": metric,
                                       "value": value, "config": dict(self.config)})
                entry["path"] = path.name
            else:
                entry["state"] = weights
        phase_entry = self.best.setdefault(phase.name, {"metric": None, "value": None, "epoch": None, "path": None})
        phase_entry.setdefault("groups", {})[group] = entry

    def _keep_snapshot(self, phase: Phase, epoch: int) -> None:
        every = int(self.config.get("checkpoint", {}).get("keep_every_epochs", 0))
        if every > 0 and epoch % every == 0 and self.checkpoint_dir is not None:
            save_checkpoint(self.checkpoint_dir / f"epoch-{phase.name}-{epoch:04d}.pt",
                            self._weights_payload(phase.name, None, None))

    def _end_phase(self, index: int, phase: Phase, settings: PhaseSettings) -> None:
        """Restore the phase's best weights if asked, then checkpoint the start of the next phase."""
        best = self.best.get(phase.name)
        if settings.load_best_at_end and best is not None:
            if self.dist.is_main:
                if best.get("path") is not None or "state" in best:
                    self.model.load_state_dict(self._best_state(best))
                for group in best.get("groups", {}).values():  # keep_best: each group's own best epoch
                    self.model.load_state_dict(self._best_state(group), strict=False)
            self._broadcast_weights()
        self.position = Position(index + 1, 0, 0, 0, self.position.step)
        self._save_last(None, None, None, _Totals())

    def _best_state(self, entry: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if entry.get("path") is not None and self.checkpoint_dir is not None:
            return load_checkpoint(self.checkpoint_dir / entry["path"], map_location=self.dist.device)["model"]
        return entry["state"]

    def _broadcast_weights(self) -> None:
        """Rank 0's parameters and buffers on every rank (no shared file system needed)."""
        if self.dist.distributed:
            import torch.distributed as torch_dist

            for tensor in self.model.state_dict().values():
                torch_dist.broadcast(tensor, src=0)

    def _finish(self) -> FitResult:
        if self.post_training is not None:
            info: dict[str, Any] = {}
            if self.dist.is_main:
                with torch.no_grad():
                    info = dict(self.post_training(self.model))
            self.post_training_info = self.dist.broadcast(info)
            self._broadcast_weights()
        model_path = None
        if self.dist.is_main and self.checkpoint_dir is not None:
            model_path = self.run_dir / FINAL_MODEL  # type: ignore[operator]
            save_checkpoint(model_path, self._weights_payload(self.phases[-1].name, None, None))
        self.dist.barrier()
        return self._result("complete", model_path)

    def _result(self, status: str, model_path: Path | None = None) -> FitResult:
        last = self.checkpoint_dir / LAST_CHECKPOINT if self.checkpoint_dir is not None else None
        best = {k: _without_state(v) for k, v in self.best.items()}
        return FitResult(status, self.position.step, self.log_rows, best, model_path, last, self.post_training_info)


# -- helpers -----------------------------------------------------------------------------------
def _without_state(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A best-entry without in-memory weights (``state``), its groups likewise."""
    out = {k: v for k, v in entry.items() if k not in ("state", "groups")}
    if "groups" in entry:
        out["groups"] = {g: {k: v for k, v in e.items() if k != "state"} for g, e in entry["groups"].items()}
    return out


def _plateau_value(settings: PhaseSettings, train: Mapping[str, float], metrics: Mapping[str, float],
                   phase: str) -> float:
    """The epoch's value of ``scheduler.monitor``: a mean training loss or a validation metric."""
    kind, name = plateau_monitor(settings.scheduler)
    source = train if kind == "train" else metrics
    if name not in source:
        shown = ", ".join(sorted(f"train_{k}" for k in train if not k.startswith("_")) + sorted(metrics))
        raise NodulekitError(f"scheduler.monitor = {settings.scheduler.get('monitor')!r} is not a metric of phase "
                             f"{phase!r} (it has {shown})")
    return float(source[name])


def group_state_keys(model: nn.Module, group: str) -> list[str]:
    """State-dict keys of a parameter group: its parameters (``model.parameter_groups()[group]``,
    else the parameters named ``group`` or ``group.*``) and the buffers of the modules whose own
    parameters all belong to it (BatchNorm statistics)."""
    groups = model.parameter_groups() if hasattr(model, "parameter_groups") else {}
    if group in groups:
        chosen = {id(p) for p in groups[group]}
    else:
        chosen = {id(p) for n, p in model.named_parameters() if n == group or n.startswith(group + ".")}
    if not chosen:
        known = ", ".join(sorted(groups)) or "parameter-name prefixes"
        raise NodulekitError(f"keep_best names parameter group {group!r}, which has no parameter (known: {known})")
    keys = [name for name, p in model.named_parameters() if id(p) in chosen]
    for prefix, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if own and all(id(p) in chosen for p in own):
            keys += [f"{prefix}.{b}" if prefix else b for b, _ in module.named_buffers(recurse=False)]
    return keys


def _batch_size(batch: Any, phase: Phase) -> int:
    first = batch if isinstance(phase.data, str) else batch[phase.streams[0]]
    return int(first["image"].shape[0]) if isinstance(first, Mapping) and "image" in first else 1


class _Totals:
    """Running sums of one epoch on one process: sample-weighted losses, images, seconds."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.images = 0
        self.seconds = 0.0
        self.data_seconds = 0.0

    def add(self, losses: Mapping[str, torch.Tensor], n: int) -> None:
        for key, value in losses.items():
            term = value.detach().to(torch.float64) * n
            self.sums[key] = self.sums[key] + term if key in self.sums else term
        self.images += n

    def means(self, dist: DistContext) -> dict[str, float]:
        """Sample-weighted means over every process, plus ``_images`` (the global count)."""
        keys = sorted(self.sums)
        local = torch.stack([self.sums[k].to(dist.device) for k in keys] +
                            [torch.tensor(float(self.images), dtype=torch.float64, device=dist.device)])
        total = dist.sum_tensor(local).cpu().tolist()
        images = total[-1]
        out = {k: (v / images if images else float("nan")) for k, v in zip(keys, total[:-1])}
        out["_images"] = images
        return out

    def state(self) -> dict[str, Any]:
        return {"sums": {k: v.detach().cpu() for k, v in self.sums.items()}, "images": self.images,
                "seconds": self.seconds, "data_seconds": self.data_seconds}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], device: torch.device) -> "_Totals":
        out = cls()
        out.sums = {k: v.to(device) for k, v in state["sums"].items()}
        out.images, out.seconds, out.data_seconds = int(state["images"]), float(state["seconds"]), \
            float(state["data_seconds"])
        return out


@contextlib.contextmanager
def _interrupt_signals(request_stop: Callable[[], None]) -> Iterator[None]:
    """First SIGINT/SIGTERM: ``request_stop`` (save and stop at the next step); second: raise."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen = {"count": 0}

    def handler(signum: int, frame: Any) -> None:
        seen["count"] += 1
        if seen["count"] > 1:
            raise KeyboardInterrupt
        request_stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _progress(enabled: bool, description: str, total: int, completed: int) -> Iterator[Callable[..., None]]:
    """A rich progress bar with ETA and the running loss (rank 0 only); yields ``advance``."""
    if not enabled:
        yield lambda losses, show: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                        TextColumn("{task.fields[loss]}"), console=Console(stderr=True), transient=False)
    with progress:
        task = progress.add_task(description, total=total, completed=completed, loss="")

        def advance(losses: Mapping[str, torch.Tensor], show: bool) -> None:
            fields = {"loss": f"loss {float(losses['loss']):.4g}"} if show else {}
            progress.update(task, advance=1, **fields)

        yield advance
