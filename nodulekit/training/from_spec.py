"""Engine phases, data streams and defaults from a registered :class:`~nodulekit.models.registry.ModelSpec`.

What is read from the spec (nodulekit/models/registry.py):

- ``factory(config["model"])`` builds the module; ``model.parameter_groups()`` -> {group: params}
  gives each phase's trainable set (``PhaseSpec.trains``); everything else is frozen.
- ``phases(config)`` -> PhaseSpecs, run in order: ``losses`` {output: weight} chooses the outputs
  trained (an output with weight 0 is not); ``epochs`` is the phase's default epoch count.
- ``outputs[o].task`` groups outputs by task; one *data stream* per task, named after it, with
  the batch size ``config["batch_size"][task]`` (or one number for all). An output is a
  segmentation output when ``output_shapes`` gives it spatial axes; its task's stream is every
  selected patch and its target the mask; otherwise a classification task: patches whose label
  (``data.labels[task]``, default ``data.label_column``) is -1 are left out, the target is that label.
- ``loss(outputs, targets, config, weights)`` -> (total, {output: loss}), called once per stream
  with the weights of that stream's outputs; the step returns ``{"loss": sum, **parts}``.
- ``model(image, outputs=[...])`` when ``forward`` accepts ``outputs`` (only what the stream
  needs is computed), else ``model(image)``.

Config defaults filled in (only where the config does not set them; the run's config.toml then
shows them): ``phases.<p>.epochs`` (``train.epochs`` when > 0, else the PhaseSpec's), and
``phases.<p>.early_stopping`` monitor/mode from ``schedule.select_<task>`` (MT-Net: ``jaccard``
for seg, ``auc`` for malignancy) of the phase's first output that has one, as
``val_<output>_<metric>`` (mode max; min for a loss).
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nodulekit.errors import NodulekitError
from nodulekit.training.config import Config, deep_merge
from nodulekit.training.data import DataParams, PatchDataset, split_datasets
from nodulekit.training.phase import Phase
from nodulekit.training.validation import OutputMetrics, combine


def segmentation_outputs(spec: Any, config: Mapping[str, Any]) -> set[str]:
    """Outputs with spatial axes (shape from ``spec.output_shapes`` has more than 2 axes)."""
    shapes = spec.output_shapes(config, 1, tuple(spec.geometry.patch_shape_px))
    return {name for name, shape in shapes.items() if len(shape) > 2}


def task_kinds(spec: Any, config: Mapping[str, Any]) -> dict[str, str]:
    """``{task: "seg" | "cls"}`` from the outputs' shapes."""
    seg = segmentation_outputs(spec, config)
    kinds: dict[str, str] = {}
    for name, output in spec.outputs.items():
        kinds[output.task] = "seg" if name in seg or kinds.get(output.task) == "seg" else "cls"
    return kinds


def phase_tasks(spec: Any, losses: Mapping[str, float]) -> list[str]:
    """The tasks (data streams) of a phase, in the order of its loss outputs."""
    tasks: list[str] = []
    for name, weight in losses.items():
        if name not in spec.outputs:
            raise NodulekitError(f"model {spec.name}: a phase's loss names output {name!r}, not one of "
                                 f"{sorted(spec.outputs)}")
        if weight and spec.outputs[name].task not in tasks:
            tasks.append(spec.outputs[name].task)
    return tasks


# -- config defaults ------------------------------------------------------------------------------
def fill_phase_defaults(spec: Any, config: Mapping[str, Any]) -> Config:
    """``config`` with each phase's epochs and early-stopping monitor filled in where unset."""
    out = deep_merge(config, {})
    phases = out.setdefault("phases", {})
    default_epochs = int(out["train"].get("epochs", 0))
    selects = out.get("schedule", {})
    for p in spec.phases(out):
        table = phases.setdefault(p.name, {})
        table.setdefault("epochs", default_epochs if default_epochs > 0 else int(p.epochs))
        stop = table.setdefault("early_stopping", {})
        if not stop.get("monitor") and not out["early_stopping"].get("monitor"):
            for key, value in _monitor(spec, p.losses, selects).items():
                stop[key] = value if key == "monitor" else stop.get(key, value)
    return out


def _monitor(spec: Any, losses: Mapping[str, float], selects: Mapping[str, Any]) -> dict[str, str]:
    for name, weight in losses.items():
        metric = selects.get(f"select_{spec.outputs[name].task}") if weight else None
        if metric:
            return {"monitor": f"val_{name}_{metric}", "mode": "min" if str(metric).endswith("loss") else "max"}
    return {"monitor": "val_loss", "mode": "min"}


# -- data streams ---------------------------------------------------------------------------------
def stream_params(spec: Any, config: Mapping[str, Any], workdir: Path) -> dict[str, DataParams]:
    """One :class:`DataParams` per task: classification tasks keep labelled patches only."""
    data = config["data"]
    base = DataParams.from_config(data, workdir)
    labels = dict(data.get("labels", {}))
    out = {}
    for task, kind in task_kinds(spec, config).items():
        if kind == "cls":
            out[task] = DataParams(base.stores, labels.get(task, base.label_column), True, base.kinds, base.channels,
                                   base.memory_budget_mb, base.num_workers, base.labels_by_name)
        else:
            out[task] = DataParams(base.stores, base.label_column, False, base.kinds, base.channels,
                                   base.memory_budget_mb, base.num_workers, base.labels_by_name)
    return out


def stream_datasets(spec: Any, config: Mapping[str, Any], workdir: Path, fold: int | None
                    ) -> tuple[dict[str, PatchDataset], dict[str, PatchDataset] | None]:
    """Training and validation datasets per task (identical selections share one dataset)."""
    cache: dict[str, tuple[PatchDataset, PatchDataset | None]] = {}
    train, val = {}, {}
    for task, params in stream_params(spec, config, workdir).items():
        key = repr(params)
        if key not in cache:
            cache[key] = split_datasets(params, fold)
        train[task], val[task] = cache[key]  # type: ignore[assignment]
    return train, (None if fold is None else val)  # type: ignore[return-value]


# -- phases ---------------------------------------------------------------------------------------
def build_phases(spec: Any, config: Mapping[str, Any]) -> list[Phase]:
    """The engine phases of ``spec`` under ``config``."""
    seg_outputs = segmentation_outputs(spec, config)
    kinds = task_kinds(spec, config)
    phases = []
    for p in spec.phases(config):
        weights = {name: float(w) for name, w in p.losses.items() if w}
        tasks = phase_tasks(spec, weights)
        by_task = {t: [o for o in weights if spec.outputs[o].task == t] for t in tasks}
        phases.append(Phase(
            name=p.name, trainable=_groups(tuple(p.trains)), data=tuple(tasks),
            step=SpecStep(spec.loss, config, weights, by_task, kinds),
            metrics=SpecMetrics(spec.loss, config, weights, by_task, kinds, seg_outputs)))
    return phases


class _groups:
    """``trainable`` of a phase: the parameters of the named ``model.parameter_groups()``."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def __call__(self, model: nn.Module) -> list[nn.Parameter]:
        groups = model.parameter_groups() if hasattr(model, "parameter_groups") else {"all": list(model.parameters())}
        unknown = [n for n in self.names if n not in groups]
        if unknown:
            raise NodulekitError(f"phase trains parameter group(s) {unknown}; the model has {sorted(groups)}")
        return [p for n in self.names for p in groups[n]]


def call_model(model: nn.Module, image: torch.Tensor, outputs: list[str]) -> Mapping[str, torch.Tensor]:
    """``model(image, outputs=outputs)`` when ``forward`` takes ``outputs``, else ``model(image)``."""
    try:
        takes_outputs = "outputs" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        takes_outputs = False
    return model(image, outputs=outputs) if takes_outputs else model(image)


def _target(batch: Mapping[str, torch.Tensor], task: str, kind: str) -> torch.Tensor:
    if kind == "seg":
        return batch["mask"]
    return batch[task] if task in batch else batch["label"]


class SpecStep:
    """The step of a spec phase: per stream, forward its outputs and add the spec's loss."""

    def __init__(self, loss: Any, config: Mapping[str, Any], weights: Mapping[str, float],
                 by_task: Mapping[str, list[str]], kinds: Mapping[str, str]) -> None:
        self.loss, self.config, self.weights, self.by_task, self.kinds = loss, config, weights, by_task, kinds

    def __call__(self, model: nn.Module, batches: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        for task, names in self.by_task.items():
            batch = batches[task]
            outputs = call_model(model, batch["image"], names)
            value, losses = self.loss(outputs, {task: _target(batch, task, self.kinds[task])}, self.config,
                                      {n: self.weights[n] for n in names})
            total = value if total is None else total + value
            parts.update(losses)
        assert total is not None
        return {"loss": total, **parts}


class SpecMetrics:
    """Validation of a spec phase: per stream, a full pass; losses, Dice/Jaccard, AUC/accuracy."""

    def __init__(self, loss: Any, config: Mapping[str, Any], weights: Mapping[str, float],
                 by_task: Mapping[str, list[str]], kinds: Mapping[str, str], seg_outputs: set[str]) -> None:
        self.loss, self.config, self.weights, self.by_task, self.kinds = loss, config, weights, by_task, kinds
        self.seg_outputs = seg_outputs

    def __call__(self, model: nn.Module, batches: Mapping[str, Any]) -> dict[str, Any]:
        accumulators = []
        for task, names in self.by_task.items():
            acc = {n: OutputMetrics(n, n in self.seg_outputs) for n in names}
            for batch in batches[task]:
                outputs = call_model(model, batch["image"], names)
                target = _target(batch, task, self.kinds[task])
                _, losses = self.loss(outputs, {task: target}, self.config, {n: self.weights[n] for n in names})
                for n in names:
                    acc[n].add(outputs[n], target, losses.get(n))
            accumulators.extend(acc.values())
        return combine(accumulators, self.weights)
