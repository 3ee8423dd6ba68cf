"""Training configs: merge, --set parsing and type checks, the TOML writer, phase settings."""
from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest

from nodulekit.errors import InputFileError, NodulekitError
from nodulekit.training.config import (ENGINE_DEFAULTS, apply_overrides, deep_merge, dumps_toml, load_toml,
                                       parse_override, parse_value, phase_config, resolve_config, save_config)


def test_deep_merge_merges_tables_and_replaces_values_without_mutating():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    merged = deep_merge(base, {"a": {"c": [3]}, "e": {"f": True}})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": 1, "e": {"f": True}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    merged["a"]["b"] = 99
    assert base["a"]["b"] == 1


@pytest.mark.parametrize("text, value", [
    ("3e-4", 3e-4), ("1", 1), ("-2", -2), ("0.5", 0.5), (".5", 0.5), ("true", True), ("false", False),
    ("adamw", "adamw"), ('"x y"', "x y"), ("[1, 2]", [1, 2]), ('["augment/mtnet"]', ["augment/mtnet"]),
    ("{p = 0.5}", {"p": 0.5}), ("inf", math.inf),
])
def test_parse_value_types(text, value):
    assert parse_value(text) == value
    assert type(parse_value(text)) is type(value)


def test_parse_override_splits_dotted_keys():
    assert parse_override("optimizer.lr=3e-4") == (["optimizer", "lr"], 3e-4)
    assert parse_override("data.stores=[\"a=b\"]") == (["data", "stores"], ["a=b"])
    with pytest.raises(NodulekitError, match="KEY=VALUE"):
        parse_override("optimizer.lr")
    with pytest.raises(NodulekitError):
        parse_override("optimizer..lr=1")


def test_overrides_check_keys_and_types():
    config = resolve_config([{"model": {"width": 1.0, "fine_layer": True}}])
    out = apply_overrides(config, ["optimizer.lr=3e-4", "model.width=1", "train.max_steps=5",
                                   "optimizer.name=sgd", "phases.fine.optimizer.lr=1e-5", "batch_size=8"])
    assert out["optimizer"]["lr"] == 3e-4 and out["optimizer"]["name"] == "sgd"
    assert out["model"]["width"] == 1.0 and isinstance(out["model"]["width"], float)  # int accepted for float
    assert out["train"]["max_steps"] == 5
    assert out["phases"] == {"fine": {"optimizer": {"lr": 1e-5}}}  # phases is an open table
    assert config["optimizer"]["lr"] == 1e-4  # the input is not changed
    with pytest.raises(NodulekitError, match="unknown key 'lrr'.*lr"):
        apply_overrides(config, ["optimizer.lrr=1"])
    with pytest.raises(NodulekitError, match="expected a bool"):
        apply_overrides(config, ["model.fine_layer=1"])
    with pytest.raises(NodulekitError, match="expected a int"):
        apply_overrides(config, ["train.max_steps=true"])
    with pytest.raises(NodulekitError, match="not a table"):
        apply_overrides(config, ["train.seed.x=1"])
    merged = apply_overrides(config, {"optimizer": {"lr": 0.1}})  # a table merges key by key
    assert merged["optimizer"]["name"] == "adam" and merged["optimizer"]["lr"] == 0.1


def test_toml_writer_round_trips():
    config = resolve_config([{"model": {"seg": {"aspp_rates": [6, 12, 18]}, "name with space": "a\"b\\c\n"},
                              "phases": {"coarse": {"epochs": 3, "optimizer": {"lr": 1e-5}}}}])
    config["misc"] = {"big": 1e300, "tiny": 5e-324, "neg": -0.0, "ninf": -math.inf, "mixed": [1, "a", [2.5]],
                      "inline": [{"a": 1}, {"b": {"c": True}}], "empty": {}}
    text = dumps_toml(config)
    assert tomllib.loads(text) == config
    assert "[phases.coarse.optimizer]" in text and "[train]" in text


def test_save_load_and_resolve_with_files(tmp_path: Path):
    path = tmp_path / "run" / "config.toml"
    save_config(path, ENGINE_DEFAULTS)
    assert load_toml(path) == ENGINE_DEFAULTS
    user = tmp_path / "user.toml"
    user.write_text("[optimizer]\nlr = 0.5\n[train]\nseed = 7\n")
    config = resolve_config([{"optimizer": {"lr": 0.1, "name": "sgd"}}], [user], ["train.seed=8"])
    assert config["optimizer"] == {**ENGINE_DEFAULTS["optimizer"], "name": "sgd", "lr": 0.5}
    assert config["train"]["seed"] == 8
    with pytest.raises(InputFileError, match="not found"):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("a = [")
    with pytest.raises(InputFileError, match="not valid TOML"):
        load_toml(bad)


def test_phase_config_overrides_top_level_settings():
    config = resolve_config([{"batch_size": {"seg": 16, "malignancy": 32}, "train": {"epochs": 100},
                              "phases": {"fine": {"epochs": 5, "optimizer": {"lr": 1e-5}}}}])
    fine, coarse = phase_config(config, "fine"), phase_config(config, "coarse")
    assert fine["epochs"] == 5 and fine["optimizer"]["lr"] == 1e-5 and fine["optimizer"]["name"] == "adam"
    assert coarse["epochs"] == 100 and coarse["optimizer"]["lr"] == 1e-4
    assert coarse["batch_size"] == {"seg": 16, "malignancy": 32}
    assert coarse["seed"] == 0 and "early_stopping" in coarse
