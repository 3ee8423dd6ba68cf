"""The papers' reported numbers: plausible values, a source for each, keys the tables know."""
from __future__ import annotations

from nodulekit.evaluation.paper_numbers import ANY_TASK, LIDC, PAPER_RESULTS, paper_result
from nodulekit.evaluation.rows import SEG_METRICS
from nodulekit.evaluation.tables import BREAKDOWN_METRICS, CHARACTERISTIC_CATEGORIES, CLASS_METRICS


def all_values(result):
    yield from result.segmentation.items()
    for values in result.classification.values():
        yield from values.items()
    for values in result.by_characteristic.values():
        yield from values.items()


def test_every_value_has_a_source_and_a_plausible_range():
    for model, results in PAPER_RESULTS.items():
        for result in results:
            assert result.model == model and result.paper and result.protocol
            for key, value in all_values(result):
                assert value.source, (model, key)
                if key.endswith("_mm"):
                    assert 0 < value.value < 50
                else:
                    assert 0 < value.value <= 1, (model, key, value)  # fractions, not percent


def test_metric_keys_are_those_of_the_tables():
    for results in PAPER_RESULTS.values():
        for result in results:
            assert set(result.segmentation) <= set(SEG_METRICS)
            for task, values in result.classification.items():
                assert set(values) <= set(CLASS_METRICS)
            for key, values in result.by_characteristic.items():
                assert key in {(c, k) for c, k, _, _ in CHARACTERISTIC_CATEGORIES}
                assert set(values) <= set(BREAKDOWN_METRICS)


def test_labels_say_which_data():
    on_lidc = {m for m, rs in PAPER_RESULTS.items() if rs[0].dataset == LIDC}
    assert on_lidc == {"mtnet", "mtcnn", "msunet", "munet3d"}
    for result in (r for rs in PAPER_RESULTS.values() for r in rs):
        assert result.label.startswith("paper") and "LIDC-IDRI" in result.label  # "real LIDC-IDRI" or "not LIDC-IDRI"


def test_known_headline_numbers():
    assert paper_result("mtnet").segmentation["dice"].value == 0.832
    assert paper_result("mtnet").classification["malignancy"]["auc"].value == 0.935
    assert paper_result("mtcnn").classification["malignancy"]["auc"].value == 0.9559
    assert paper_result("msunet").segmentation["dice"].sd == 0.1296
    assert paper_result("dgnet").segmentation["hd_mm"].value == 3.188
    assert paper_result("cascade").task_values("whatever", 1) == paper_result("cascade").classification[ANY_TASK]
    assert paper_result("mtnet", "without Coarse Seg-net (ablation)").classification["malignancy"]["auc"].value == 0.906
    assert paper_result("nope") is None
