"""``nodulekit models`` lists every registered model with its counts."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from nodulekit.cli import app
from nodulekit.models.registry import get_spec, list_models, short_citation


def test_models_json_lists_every_model_with_its_geometry():
    result = CliRunner().invoke(app, ["models", "--json", "--no-counts"])
    assert result.exit_code == 0, result.output
    rows = {row["model"]: row for row in json.loads(result.output)}
    assert set(rows) == set(list_models())
    assert {"mtnet", "dgnet", "mtcnn", "msunet", "munet3d", "cascade"} <= set(rows)
    for name, row in rows.items():
        spec = get_spec(name)
        assert row["crop_preset"] == spec.geometry.crop_preset
        assert row["tasks"] == dict(spec.tasks)
        assert row["paper"] == short_citation(spec.paper)


def test_short_citation_names_file_author_and_year():
    assert short_citation(get_spec("mtnet").paper) == "000 Tang 2024"


def test_models_table_prints_parameter_counts_and_help_has_example():
    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "mtnet" in result.output and "total" in result.output and " M" in result.output
    assert "Example:" in CliRunner().invoke(app, ["models", "--help"]).output
