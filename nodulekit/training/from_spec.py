"""Engine phases, data streams and defaults from a registered :class:`~nodulekit.models.registry.ModelSpec`.

What is read from the spec (nodulekit/models/registry.py; docs/training.md, "What a model must
provide"):

- ``factory(config["model"])`` builds the module; ``model.parameter_groups()`` -> {group: params}
  gives each phase's trainable set (``PhaseSpec.trains``); everything else is frozen.
- ``phases(config)`` -> PhaseSpecs, run in order: ``losses`` {output: weight} chooses the outputs
  trained (an output with weight 0 is not); ``epochs`` is the phase's default epoch count.
- ``outputs[o].task`` groups outputs by task. A task's *kind*: ``"image"`` when
  ``spec.tasks[task] == "image"`` (the target is the input, e.g. mtcnn's reconstruction),
  ``"seg"`` for the task named ``seg`` (the target is the mask), else ``"cls"`` (the target is a
  label column: ``data.labels[task]``, default ``data.label_column``).
- Data streams (:func:`data_streams`): with ``batch_size = {task = n, ...}`` (a table) one stream
  per task, named after it, each with its own batch size (MT-Net: the segmentation set and the
  classification set of section 3.2.5); with ``batch_size = n`` each phase reads one stream that
  feeds all the tasks it trains, named ``"+".join(tasks)`` (dgnet ``seg+nodule``, msunet
  ``seg+malignancy+...``). A stream of one classification task keeps the labelled patches only
  (label != -1); any other stream keeps every selected patch (losses skip labels of -1;
  ``data.require_label`` still applies). A label column with a class the task's output does
  not have (a 3-class column, a 2-class head) stops before training (:func:`check_label_classes`).
- Targets of a batch: ``spec.targets(batch)`` for the tasks it returns, the defaults above for
  the others. Inputs: ``model.batch_inputs(batch)`` when the module has it, else
  ``{"image": batch["image"]}``; ``model(**inputs, outputs=[...])`` when ``forward`` accepts
  ``outputs`` (only what the stream trains is computed), else ``model(**inputs)``.
- ``loss(outputs, targets, config, weights)`` -> (total, {part: loss}), called once per stream
  with the weights of that stream's outputs; the step returns ``{"loss": sum, **parts}``.
- ``post_training(model, train_batches, config)`` (optional): :func:`post_training_hook`.

Validation (:class:`SpecMetrics`): per stream, a full pass; ``<part>_loss`` for every loss part,
``loss`` = the loss total, and per output the metrics of its kind
(:mod:`nodulekit.training.validation`) -- for every output the model returns for the stream's
tasks, also untrained ones (mtcnn's fused ``malignancy``).

Config defaults filled in (only where the config does not set them; the run's config.toml then
shows them): ``phases.<p>.epochs`` (``train.epochs`` when > 0, else the PhaseSpec's).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nodulekit.errors import NodulekitError
from nodulekit.training.config import Config, deep_merge
from nodulekit.training.data import DataParams, EpochBatchSampler, PatchDataset, make_loader, split_datasets, to_device
from nodulekit.training.phase import Phase
from nodulekit.training.validation import LossMeans, OutputMetrics

SEG_TASK = "seg"


# -- tasks and streams ----------------------------------------------------------------------------
def task_kinds(spec: Any) -> dict[str, str]:
    """``{task: "seg" | "cls" | "image"}`` (see the module docstring)."""
    return {task: "image" if str(kind) == "image" else "seg" if task == SEG_TASK else "cls"
            for task, kind in spec.tasks.items()}


def phase_tasks(spec: Any, losses: Mapping[str, float]) -> list[str]:
    """The tasks of a phase's weighted loss outputs, in the order of ``spec.tasks`` (the first
    one's stream sets the length of an epoch)."""
    unknown = [name for name in losses if name not in spec.outputs]
    if unknown:
        raise NodulekitError(f"model {spec.name}: a phase's loss names output(s) {unknown}, not of "
                             f"{sorted(spec.outputs)}")
    used = {spec.outputs[name].task for name, weight in losses.items() if weight}
    return [task for task in spec.tasks if task in used]


def _weights(losses: Mapping[str, float]) -> dict[str, float]:
    return {name: float(w) for name, w in losses.items() if w}


def phase_streams(config: Mapping[str, Any], tasks: list[str]) -> dict[str, tuple[str, ...]]:
    """``{stream: tasks}`` a phase training ``tasks`` reads (see :func:`data_streams`)."""
    if isinstance(config["batch_size"], Mapping):
        missing = [t for t in tasks if t not in config["batch_size"]]
        if missing:
            raise NodulekitError(f"batch_size is a table by task but has no entry for {missing} "
                                 f"(it has {', '.join(config['batch_size'])})")
        return {t: (t,) for t in tasks}
    return {"+".join(tasks): tuple(tasks)}


def data_streams(spec: Any, config: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Every data stream of the model's phases under ``config``: ``{stream: tasks}``."""
    out: dict[str, tuple[str, ...]] = {}
    for p in spec.phases(config):
        out.update(phase_streams(config, phase_tasks(spec, _weights(p.losses))))
    return out


# -- config defaults ------------------------------------------------------------------------------
def fill_phase_defaults(spec: Any, config: Mapping[str, Any]) -> Config:
    """``config`` with each phase's epochs filled in where unset."""
    out = deep_merge(config, {})
    phases = out.setdefault("phases", {})
    default_epochs = int(out["train"].get("epochs", 0))
    for p in spec.phases(out):
        table = phases.setdefault(p.name, {})
        table.setdefault("epochs", default_epochs if default_epochs > 0 else int(p.epochs))
    return out


# -- data -----------------------------------------------------------------------------------------
def stream_params(spec: Any, config: Mapping[str, Any], workdir: Path) -> dict[str, DataParams]:
    """One :class:`DataParams` per stream: a stream of one classification task keeps labelled patches."""
    data = config["data"]
    base = DataParams.from_config(data, workdir)
    labels = dict(data.get("labels", {}))
    kinds = task_kinds(spec)
    out = {}
    for stream, tasks in data_streams(spec, config).items():
        if len(tasks) == 1 and kinds[tasks[0]] == "cls":
            out[stream] = DataParams(base.stores, labels.get(tasks[0], base.label_column), True, base.kinds,
                                     base.channels, base.memory_budget_mb, base.num_workers, base.labels_by_name)
        else:
            out[stream] = base
    return out


def stream_datasets(spec: Any, config: Mapping[str, Any], workdir: Path, fold: int | None
                    ) -> tuple[dict[str, PatchDataset], dict[str, PatchDataset] | None]:
    """Training and validation datasets per stream (identical selections share one dataset)."""
    cache: dict[str, tuple[PatchDataset, PatchDataset | None]] = {}
    train, val = {}, {}
    streams = data_streams(spec, config)
    for stream, params in stream_params(spec, config, workdir).items():
        key = repr(params)
        if key not in cache:
            cache[key] = split_datasets(params, fold)
        train[stream], val[stream] = cache[key]  # type: ignore[assignment]
        check_label_classes(spec, config, streams[stream], [d for d in cache[key] if d is not None])
    return train, (None if fold is None else val)  # type: ignore[return-value]


def output_classes(spec: Any, config: Mapping[str, Any]) -> dict[str, int]:
    """``{classification task: classes}`` of the outputs (binary logits ``(B,)``: 2; ``(B, ..., C)``: C)."""
    kinds = task_kinds(spec)
    shapes = spec.output_shapes(config, 1, tuple(spec.geometry.patch_shape_px))
    out: dict[str, int] = {}
    for name, shape in shapes.items():
        task = spec.outputs[name].task if name in spec.outputs else None
        if task is not None and kinds.get(task) == "cls":
            n = 2 if len(shape) == 1 else int(shape[-1])
            out[task] = min(out.get(task, n), n)
    return out


def check_label_classes(spec: Any, config: Mapping[str, Any], tasks: Iterable[str],
                        datasets: Iterable[PatchDataset]) -> None:
    """A one-line error when a label column holds a class the model has no output for (e.g. the
    3-class ``label_luna16_texture`` with ``model.n_classes = 2``), instead of a cross-entropy
    index error mid-training. Models with their own ``targets`` hook are not checked."""
    if getattr(spec, "targets", None) is not None:
        return
    classes = output_classes(spec, config)
    for task in tasks:
        if task not in classes:
            continue
        for dataset in datasets:
            labels = dataset.labels.get(task, dataset.labels["label"])
            top = int(labels.max(initial=-1))
            if top >= classes[task]:
                column = dataset.labels_by_name.get(task, dataset.label_column)
                raise NodulekitError(f"label column {column!r} has class {top}, but {spec.name}'s '{task}' output has "
                                     f"{classes[task]} classes; give the model {top + 1} or more (cascade: --set "
                                     f"model.n_classes={top + 1})")


# -- phases ---------------------------------------------------------------------------------------
def build_phases(spec: Any, config: Mapping[str, Any]) -> list[Phase]:
    """The engine phases of ``spec`` under ``config``."""
    kinds = task_kinds(spec)
    phases = []
    for p in spec.phases(config):
        weights = _weights(p.losses)
        streams = phase_streams(config, phase_tasks(spec, weights))
        by_stream = {s: [o for o in weights if spec.outputs[o].task in tasks] for s, tasks in streams.items()}
        phases.append(Phase(
            name=p.name, trainable=_groups(tuple(p.trains)), data=tuple(streams),
            step=SpecStep(spec, config, weights, by_stream, streams, kinds),
            metrics=SpecMetrics(spec, config, weights, by_stream, streams, kinds)))
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


def batch_inputs(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keyword arguments of ``model.forward`` for a batch: ``model.batch_inputs(batch)`` or the image."""
    make = getattr(model, "batch_inputs", None)
    return dict(make(batch)) if callable(make) else {"image": batch["image"]}


def _takes_outputs(model: nn.Module) -> bool:
    try:
        return "outputs" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def call_model(model: nn.Module, inputs: Mapping[str, torch.Tensor] | torch.Tensor,
               outputs: list[str]) -> Mapping[str, torch.Tensor]:
    """``model(**inputs, outputs=outputs)`` when ``forward`` takes ``outputs``, else ``model(**inputs)``
    (``inputs`` may be the image tensor alone)."""
    kwargs = {"image": inputs} if isinstance(inputs, torch.Tensor) else dict(inputs)
    return model(**kwargs, outputs=outputs) if _takes_outputs(model) else model(**kwargs)


def batch_targets(spec: Any, batch: Mapping[str, torch.Tensor], tasks: Iterable[str],
                  kinds: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Loss targets of ``tasks`` for a batch: ``spec.targets(batch)``, else by the task's kind."""
    given = dict(spec.targets(batch)) if getattr(spec, "targets", None) is not None else {}
    out = {}
    for task in tasks:
        if task in given:
            out[task] = given[task]
        elif kinds[task] == "seg":
            out[task] = batch["mask"]
        elif kinds[task] == "image":
            out[task] = batch["image"]
        else:
            out[task] = batch[task] if task in batch else batch["label"]
    return out


class SpecStep:
    """The step of a spec phase: per stream, forward its outputs and add the spec's loss."""

    def __init__(self, spec: Any, config: Mapping[str, Any], weights: Mapping[str, float],
                 by_stream: Mapping[str, list[str]], streams: Mapping[str, tuple[str, ...]],
                 kinds: Mapping[str, str]) -> None:
        self.spec, self.config, self.weights, self.by_stream = spec, config, weights, by_stream
        self.streams, self.kinds = streams, kinds

    def __call__(self, model: nn.Module, batches: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        for stream, names in self.by_stream.items():
            batch = batches[stream]
            outputs = call_model(model, batch_inputs(model, batch), names)
            targets = batch_targets(self.spec, batch, self.streams[stream], self.kinds)
            value, losses = self.spec.loss(outputs, targets, self.config, {n: self.weights[n] for n in names})
            total = value if total is None else total + value
            parts.update(losses)
        assert total is not None
        return {"loss": total, **parts}


class SpecMetrics:
    """Validation of a spec phase: per stream, a full pass; losses, Dice/Jaccard, AUC/accuracy."""

    def __init__(self, spec: Any, config: Mapping[str, Any], weights: Mapping[str, float],
                 by_stream: Mapping[str, list[str]], streams: Mapping[str, tuple[str, ...]],
                 kinds: Mapping[str, str]) -> None:
        self.spec, self.config, self.weights, self.by_stream = spec, config, weights, by_stream
        self.streams, self.kinds = streams, kinds

    def __call__(self, model: nn.Module, batches: Mapping[str, Iterable[Mapping[str, torch.Tensor]]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        total = 0.0
        for stream, names in self.by_stream.items():
            tasks = self.streams[stream]
            acc: dict[str, OutputMetrics] = {}
            losses = LossMeans()
            for batch in batches[stream]:
                outputs = call_model(model, batch_inputs(model, batch), names)
                targets = batch_targets(self.spec, batch, tasks, self.kinds)
                value, parts = self.spec.loss(outputs, targets, self.config, {n: self.weights[n] for n in names})
                losses.add(value, parts, int(batch["image"].shape[0]))
                for name, logits in outputs.items():
                    task = self.spec.outputs[name].task if name in self.spec.outputs else None
                    if task in tasks:
                        if name not in acc:
                            acc[name] = OutputMetrics(name, self.kinds[task])
                        acc[name].add(logits, targets.get(task))
            for metrics in acc.values():
                out.update(metrics.result())
            means = losses.result()
            total += means.pop("loss", 0.0)
            out.update(means)
        out["loss"] = total
        return out


# -- after training -------------------------------------------------------------------------------
def original_batches(params: DataParams, fold: int | None, batch_size: int,
                     device: torch.device) -> Callable[[], Iterator[dict[str, torch.Tensor]]]:
    """A maker of the un-augmented training batches (``fold``'s training split, originals only),
    in order, on ``device``: what ``spec.post_training`` reads."""
    dataset = PatchDataset.from_stores(params, "all" if fold is None else "train", fold, originals_only=True)

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        sampler = EpochBatchSampler(len(dataset), max(1, batch_size), shuffle=False, seed=0)
        for batch in make_loader(dataset, sampler, num_workers=0):
            yield to_device(batch, device)

    return batches


def post_training_hook(spec: Any, config: Mapping[str, Any], workdir: Path, fold: int | None,
                       device: torch.device) -> Callable[[nn.Module], Mapping[str, Any]] | None:
    """The Trainer's ``post_training`` for ``spec`` (None when the spec has none): the spec's hook
    on the un-augmented training batches of the last phase's first stream."""
    hook = getattr(spec, "post_training", None)
    if hook is None:
        return None
    last = spec.phases(config)[-1]
    stream, _ = next(iter(phase_streams(config, phase_tasks(spec, _weights(last.losses))).items()))
    params = stream_params(spec, config, workdir)[stream]
    batch = config["batch_size"]
    size = int(batch[stream]) if isinstance(batch, Mapping) else int(batch)

    def run(model: nn.Module) -> Mapping[str, Any]:
        return hook(model, original_batches(params, fold, size, device)(), config)

    return run
