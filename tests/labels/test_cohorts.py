"""nodulekit.labels.cohorts: every preset's rule on constructed rows; custom rules."""
from __future__ import annotations

import math

import pytest

from nodulekit.errors import NodulekitError
from nodulekit.labels.cohorts import PRESETS, CustomRule, apply_cohorts, cohort_rules, parse_interval


def _row(**kw):
    row = {"n_readers": 4, "slice_thickness_mm": 1.25, "slice_spacing_mm": 1.25, "regular_z": True,
           "diameter_mm": 8.0, "malignancy": 4.0, "margin": 4.0, "texture": 5.0, "calcification": 6.0}
    row.update(kw)
    return row


def _in(name, **kw):
    return PRESETS[name].evaluate(_row(**kw))


def test_luna16():
    assert _in("luna16")[0]
    assert not _in("luna16", n_readers=2)[0]
    assert not _in("luna16", slice_thickness_mm=3.0)[0]
    assert not _in("luna16", slice_spacing_mm=2.6)[0]
    assert not _in("luna16", regular_z=False)[0]
    assert _in("luna16", slice_thickness_mm=2.5, slice_spacing_mm=2.5)[0]


def test_mtcnn():
    assert _in("mtcnn", malignancy=2.5) == (True, {"label_mtcnn_malignancy": 0})
    assert _in("mtcnn", malignancy=3.5) == (True, {"label_mtcnn_malignancy": 1})
    assert _in("mtcnn", malignancy=3.0) == (False, {"label_mtcnn_malignancy": -1})
    assert not _in("mtcnn", n_readers=2)[0] and not _in("mtcnn", slice_thickness_mm=3.0)[0]
    assert not _in("mtcnn", malignancy=math.nan)[0]


def test_mtnet():
    assert _in("mtnet", malignancy=2.0) == (True, {"label_mtnet_malignancy": 0})
    assert _in("mtnet", malignancy=4.0, n_readers=1) == (True, {"label_mtnet_malignancy": 1})
    for excluded in (2.5, 3.0, 3.5):
        assert not _in("mtnet", malignancy=excluded)[0]
    assert not _in("mtnet", diameter_mm=2.9)[0] and not _in("mtnet", diameter_mm=25.5)[0]
    assert _in("mtnet", diameter_mm=25.0)[0] and _in("mtnet", diameter_mm=3.0)[0]


def test_msunet():
    ok, labels = _in("msunet", malignancy=3.5, margin=4.0, texture=2.0, calcification=5.5)
    assert ok and labels == {"label_msunet_malignancy": 0, "label_msunet_margin": 1,
                             "label_msunet_texture": 0, "label_msunet_calcification": 0}
    assert _in("msunet", calcification=6.0)[1]["label_msunet_calcification"] == 1
    assert not _in("msunet", n_readers=1)[0] and _in("msunet", n_readers=2)[0]


def test_custom_rule_and_apply():
    custom = CustomRule(min_readers=2, max_spacing_mm=2.0, diameter_mm=(3, 25), label="malignancy",
                        benign="1-2", malignant="4-5")
    rules = cohort_rules(custom)
    rows = [_row(malignancy=1.5, n_readers=2), _row(malignancy=3.0), _row(slice_spacing_mm=2.5)]
    apply_cohorts(rows, rules)
    assert [r["cohort_custom"] for r in rows] == [True, False, False]
    assert rows[0]["label_custom_malignancy"] == 0 and {f"cohort_{n}" for n in PRESETS} <= set(rows[0])
    assert "custom" not in cohort_rules(CustomRule())


def test_intervals_and_errors():
    assert 2.9 in parse_interval("<3") and 3 not in parse_interval("<3")
    assert 4 in parse_interval(">=4") and 6 in parse_interval("6") and 5.5 not in parse_interval("6")
    with pytest.raises(NodulekitError, match="--benign"):
        parse_interval("one-two", "--benign")
    with pytest.raises(NodulekitError, match="--benign"):
        CustomRule(label="malignancy").to_rule()
    with pytest.raises(NodulekitError, match="--label"):
        CustomRule(label="size", benign="1", malignant="2").to_rule()
