"""Cohort summary like the papers' dataset sections (dict for JSON, Markdown for cohorts.md)."""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Mapping

from nodulekit.labels.cohorts import CohortRule, primary_label_column

DIAMETER_BINS_MM = (3.0, 5.0, 10.0, 20.0, 30.0)


def _diameter_bin(d: float) -> str:
    if d is None or math.isnan(d):
        return "empty consensus"
    edges = (0.0, *DIAMETER_BINS_MM, math.inf)
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo <= d < hi:
            return f"{lo:g}-{hi:g} mm" if not math.isinf(hi) else f">= {lo:g} mm"
    return "?"


def _malignancy_key(v: float) -> str:
    return "unrated" if v is None or math.isnan(v) else f"{v:g}"


def cohort_summary(rows: list[dict[str, Any]], rules: Mapping[str, CohortRule], k: int, selected: str | None,
                   reports: list[dict[str, Any]], n_scans: int) -> dict[str, Any]:
    """Counts per preset, by readers, malignancy, diameter bin, and label balance per fold."""
    presets = {}
    for name, rule in rules.items():
        members = [r for r in rows if r[f"cohort_{name}"]]
        col = primary_label_column(rule)
        presets[name] = {
            "source": rule.source, "rule": rule.describe(),
            "scans": len({r["series_uid"] for r in members}), "patients": len({r["patient_id"] for r in members}),
            "nodules": len(members),
            "labels": {c: dict(sorted(Counter(str(r[c]) for r in members).items())) for c in rule.label_columns()},
            "primary_label": col,
        }
    per_fold = {}
    for f in range(k):
        fold_rows = [r for r in rows if r["fold"] == f]
        per_fold[str(f)] = {"nodules": len(fold_rows), "patients": len({r["patient_id"] for r in fold_rows}),
                            "labels": dict(sorted(Counter(str(r["label"]) for r in fold_rows if r["in_cohort"]).items()))}
    left_out = Counter()
    for rep in reports:
        for key in ("small_nodule", "non_nodule", "unmatched_contours", "reads_without_contours"):
            left_out[key] += rep.get(key, 0)
    return {
        "n_scans": n_scans, "n_scans_with_nodules": len({r["series_uid"] for r in rows}), "n_nodules": len(rows),
        "n_reads_grouped": sum(rep.get("n_reads", 0) for rep in reports),
        "n_ambiguous_groups": sum(len(rep.get("ambiguous", [])) for rep in reports),
        "left_out": dict(left_out), "presets": presets, "selected_cohort": selected,
        "by_readers": dict(sorted(Counter(str(r["n_readers"]) for r in rows).items())),
        "by_malignancy": dict(sorted(Counter(_malignancy_key(r.get("malignancy")) for r in rows).items())),
        "by_diameter": dict(Counter(_diameter_bin(r["diameter_mm"]) for r in rows)),
        "folds": per_fold,
    }


def _table(header: list[str], body: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return lines + [""]


def summary_markdown(summary: dict[str, Any], rules: Mapping[str, CohortRule]) -> str:
    s = summary
    out = ["# Cohorts", "",
           f"{s['n_scans']} scans ({s['n_scans_with_nodules']} with nodules), {s['n_nodules']} nodules from "
           f"{s['n_reads_grouped']} outlined reads; {s['n_ambiguous_groups']} ambiguous group(s) split "
           f"(report.json). Left out: " + ", ".join(f"{k} {v}" for k, v in s["left_out"].items()) + ".", "",
           "## Presets", ""]
    out += _table(["cohort", "scans", "patients", "nodules", "labels", "rule", "source"],
                  [[n, p["scans"], p["patients"], p["nodules"],
                    "; ".join(f"{c.split('_', 2)[-1]} {v}" for c, v in p["labels"].items()) or "-",
                    p["rule"], p["source"]] for n, p in s["presets"].items()])
    for title, key in (("Nodules by number of readers", "by_readers"),
                       ("Nodules by aggregated malignancy", "by_malignancy"),
                       ("Nodules by consensus diameter", "by_diameter")):
        out += [f"## {title}", ""] + _table(["value", "nodules"], [[k, v] for k, v in s[key].items()])
    out += [f"## Folds (selected cohort: {s['selected_cohort'] or 'none'})", ""]
    out += _table(["fold", "patients", "nodules", "labels in cohort"],
                  [[f, v["patients"], v["nodules"], v["labels"]] for f, v in s["folds"].items()])
    return "\n".join(out)
