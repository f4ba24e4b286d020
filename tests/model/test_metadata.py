"""``digitmatch inspect``: metadata plus the signature read back from the SavedModel."""

from __future__ import annotations

import json

from digitmatch.cli import main


def test_inspect_json(smoke_model, capsys):
    assert main(["inspect", "--model", str(smoke_model), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["metadata"]["version"] == 1
    sig = info["signature"]
    assert sig["inputs"]["mfcc"] == {"dtype": "float32", "shape": [None, None, 13]}
    assert sig["inputs"]["image"] == {"dtype": "uint8", "shape": [None, 28, 28]}
    assert sig["outputs"]["score"] == {"dtype": "float32", "shape": [None]}
    assert sig["outputs"]["written_digit_probs"] == {"dtype": "float32", "shape": [None, 10]}
    # metadata.json describes the same signature the SavedModel has
    assert info["metadata"]["inputs"] == {k: {**v} for k, v in sig["inputs"].items()}


def test_inspect_text(smoke_model, capsys):
    assert main(["inspect", "--model", str(smoke_model / "1")]) == 0
    out = capsys.readouterr().out
    assert "architecture improved" in out
    assert "spoken_digit_probs" in out and "[None, None, 13]" in out


def test_inspect_missing_model(tmp_path, capsys):
    assert main(["inspect", "--model", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
