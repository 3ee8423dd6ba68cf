"""User-facing errors: the CLI prints them as one line, without a traceback."""
from __future__ import annotations


class NodulekitError(Exception):
    """An error caused by the user's input or environment, shown as one line.

    Name the file and what is wrong, e.g. ``NodulekitError(f"{path}: not a DICOM file")``.
    """

    exit_code = 2


class StageLockedError(NodulekitError):
    """Another process holds the lock of this stage on this workdir."""

    exit_code = 3


class InputFileError(NodulekitError):
    """A specific input file is unreadable or malformed."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem
