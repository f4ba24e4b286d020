"""``digitmatch train`` end to end on the real data, a few steps (the ``smoke_model`` fixture)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from digitmatch.features import FeatureParams
from digitmatch.model.training import augment_images, augment_mfcc, class_weights, make_pool


def test_train_writes_savedmodel_metadata_metrics_and_plots(smoke_model, smoke_metadata):
    version_dir = smoke_model / "1"
    assert (version_dir / "saved_model.pb").is_file()
    meta = smoke_metadata
    assert meta["name"] == "digitmatch" and meta["version"] == 1
    assert meta["architecture"] == "improved" and meta["parameters"] > 0
    assert FeatureParams(**meta["features"]) == FeatureParams()
    training = meta["training"]
    assert training["split"] == "recording" and training["seed"] == 3
    assert training["epochs"] == 2 and training["steps_cap"] == 3
    assert training["duration_s"] > 0
    assert training["test"] == {"recordings": 250, "images": 8000}
    assert training["validation"]["recordings"] + training["train_pool"]["recordings"] == 2250
    for ratio in ("match_0.5", "match_0.1"):
        test = meta["metrics"]["test"][ratio]
        assert test["pairs"] == 200
        assert 0.0 <= test["balanced_accuracy"] <= 1.0
    reports = smoke_model / "reports" / "1"
    for name in ("metrics.json", "history.json", "learning_curves.png", "confusion_matrix.png", "roc.png"):
        assert (reports / name).stat().st_size > 0, name
    history = json.loads((reports / "history.json").read_text())
    assert len(history["loss"]) == 2 and "val_loss" in history


def test_second_run_gets_the_next_version(smoke_model, full_data):
    from digitmatch.cli import main

    code = main(["train", "--data", str(full_data), "--out", str(smoke_model), "--arch", "seed",
                 "--epochs", "1", "--steps", "1", "--batch-size", "16", "--pairs-per-epoch", "64",
                 "--test-pairs", "50", "--no-plots", "--verbose", "0", "--split", "speaker:theo"])
    assert code == 0
    meta = json.loads((smoke_model / "2" / "metadata.json").read_text())
    assert meta["version"] == 2 and meta["architecture"] == "seed" and meta["parameters"] == 1_296_073
    assert meta["training"]["split"] == "speaker:theo"
    assert meta["training"]["test"]["recordings"] == 500
    assert not (smoke_model / "reports" / "2" / "roc.png").exists()


def test_same_seed_gives_the_same_training_run(smoke_model, full_data, tmp_path):
    """``--seed`` fixes weights, pairings and augmentation: a second run with the smoke model's
    arguments repeats its per-epoch history and held-out metrics exactly."""
    from digitmatch.cli import main

    from .conftest import smoke_train_args

    again = tmp_path / "digitmatch"
    assert main(smoke_train_args(full_data, again) + ["--no-plots"]) == 0
    first = json.loads((smoke_model / "reports" / "1" / "history.json").read_text())
    second = json.loads((again / "reports" / "1" / "history.json").read_text())
    assert first == second
    first_meta = json.loads((smoke_model / "1" / "metadata.json").read_text())
    second_meta = json.loads((again / "1" / "metadata.json").read_text())
    assert first_meta["metrics"] == second_meta["metrics"]


def test_bad_split_and_bad_data_are_one_line_errors(tmp_path, capsys):
    from digitmatch.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--split", "writer"])
    assert exc.value.code == 2
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("digitmatch train: error:") and "nowhere" in err


def test_augmentation_keeps_shapes_and_padding():
    rng = np.random.default_rng(0)
    frames = [rng.normal(size=(n, 13)).astype(np.float32) for n in (20, 50, 93)]
    pool = make_pool(frames, [1, 2, 3], np.zeros((1, 28, 28), np.uint8), [0], 93)
    out = augment_mfcc(pool.mfcc, pool.lengths, rng)
    assert out.shape == pool.mfcc.shape
    assert not out[0, 20:].any()  # nothing written past a recording's end
    kept = np.abs(out).sum(axis=2) > 0
    assert np.all(kept.sum(axis=1) <= pool.lengths) and np.all(kept.sum(axis=1) >= pool.lengths - 3 - 8 - 1)
    image = np.zeros((2, 28, 28), np.uint8)
    image[:, 10:18, 10:18] = 255
    shifted = augment_images(image, rng)
    assert shifted.shape == image.shape and shifted.sum() == image.sum()


def test_class_weights_balance_the_classes():
    w_neg, w_pos = class_weights(0.1)
    assert 0.9 * w_neg == pytest.approx(0.1 * w_pos)
    assert 0.9 * w_neg + 0.1 * w_pos == pytest.approx(1.0)


def test_speed_perturbation_changes_duration():
    from digitmatch.data.fsdd import Recordings
    from digitmatch.model.training import speed_perturbed

    t = np.arange(8000 * 0.5) / 8000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    recs = Recordings(
        digits=np.array([1]), speakers=np.array(["x"]), indices=np.array([0]), audio=[tone],
        sample_rates=np.array([8000]), names=["1_x_0.wav"],
    )
    params = FeatureParams()
    mfcc, lengths = speed_perturbed(recs, (0.8, 1.0, 1.25), params)
    assert mfcc.shape == (3, 1, params.max_frames, 13)
    assert lengths[1, 0] == params.num_frames(tone.size)
    assert lengths[0, 0] > lengths[1, 0] > lengths[2, 0]  # slower = longer
    assert abs(lengths[2, 0] - params.num_frames(int(tone.size / 1.25))) <= 1
