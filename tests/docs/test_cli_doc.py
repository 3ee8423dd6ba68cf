"""docs/cli.md is exactly what docs/gen_cli.py writes from the commands, so it cannot drift from --help."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from typer.testing import CliRunner

from nodulekit.cli import app

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _gen_cli():
    spec = importlib.util.spec_from_file_location("gen_cli", DOCS / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_md_is_generated_from_the_commands():
    expected = _gen_cli().render()
    current = (DOCS / "cli.md").read_text()
    assert current == expected, "docs/cli.md is out of date: run `python docs/gen_cli.py`"


def test_every_command_of_the_help_has_a_section_with_its_options():
    text = (DOCS / "cli.md").read_text()
    listed = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    import typer.main

    root = typer.main.get_command(app)
    ctx = root.make_context("nodulekit", [], resilient_parsing=True)
    for name in root.list_commands(ctx):
        assert name in listed
        command = root.get_command(ctx, name)
        if hasattr(command, "list_commands"):
            sub_ctx = command.make_context(name, [], parent=ctx, resilient_parsing=True)
            subcommands = [(f"{name} {sub}", command.get_command(sub_ctx, sub)) for sub in command.list_commands(sub_ctx)]
        else:
            subcommands = [(name, command)]
        for path, leaf in subcommands:
            section = text.split(f"## `nodulekit {path}`", 1)[1].split("\n## ", 1)[0]
            for param in leaf.params:
                for opt in getattr(param, "opts", []):
                    if opt.startswith("-"):
                        assert f"`{opt}`" in section, (path, opt)
