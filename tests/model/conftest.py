"""Fixtures for the model tests: the data directory and one tiny model trained through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """``DIGITMATCH_DATA`` or ``../shared/data`` relative to the repository root."""
    return Path(os.environ.get("DIGITMATCH_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def full_data() -> Path:
    path = data_dir()
    if not (path / "fsdd").is_dir() or not (path / "mnist").is_dir():
        pytest.skip(f"training data not found at {path} (set DIGITMATCH_DATA)")
    return path


@pytest.fixture(scope="session")
def smoke_model(full_data, tmp_path_factory) -> Path:
    """``digitmatch train`` for a few steps on the real data: the model root it wrote."""
    from digitmatch.cli import main

    root = tmp_path_factory.mktemp("smoke") / "digitmatch"
    assert main(smoke_train_args(full_data, root)) == 0
    return root


def smoke_train_args(data: Path, root: Path) -> list[str]:
    return [
        "train", "--data", str(data), "--out", str(root), "--epochs", "2", "--steps", "3",
        "--batch-size", "32", "--pairs-per-epoch", "256", "--test-pairs", "200", "--seed", "3",
        "--verbose", "0",
    ]


@pytest.fixture(scope="session")
def smoke_metadata(smoke_model) -> dict:
    return json.loads((smoke_model / "1" / "metadata.json").read_text())
