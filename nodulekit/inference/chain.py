"""Which coarse run an msunet run chains to (paper 003's two stages), recorded in its run.json.

MSU-Net (the fine stage) refines the slices that a 3D MU-Net (the coarse stage, model
``munet3d``) picks; the two are trained as separate runs. The msunet run records its coarse run
as ``"coarse_run"`` in run.json: the munet3d run's folder name (a sibling in ``WORKDIR/runs``) or
a path. :func:`link_coarse_run` writes it (or edit run.json by hand); :func:`linked_coarse_run`
reads it; :func:`load_two_stage` loads both models (an explicit coarse path wins over the link).

``nodulekit evaluate`` then scores the msunet run through both stages (see docs/evaluation.md,
"Trained models"), and ``nodulekit infer`` can chain them.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nodulekit.errors import NodulekitError
from nodulekit.inference.checkpoints import RUN_JSON, locate, read_run_json

if TYPE_CHECKING:
    from nodulekit.inference.predict import LoadedModel

COARSE_RUN_KEY = "coarse_run"
COARSE_MODEL = "munet3d"


def _run_dir(path: Path) -> Path:
    return locate(Path(path))[0]


def link_coarse_run(fine_run: Path, coarse_run: Path) -> str:
    """Record in ``fine_run``'s run.json (an msunet run) that ``coarse_run`` (a munet3d run) is its
    coarse stage; returns the value written (the folder name when both runs share ``runs/``)."""
    from nodulekit.training.runs import RunRecord

    fine_dir, coarse_dir = _run_dir(fine_run), _run_dir(coarse_run)
    coarse_model = read_run_json(coarse_dir)["model"]
    if coarse_model != COARSE_MODEL:
        raise NodulekitError(f"{coarse_dir}: a run of '{coarse_model}'; the coarse stage is a {COARSE_MODEL} run")
    record = RunRecord.load(fine_dir)
    if record.data.get("model") != "msunet":
        raise NodulekitError(f"{fine_dir}: a run of '{record.data.get('model')}'; only msunet runs chain to a "
                             f"{COARSE_MODEL} run")
    value = coarse_dir.name if coarse_dir.parent.resolve() == fine_dir.parent.resolve() else str(coarse_dir.resolve())
    record.update(**{COARSE_RUN_KEY: value})
    return value


def linked_coarse_run(fine_run: Path) -> Path | None:
    """The coarse run folder recorded in ``fine_run``'s run.json, or None; an error when it is gone."""
    fine_dir = _run_dir(fine_run)
    value = read_run_json(fine_dir).get(COARSE_RUN_KEY)
    if not value:
        return None
    path = Path(str(value))
    candidate = path if path.is_absolute() else fine_dir.parent / path
    if not (candidate / RUN_JSON).is_file():
        raise NodulekitError(f"{fine_dir / RUN_JSON}: {COARSE_RUN_KEY} = {value!r} is not a run folder "
                             f"({candidate})")
    return candidate


def load_two_stage(fine_path: Path, coarse_path: Path | None = None, device: str = "cpu"
                   ) -> tuple[LoadedModel, LoadedModel]:
    """``(coarse, fine)`` loaded models of paper 003's chain: ``fine_path`` an msunet run (or
    checkpoint), ``coarse_path`` a munet3d run (default: the one linked in the msunet run.json).
    The fine model's ``coarse`` attribute is set to the coarse model."""
    from nodulekit.inference.predict import load_model

    fine = load_model(Path(fine_path), device, model="msunet")
    if coarse_path is None:
        coarse_path = linked_coarse_run(fine.run_dir)
        if coarse_path is None:
            raise NodulekitError(f"{fine.run_dir}: no coarse ({COARSE_MODEL}) run given or linked; give one, or link "
                                 f"it once: nodulekit.inference.link_coarse_run(fine_run, coarse_run)")
    coarse = load_model(Path(coarse_path), device, model=COARSE_MODEL)
    fine.coarse = coarse
    return coarse, fine
