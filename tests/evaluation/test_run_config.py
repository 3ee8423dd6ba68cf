"""A run's config beside its model's defaults (evaluation.run_config) and the report's folded table."""
from __future__ import annotations

import io

from nodulekit.evaluation.preview import render_preview_png
from nodulekit.evaluation.render import Section, Table, render_html, render_markdown
from nodulekit.evaluation.report import config_tables
from nodulekit.evaluation.run_config import config_value_text, flatten, model_defaults, split_config


def _run_config(model: str, overrides: list[str]) -> dict:
    """The config.toml a run of ``model`` trained with ``--set overrides`` records (as build_config makes it)."""
    from nodulekit.models.registry import get_spec
    from nodulekit.training.config import resolve_config
    from nodulekit.training.from_spec import fill_phase_defaults

    spec = get_spec(model)
    config = fill_phase_defaults(spec, resolve_config([spec.default_config], overrides=overrides))
    config["data"]["stores"] = [f"crop/{spec.geometry.crop_preset}"]  # filled in when training starts
    return config


def test_changed_keys_are_exactly_the_overrides():
    overrides = ["model.width=0.5", "loss.joint_seg_weight=0.7", "model.joint_finetune=false",
                 "phases.joint.optimizer.lr=2e-5", "augmentation.on_the_fly.flip.p=0.25"]
    config = _run_config("cascade", overrides)
    changed, same = split_config(config, model_defaults("cascade"))
    assert {c.key for c in changed} == {"model.joint_finetune", "model.width", "loss.joint_seg_weight",
                                        "phases.joint.optimizer.lr", "augmentation.on_the_fly.flip.p"}
    width = next(c for c in changed if c.key == "model.width")
    assert (width.value, width.default, width.in_defaults) == (0.5, 1.0, True) and width.source.startswith("choice:")
    assert set(same) | {c.key for c in changed} == set(flatten(config))
    assert same["data.stores"] == ["crop/cascade"]  # chosen at training time: not a change
    assert split_config(_run_config("mtnet", []), model_defaults("mtnet"))[0] == []


def test_values_compare_as_config_values():
    defaults = model_defaults("cascade")
    config = _run_config("cascade", [])
    config["loss"]["joint_seg_weight"] = 1  # an int where the default is the float 1.0: the same
    config["model"]["joint_finetune"] = 1  # not the bool true
    config["model"]["extra"] = "x"  # not a key of the defaults
    changed = {c.key: c for c in split_config(config, defaults)[0]}
    assert set(changed) == {"model.joint_finetune", "model.extra"} and not changed["model.extra"].in_defaults
    assert changed["model.extra"].default is None and changed["model.extra"].source == ""
    assert [config_value_text(v) for v in (True, 1e-5, ["a"], "", "adam", 3)] == \
        ["true", "1e-05", '["a"]', '""', "adam", "3"]


def test_unregistered_model_gets_one_table_of_every_key():
    assert model_defaults("no-such-model") is None
    (table,) = config_tables("no-such-model", {"model": {"threshold": 0.5}, "data": {"label_column": "label"}})
    assert table.rows == [["model.threshold = 0.5"], ["data.label_column = label"]] and not table.collapsed


def test_config_tables_changed_first_then_folded():
    changed, rest = config_tables("cascade", _run_config("cascade", ["model.width=0.5"]))
    assert changed.header[0] == "config key (changed from the paper defaults)" and not changed.collapsed
    assert changed.rows == [["model.width", "0.5", "1.0", changed.rows[0][3]]]
    assert rest.collapsed == f"The other {len(rest.rows)} config keys (unchanged from the paper defaults)"
    (only,) = [b for b in config_tables("cascade", _run_config("cascade", [])) if not getattr(b, "collapsed", "")]
    assert "every key has the model's default" in only.text


def test_collapsed_table_renders_folded():
    sections = [Section("S", [Table(["a", "b"], [["1", "2"]], "shown"),
                              Table(["key", "value"], [["x.y", "3"]], collapsed="The other 1 keys")])]
    html = render_html("t", sections)
    assert "<details><summary>The other 1 keys</summary><table>" in html
    assert html.index("shown") < html.index("<details>") and html.count("<details>") == 1
    assert "<details>" not in html.split("<details>")[0] and "x.y" in html.split("<details>")[1]
    markdown = render_markdown("t", sections)
    assert "#### The other 1 keys\n\n| key | value |\n|---|---|\n| x.y | 3 |" in markdown
    import matplotlib.image as mpimg

    assert mpimg.imread(io.BytesIO(render_preview_png("t", sections)), format="png").shape[0] > 50
