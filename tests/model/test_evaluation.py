"""``digitmatch evaluate`` on the smoke-trained model: one JSON object, flags, bad paths."""

from __future__ import annotations

import json

import pytest

from digitmatch.cli import main

KEYS = {"pairs", "accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "confusion",
        "spoken_digit_accuracy", "written_digit_accuracy"}


def _json_run(capsys, *argv) -> dict:
    assert main(["evaluate", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1  # exactly one JSON object on stdout
    return json.loads(out)


def test_evaluate_json_on_heldout_split(smoke_model, full_data, capsys):
    result = _json_run(capsys, "--model", str(smoke_model), "--data", str(full_data),
                       "--pairs", "300", "--match-ratio", "0.2", "--seed", "5")
    assert KEYS <= set(result)
    assert result["pairs"] == 300 and result["matches"] == 60
    (tn, fp), (fn, tp) = result["confusion"]
    assert tn + fp + fn + tp == 300 and fn + tp == 60
    assert result["recordings"] == 250 and result["images"] == 8000
    again = _json_run(capsys, "--model", str(smoke_model), "--data", str(full_data),
                      "--pairs", "300", "--match-ratio", "0.2", "--seed", "5")
    assert again["confusion"] == result["confusion"]


def test_evaluate_with_explicit_fsdd_and_mnist_dirs(smoke_model, full_data, capsys):
    result = _json_run(capsys, "--model", str(smoke_model / "1"), "--fsdd", str(full_data / "fsdd"),
                       "--mnist", str(full_data / "mnist"), "--pairs", "100")
    assert result["recordings"] == 2500 and result["images"] == 8000
    assert result["version"] == 1


@pytest.mark.parametrize("flag", ["--model", "--fsdd", "--mnist"])
def test_bad_paths_exit_2_with_one_line(smoke_model, tmp_path, capsys, flag):
    argv = ["evaluate", "--model", str(smoke_model), "--pairs", "10", flag, str(tmp_path / "missing")]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line = captured.err.strip().splitlines()[-1]
    assert line.startswith("digitmatch evaluate: error:") and "missing" in line
