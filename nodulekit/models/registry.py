"""Model registry (after timm's ``_registry.py`` / ``_factory.py``; STYLE principle 3).

Each model module registers one :class:`ModelSpec`::

    @register_model("mtnet")
    def _spec() -> ModelSpec:
        return ModelSpec(name="mtnet", factory=..., config_path=..., ...)

and is then built by name: ``create_model("mtnet", width=0.25)``. A spec declares what the rest
of nodulekit needs to wire a model from data: its paper, tasks, named outputs, input geometry
(the crop preset it consumes), its default config (a TOML file whose every value carries the
paper section beside it, as a trailing comment; :func:`read_config_toml` turns those comments
into ``spec.cite``), its training phases and its loss.

Variants are configuration (STYLE principle 4): ``create_model`` deep-merges overrides into
the default config and rejects unknown keys, so a typo never silently builds the default.
"""
from __future__ import annotations

import copy
import importlib
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodulekit.errors import NodulekitError

if TYPE_CHECKING:  # torch is imported by the model modules, not by the registry
    from torch import nn

#: Modules that register the built-in models, imported on first lookup.
BUILTIN_MODEL_MODULES: tuple[str, ...] = ("nodulekit.models.mtnet", "nodulekit.models.dgnet",
                                         "nodulekit.models.mtcnn", "nodulekit.models.msunet",
                                         "nodulekit.models.munet3d", "nodulekit.models.cascade")

Config = dict[str, Any]


@dataclass(frozen=True)
class PaperRef:
    """The paper a model implements: its file under ``/work/shared/papers`` and citation."""

    file: str
    citation: str
    doi: str = ""


@dataclass(frozen=True)
class InputGeometry:
    """What a model consumes.

    ``crop_preset``: the name of the patch geometry (nodulekit.patches) that produces its inputs;
    ``patch_shape_px``: the patch shape in pixels, (y, x) or (z, y, x); ``channels``: input
    channels; ``intensity``: the intensity convention; ``model_shape_px``: the shape the
    network works at; ``resized_by``: who resizes patch -> model shape (``"model"``: inside
    ``forward``, the engine feeds patches as they are).
    """

    crop_preset: str
    patch_shape_px: tuple[int, ...]
    channels: int
    intensity: str
    model_shape_px: tuple[int, ...]
    resized_by: str = "model"


@dataclass(frozen=True)
class OutputSpec:
    """One named output of ``model(x)``: its task (a key of ``ModelSpec.tasks``) and shape."""

    task: str
    shape: str
    description: str
    kind: str = "logits"


@dataclass(frozen=True)
class PhaseSpec:
    """One training phase, run in the order of ``ModelSpec.phases(config)``.

    ``trains``: the parameter groups optimised (keys of ``model.parameter_groups()``; all other
    parameters are frozen); ``losses``: output name -> weight of its loss in this phase (the
    batches of each output's task come from that task's data, with ``config.batch_size[task]``).
    """

    name: str
    trains: tuple[str, ...]
    losses: Mapping[str, float]
    epochs: int
    description: str
    cite: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """Everything nodulekit knows about a model, declared by the model's module.

    ``factory(model_config)`` builds the ``nn.Module`` from the resolved config's ``model``
    table. ``phases(config)`` and ``output_shapes(config, batch, patch_shape_px)`` depend on
    the resolved config (ablation switches change them). ``loss(outputs, targets, config,
    weights)`` returns ``(total, {output: loss})``. ``test_overrides``: model-table overrides
    that make a tiny instance for the registry-wide tests.

    Optional training hooks (read by :mod:`nodulekit.training.from_spec`; docs/training.md):

    - ``targets(batch) -> {task: tensor}``: loss targets of a training batch (a batch dict of
      :mod:`nodulekit.training.data`) for tasks whose target is not the default one (the
      ``mask`` for a segmentation task, the input ``image`` for an ``"image"`` task, the task's
      label column otherwise). dgnet derives ``nodule`` from the mask; mtcnn reconstructs its input.
    - ``post_training(model, train_batches, config) -> dict``: run once after the last phase,
      with the best weights restored and before ``model.pt`` is written; ``train_batches`` is an
      iterable of the un-augmented training batches on the training device. The dict it returns
      (JSON types) is recorded in run.json as ``post_training``. mtcnn sets its AUC view weights.

    The forward inputs of a batch come from the module: ``model.batch_inputs(batch)`` (keyword
    arguments of ``forward``) when the model has that method, else ``{"image": batch["image"]}``
    (cascade's ``gt_masked`` mode adds the ground-truth mask).
    """

    name: str
    factory: Callable[[Mapping[str, Any]], nn.Module]
    paper: PaperRef
    tasks: Mapping[str, str]
    outputs: Mapping[str, OutputSpec]
    geometry: InputGeometry
    config_path: Path
    phases: Callable[[Mapping[str, Any]], tuple[PhaseSpec, ...]]
    loss: Callable[..., Any]
    output_shapes: Callable[[Mapping[str, Any], int, tuple[int, ...]], dict[str, tuple[int, ...]]]
    test_overrides: Mapping[str, Any] = field(default_factory=dict)
    targets: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    post_training: Callable[[Any, Any, Mapping[str, Any]], dict[str, Any]] | None = None

    @property
    def default_config(self) -> Config:
        """The default config (a fresh deep copy of the TOML file's content)."""
        return copy.deepcopy(_read_config_cached(self.config_path)[0])

    @property
    def cite(self) -> dict[str, str]:
        """Dotted config key -> the paper section (or "choice: ...") written beside it."""
        return dict(_read_config_cached(self.config_path)[1])

    def resolve_config(self, overrides: Mapping[str, Any] | None = None) -> Config:
        """Default config deep-merged with ``overrides`` (a nested dict; unknown keys raise)."""
        return merge_config(self.default_config, overrides or {})

    def build(self, config: Mapping[str, Any] | None = None, **model_overrides: Any) -> nn.Module:
        """Build from ``config`` (a full config; only its ``model`` table is read, merged over
        the default one) and ``model_overrides`` (keys of the ``model`` table)."""
        model_table = self.default_config["model"]
        if config is not None:
            model_table = merge_config(model_table, config.get("model", {}), "model.")
        return self.factory(merge_config(model_table, model_overrides, "model."))

    def param_counts(self, **model_overrides: Any) -> dict[str, int]:
        """Parameter counts of a freshly built model (sub-networks and ``total``)."""
        return param_counts(self.build(**model_overrides))


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str) -> Callable[[Callable[[], ModelSpec]], Callable[[], ModelSpec]]:
    """Decorator: register the :class:`ModelSpec` returned by the decorated function as ``name``."""

    def decorate(make_spec: Callable[[], ModelSpec]) -> Callable[[], ModelSpec]:
        spec = make_spec()
        if spec.name != name:
            raise ValueError(f"register_model({name!r}) got a spec named {spec.name!r}")
        if name in _REGISTRY and _REGISTRY[name].factory is not spec.factory:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = spec
        return make_spec

    return decorate


def _import_builtin_models() -> None:
    for module in BUILTIN_MODEL_MODULES:
        importlib.import_module(module)


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    _import_builtin_models()
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` registered as ``name`` (``NodulekitError`` naming the known ones)."""
    _import_builtin_models()
    if name not in _REGISTRY:
        raise NodulekitError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, config: Mapping[str, Any] | None = None, **overrides: Any) -> nn.Module:
    """Build the model ``name``.

    ``config``: a full (resolved) config, e.g. the one saved with a run; default: the model's
    defaults. ``overrides``: keys of the config's ``model`` table, nested tables as dicts, e.g.
    ``create_model("mtnet", width=0.25, cls={"middle_blocks": 2})``.
    """
    return get_spec(name).build(config, **overrides)


def merge_config(base: Mapping[str, Any], overrides: Mapping[str, Any], where: str = "") -> Config:
    """Deep copy of ``base`` with ``overrides`` merged in; keys not in ``base`` raise.

    A table replaces a table only key by key; a value that is a table in ``base`` must be a
    table in ``overrides`` too.
    """
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        dotted = f"{where}{key}"
        if key not in merged:
            raise NodulekitError(f"unknown config key {dotted!r}; known here: "
                                 f"{', '.join(sorted(merged))}")
        if isinstance(merged[key], dict):
            if not isinstance(value, Mapping):
                raise NodulekitError(f"config key {dotted!r} is a table, got {value!r}")
            merged[key] = merge_config(merged[key], value, f"{dotted}.")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def param_counts(model: nn.Module) -> dict[str, int]:
    """Trainable + frozen parameter counts: each of ``model.subnetworks()`` and ``total``.

    Shared parameters are counted once per sub-network that uses them and once in ``total``.
    """
    counts: dict[str, int] = {}
    subnetworks = getattr(model, "subnetworks", None)
    if callable(subnetworks):
        for name, modules in subnetworks().items():
            counts[name] = count_unique(p for m in modules for p in m.parameters())
    counts["total"] = count_unique(model.parameters())
    return counts


def count_unique(parameters: Iterable[Any]) -> int:
    """Number of scalars in ``parameters``, each tensor counted once (by identity)."""
    seen: dict[int, int] = {}
    for p in parameters:
        seen[id(p)] = p.numel()
    return sum(seen.values())


# -- TOML configs with citations -------------------------------------------------------------

def read_config_toml(path: Path) -> tuple[Config, dict[str, str]]:
    """Parse a model config TOML; return ``(config, cite)``.

    ``cite`` maps each dotted key to the trailing comment on its line (``lr = 1e-4  # 3.2.5``)
    and each table to the comment on its header line. Values must fit on one line and strings
    must not contain ``#`` (checked by the tests of the config files).
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise NodulekitError(f"{path}: not valid TOML: {exc}") from exc
    return config, _citations(text)


@lru_cache(maxsize=None)
def _read_config_cached(path: Path) -> tuple[Config, dict[str, str]]:
    return read_config_toml(path)


def _split_comment(line: str) -> tuple[str, str]:
    """``line`` -> (code, comment) split at the first ``#`` outside a quoted string."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#":
            return line[:i].strip(), line[i + 1:].strip()
    return line.strip(), ""


def _citations(text: str) -> dict[str, str]:
    cite: dict[str, str] = {}
    table = ""
    for raw in text.splitlines():
        code, comment = _split_comment(raw)
        if code.startswith("[") and code.endswith("]"):
            table = code.strip("[]").strip()
            key = table
        elif "=" in code:
            name = code.split("=", 1)[0].strip().strip('"')
            key = f"{table}.{name}" if table else name
        else:
            continue
        if comment:
            cite[key] = comment
    return cite


def model_table(with_counts: bool = True) -> list[dict[str, Any]]:
    """One row per registered model (what ``nodulekit models`` prints): name, paper citation,
    tasks, crop preset, patch shape and, with ``with_counts``, the parameter counts at the
    paper's widths (building each model once on the CPU)."""
    rows: list[dict[str, Any]] = []
    for name in list_models():
        spec = get_spec(name)
        row: dict[str, Any] = {"model": name, "paper": short_citation(spec.paper), "citation": spec.paper.citation,
                               "paper_file": spec.paper.file,
                               "tasks": dict(spec.tasks), "crop_preset": spec.geometry.crop_preset,
                               "patch_shape_px": list(spec.geometry.patch_shape_px)}
        if with_counts:
            row["param_counts"] = spec.param_counts()
        rows.append(row)
    return rows


def short_citation(paper: PaperRef) -> str:
    """``"000 Tang 2024"``: the paper file's number, the first author's surname and the year."""
    import re

    surname = re.split(r"[ ,;.]", paper.citation.strip(), maxsplit=1)[0]
    years = re.findall(r"\b(?:19|20)\d\d\b", paper.citation)
    number = Path(paper.file).name[:3]
    return " ".join(part for part in (number, surname, years[0] if years else "") if part)
