"""nodulekit.labels.cohorts: every preset's rule on constructed rows; custom rules."""
from __future__ import annotations

import math

import pytest

from nodulekit.errors import NodulekitError
from nodulekit.labels.cohorts import (PRESETS, TEXTURE3, CustomRule, Interval, LabelSpec, apply_cohorts,
                                     cohort_primary_label, cohort_rules, parse_interval, primary_label_column)


def _row(**kw):
    row = {"n_readers": 4, "slice_thickness_mm": 1.25, "slice_spacing_mm": 1.25, "regular_z": True,
           "diameter_mm": 8.0, "malignancy": 4.0, "margin": 4.0, "texture": 5.0, "calcification": 6.0}
    row.update(kw)
    return row


def _in(name, **kw):
    return PRESETS[name].evaluate(_row(**kw))


def test_luna16():
    assert _in("luna16") == (True, {"label_luna16_texture": 2})
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


# -- texture as three classes ----------------------------------------------------------------------
@pytest.mark.parametrize("rating, expected", [
    (1.0, 0), (1.5, 0), (2.0, 0),                    # 1 "Non-Solid/GGO", 2 "Non-Solid/Mixed"
    (2.0001, 1), (2.5, 1), (3.0, 1), (3.5, 1), (3.75, 1), (3.9999, 1),  # 3 "Part Solid/Mixed"; split medians
    (4.0, 2), (4.5, 2), (5.0, 2),                    # 4 "Solid/Mixed", 5 "Solid"
    (math.nan, -1), (0.5, -1), (5.5, -1),            # not rated; outside the 1-5 scale
])
def test_texture3_bins_of_the_aggregated_rating(rating, expected):
    assert TEXTURE3.label({"texture": rating}) == expected
    assert TEXTURE3.n_classes == 3 and TEXTURE3.characteristic == "texture"


def test_texture3_agrees_with_the_binary_texture_on_solid():
    """'solid' (class 2) is the msunet preset's texture 1 (>= 4), over medians and means alike."""
    binary = PRESETS["msunet"].labels[2]
    for rating in [1 + k / 12 for k in range(49)]:
        assert (TEXTURE3.label({"texture": rating}) == 2) == (binary.label({"texture": rating}) == 1)


def test_luna16_texture_is_an_extra_label_not_the_primary():
    rule = PRESETS["luna16"]
    assert primary_label_column(rule) is None and rule.label_columns() == ["label_luna16_texture"]
    assert _in("luna16", texture=math.nan) == (True, {"label_luna16_texture": -1})  # never excludes
    assert _in("luna16", texture=3.5)[1] == {"label_luna16_texture": 1}
    assert "extra label texture: 1-2 -> 0 non-solid, (2, 4) -> 1 part-solid, 4-5 -> 2 solid" in rule.describe()
    columns = ["cohort_luna16", "label_luna16_texture", "cohort_mtcnn", "label_mtcnn_malignancy",
               "cohort_custom", "label_custom_texture"]
    assert cohort_primary_label("luna16", columns) is None
    assert cohort_primary_label("mtcnn", columns) == "label_mtcnn_malignancy"
    assert cohort_primary_label("custom", columns) == "label_custom_texture"


def test_malignancy_labels_are_unchanged_by_the_general_spec():
    for value, expected in ((2.5, 0), (3.0, -1), (3.5, 1), (math.nan, -1)):
        assert PRESETS["mtcnn"].labels[0].label({"malignancy": value}) == expected
    assert PRESETS["mtcnn"].labels[0].text() == "malignancy: <3 -> 0, >3 -> 1"
    assert PRESETS["mtnet"].labels[0].text() == "malignancy: 1-2 -> 0, 4-5 -> 1"


def test_custom_rule_with_the_named_texture3_label():
    rule = CustomRule(min_readers=3, label="texture3").to_rule()
    assert rule.labels == (TEXTURE3,) and rule.label_columns() == ["label_custom_texture"]
    rows = [_row(n_readers=3, texture=t) for t in (1.0, 3.0, 4.5, math.nan)]
    apply_cohorts(rows, cohort_rules(CustomRule(min_readers=3, label="texture3")))
    assert [r["label_custom_texture"] for r in rows] == [0, 1, 2, -1]
    assert [r["cohort_custom"] for r in rows] == [True, True, True, False]  # the primary label is required
    with pytest.raises(NodulekitError, match="texture3 has its own classes"):
        CustomRule(label="texture3", benign="1-2", malignant="4-5").to_rule()
    with pytest.raises(NodulekitError, match="named label: texture3"):
        CustomRule(label="texture4", benign="1", malignant="2").to_rule()


def test_label_spec_classes_must_not_overlap():
    with pytest.raises(NodulekitError, match="class 0 \\(1-3\\) and class 1 \\(3-5\\) overlap"):
        LabelSpec.binary("malignancy", Interval(1, 3), Interval(3, 5))
    with pytest.raises(NodulekitError, match="overlap"):
        CustomRule(label="malignancy", benign="<=3", malignant=">=3").to_rule()
    LabelSpec.binary("malignancy", Interval(hi=3, hi_closed=False), Interval(lo=3))  # touching, not overlapping
    with pytest.raises(NodulekitError, match="at least 2 classes"):
        LabelSpec("texture", (Interval(1, 5),))
    assert Interval(2, 4, lo_closed=False).text() == "(2, 4]" and Interval(1, 2).text() == "1-2"
