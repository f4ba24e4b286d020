"""The one error type of the data layer."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A data file or directory that is missing or malformed. The message names the file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")
