"""The ``nodulekit`` command: thin Typer commands over the library (one module each).

Errors the user can fix (:class:`nodulekit.errors.NodulekitError`) are printed here, in one
place, as one line without a traceback.
"""
from __future__ import annotations

import sys

import typer

from nodulekit import __version__
from nodulekit.cli import augment, consensus, crop, evaluate, ingest, models, phantom, run, status
from nodulekit.cli import infer as infer_cli
from nodulekit.cli import train as train_cli
from nodulekit.cli.common import err_console
from nodulekit.errors import NodulekitError

app = typer.Typer(
    name="nodulekit",
    help=(
        "Lung-nodule segmentation and classification on LIDC-IDRI, as a resumable pipeline:\n\n"
        "ingest -> consensus-label -> crop -> augment -> train -> evaluate -> infer\n\n"
        "Example: nodulekit phantom --out demo-data && "
        "nodulekit ingest lidc --root demo-data && nodulekit status"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(ingest.app, name="ingest")
app.command("consensus-label")(consensus.consensus_label)
app.command("crop")(crop.crop)
app.command("augment")(augment.augment)
app.command("train")(train_cli.train)
app.command("phantom")(phantom.phantom)
app.command("status")(status.status)
app.command("evaluate")(evaluate.evaluate)
app.command("models")(models.models)
app.command("run")(run.run)
app.command("infer")(infer_cli.infer)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"nodulekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """nodulekit command line."""


def main() -> None:
    """Console-script entry point: run the app, turning user errors into one line."""
    try:
        app(standalone_mode=False)
    except NodulekitError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]: finished items are kept; rerun the same command to resume")
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except OSError as error:  # e.g. a workdir that cannot be created or written
        where = error.filename or "nodulekit"
        err_console.print(f"[bold red]error:[/] {where}: {error.strerror or error}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except Exception as error:
        if _is_usage_error(error):
            error.show()
            sys.exit(error.exit_code)
        raise


def _is_usage_error(error: Exception) -> bool:
    """A click usage error (bad option, missing argument). Recognised by its interface, because
    newer typer releases vendor click (``typer._click``) and ``import click`` may fail."""
    return callable(getattr(error, "show", None)) and isinstance(getattr(error, "exit_code", None), int)
