"""Every registered model: builds small, forwards, backwards, counts its parameters (timm-style)."""
from __future__ import annotations

import pytest
import torch

from nodulekit.errors import NodulekitError
from nodulekit.models import create_model, get_spec, list_models, param_counts
from nodulekit.models.registry import merge_config, read_config_toml

MODELS = list_models()


def test_registry_lists_mtnet() -> None:
    assert "mtnet" in MODELS


@pytest.mark.parametrize("name", MODELS)
def test_model_builds_forwards_and_backwards(name: str) -> None:
    torch.manual_seed(0)
    spec = get_spec(name)
    model = create_model(name, **spec.test_overrides)
    config = spec.resolve_config({"model": dict(spec.test_overrides)})
    batch = 2
    x = torch.randn(batch, spec.geometry.channels, *spec.geometry.patch_shape_px)
    outputs = model(x)
    assert set(outputs) == set(spec.outputs)
    expected = spec.output_shapes(config, batch, spec.geometry.patch_shape_px)
    for output_name, tensor in outputs.items():
        assert tuple(tensor.shape) == expected[output_name], output_name
        assert torch.isfinite(tensor).all()
        assert spec.outputs[output_name].task in spec.tasks
    sum(t.float().mean() for t in outputs.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    counts = param_counts(model)
    assert counts["total"] > 0
    assert counts["total"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_spec_is_complete(name: str) -> None:
    spec = get_spec(name)
    config = spec.default_config
    assert spec.paper.file and spec.paper.citation
    assert spec.geometry.crop_preset
    for phase in spec.phases(config):
        assert phase.losses and set(phase.losses) <= set(spec.outputs)
        assert phase.epochs > 0


@pytest.mark.parametrize("name", MODELS)
def test_every_config_value_cites_its_source(name: str) -> None:
    spec = get_spec(name)
    config, cite = read_config_toml(spec.config_path)

    def leaves(table: dict, prefix: str = "") -> list[str]:
        keys = []
        for key, value in table.items():
            dotted = f"{prefix}{key}"
            keys += leaves(value, f"{dotted}.") if isinstance(value, dict) else [dotted]
        return keys

    uncited = [key for key in leaves(config) if key not in cite]
    assert not uncited, f"config values without a citation comment: {uncited}"
    assert all(("§" in text) or ("[" in text) or text.startswith("choice") for text in cite.values())


def test_unknown_model_and_unknown_config_keys_raise() -> None:
    with pytest.raises(NodulekitError, match="unknown model"):
        create_model("no-such-model")
    with pytest.raises(NodulekitError, match="model.widht"):
        create_model("mtnet", widht=0.5)
    with pytest.raises(NodulekitError, match="is a table"):
        merge_config({"a": {"b": 1}}, {"a": 3})
    assert merge_config({"a": {"b": 1, "c": 2}}, {"a": {"b": 5}}) == {"a": {"b": 5, "c": 2}}


def test_default_config_is_a_fresh_copy() -> None:
    spec = get_spec("mtnet")
    config = spec.default_config
    config["optimizer"]["lr"] = 1.0
    assert spec.default_config["optimizer"]["lr"] == pytest.approx(1e-4)
