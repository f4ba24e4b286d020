"""``digitmatch train`` end to end on the real data, a few steps (the ``smoke_model`` fixture)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from digitmatch.features import FeatureParams
from digitmatch.model.training import augment_images, augment_images_affine, augment_mfcc, class_weights, make_pool


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
    assert training["extra_voices"] is None  # the default: real recordings only
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


def test_more_mfcc_masks_mask_more_within_each_recording():
    rng = np.random.default_rng(0)
    frames = [rng.normal(size=(n, 13)).astype(np.float32) + 5 for n in rng.integers(40, 94, size=200)]
    pool = make_pool(frames, [1] * len(frames), np.zeros((1, 28, 28), np.uint8), [0], 93)
    one = augment_mfcc(pool.mfcc, pool.lengths, np.random.default_rng(7))
    three = augment_mfcc(pool.mfcc, pool.lengths, np.random.default_rng(7), masks=3)
    inside = np.arange(pool.mfcc.shape[1])[None, :] < pool.lengths[:, None] - 3  # kept whatever the shift
    zeros_one, zeros_three = (one == 0)[inside].mean(), (three == 0)[inside].mean()
    assert zeros_three > 1.5 * zeros_one > 0
    kept = np.abs(three).sum(axis=2) > 0
    assert not three[~(np.arange(93)[None, :] < pool.lengths[:, None])].any()  # nothing past a recording's end
    assert np.all(kept.sum(axis=1) >= pool.lengths - 3 - 3 * (pool.lengths // 4))


def test_affine_image_augmentation_moves_the_digit_and_nothing_else():
    image = np.zeros((64, 28, 28), np.uint8)
    image[:, 8:20, 12:16] = 255  # an upright bar
    rng = np.random.default_rng(0)
    out = augment_images_affine(image, rng)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not out[:, :2].any() and not out[:, -2:].any()  # the border stays background
    ink = out.astype(float).sum(axis=(1, 2)) / image[0].astype(float).sum()
    assert np.all((ink > 0.7) & (ink < 1.35))  # scaled by at most 10 % each way: area within ~21 %
    assert len({out[i].tobytes() for i in range(64)}) == 64  # each image its own transform
    # no transform: the image itself; the same seed: the same images
    np.testing.assert_array_equal(augment_images_affine(image[:2], rng, 0, 0, 0, 0), image[:2])
    np.testing.assert_array_equal(augment_images_affine(image, np.random.default_rng(0)), out)
    # a rotation by up to 12 degrees tilts the bar: its ink's columns spread, never by more than the tilt allows
    columns = (out > 127).any(axis=1).sum(axis=1)
    assert columns.max() > 4 and columns.max() <= 4 + 12 * np.tan(np.deg2rad(12) + 0.15) * 1.1 + 4 + 2


def test_class_weights_balance_the_classes():
    w_neg, w_pos = class_weights(0.1)
    assert 0.9 * w_neg == pytest.approx(0.1 * w_pos)
    assert 0.9 * w_neg + 0.1 * w_pos == pytest.approx(1.0)


def _tone_recordings(seconds: float = 0.5):
    from digitmatch.data.fsdd import Recordings

    t = np.arange(8000 * seconds) / 8000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    return tone, Recordings(
        digits=np.array([1]), speakers=np.array(["x"]), indices=np.array([0]), audio=[tone],
        sample_rates=np.array([8000]), names=["1_x_0.wav"],
    )


def test_speed_perturbation_changes_duration():
    from digitmatch.model.training import perturbed_copies

    tone, recs = _tone_recordings()
    params = FeatureParams()
    mfcc, lengths = perturbed_copies(recs, params, speed_factors=(0.8, 1.0, 1.25))
    assert mfcc.shape == (3, 1, params.max_frames, 13)
    assert lengths[1, 0] == params.num_frames(tone.size)
    assert lengths[0, 0] > lengths[1, 0] > lengths[2, 0]  # slower = longer
    assert abs(lengths[2, 0] - params.num_frames(int(tone.size / 1.25))) <= 1


def test_vtlp_copies_keep_the_duration_and_come_after_the_speed_copies():
    from digitmatch.features import mfcc as features
    from digitmatch.model.training import perturbed_copies

    tone, recs = _tone_recordings()
    params = FeatureParams()
    mfcc, lengths = perturbed_copies(recs, params, speed_factors=(0.8,), vtlp_factors=(0.9, 1.0, 1.1))
    assert mfcc.shape == (4, 1, params.max_frames, 13)
    frames = params.num_frames(tone.size)
    assert lengths[0, 0] > frames and list(lengths[1:, 0]) == [frames] * 3  # VTLP keeps the duration
    original = features(tone, 8000, params)
    assert np.array_equal(mfcc[2, 0, :frames], original)  # warp 1: the features themselves
    for copy in (1, 3):
        assert np.abs(mfcc[copy, 0, :frames] - original).max() > 1e-2  # (a steady tone: CMVN leaves little)


def test_vtlp_factors_flag_parses_and_rejects():
    import argparse

    from digitmatch.model.training import vtlp_factors_type

    assert vtlp_factors_type("0.9, 1.1") == (0.9, 1.1) and vtlp_factors_type("") == ()
    for bad in ("0.5", "1.3", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            vtlp_factors_type(bad)


@pytest.fixture(scope="module")
def synthetic_voices(tmp_path_factory):
    """Ten espeak-ng recordings of one synthetic speaker: digits 0 and 1, takes 0-4 (the indices
    FSDD's recording split holds out)."""
    import itertools
    import shutil

    from digitmatch.data import voices
    from digitmatch.data.fsdd import load_fsdd

    if not shutil.which("espeak-ng"):
        pytest.skip("TTS engine espeak-ng not installed (apt-get install espeak-ng)")
    out = tmp_path_factory.mktemp("voices")
    the_plan = voices.plan(["espeak-ng"], speakers=1, takes=5, seed=0)
    for name, audio in itertools.islice(voices.recordings(the_plan, tmp_path_factory.mktemp("work")), 10):
        voices.write_wav(out / name, audio)
    return out, load_fsdd(out)


@pytest.mark.parametrize("split", ["recording", "speaker:theo"])
def test_extra_voices_are_training_only(full_data, synthetic_voices, split):
    """With synthetic speakers present no test split holds one, the validation set early stopping
    watches stays real, and every real recording is split exactly as without them."""
    from digitmatch.data.fsdd import load_fsdd
    from digitmatch.data.voices import is_synthetic
    from digitmatch.model.training import fit_and_validation, split_pool

    real = load_fsdd(full_data / "fsdd")
    _, extra = synthetic_voices
    assert set(extra.indices.tolist()) == set(range(5))
    base, train, test, none = split_pool(real, split)
    both, train_x, test_x, extra_idx = split_pool(real, split, extra)
    assert none.size == 0 and len(both) == len(real) + len(extra)
    assert np.array_equal(train, train_x) and np.array_equal(test, test_x)
    assert both.names[: len(real)] == real.names
    assert not any(is_synthetic(both.speakers[i]) for i in test_x)
    assert all(is_synthetic(both.speakers[i]) for i in extra_idx)
    assert sorted(both.names[i] for i in extra_idx) == sorted(extra.names)

    fit, val = fit_and_validation(train, none, seed=3)
    fit_x, val_x = fit_and_validation(train_x, extra_idx, seed=3)
    assert np.array_equal(val, val_x) and np.array_equal(fit_x, np.concatenate([fit, extra_idx]))
    assert not np.intersect1d(fit_x, test_x).size and not np.intersect1d(val_x, test_x).size


def test_extra_voices_never_reuse_a_real_speaker_and_are_not_a_test_speaker(full_data, synthetic_voices):
    from digitmatch.data.fsdd import load_fsdd
    from digitmatch.model.training import extra_voices_summary, split_pool

    real = load_fsdd(full_data / "fsdd")
    out, extra = synthetic_voices
    with pytest.raises(ValueError, match="theo"):
        split_pool(real, "recording", real.subset(np.flatnonzero(real.speakers == "theo")))
    with pytest.raises(ValueError, match="unknown speaker"):
        split_pool(real, f"speaker:{extra.speakers[0]}", extra)
    summary = extra_voices_summary(out, extra)
    assert summary["speakers"] == 1 and summary["recordings"] == 10 and summary["dir"] == str(out)
    assert summary["manifest"] is None  # written recording by recording here, without voices.json


def test_training_with_extra_voices_a_share_and_more_masks_records_them(full_data, synthetic_voices, tmp_path):
    """A few steps of ``digitmatch train`` with ``--extra-voices``, ``--extra-voices-share`` and
    ``--mfcc-masks``: the model's metadata says what it was trained with."""
    from digitmatch.cli import main

    from .conftest import smoke_train_args

    out, extra = synthetic_voices
    root = tmp_path / "digitmatch"
    args = smoke_train_args(full_data, root) + ["--extra-voices", str(out), "--extra-voices-share", "0.2",
                                                "--mfcc-masks", "2", "--no-plots"]
    assert main(args) == 0
    training = json.loads((root / "1" / "metadata.json").read_text())["training"]
    assert training["extra_voices"]["share"] == 0.2 and training["extra_voices"]["recordings"] == len(extra)
    assert training["recipe"]["mfcc_masks"] == 2


def test_missing_extra_voices_is_a_one_line_error(tmp_path, capsys):
    from digitmatch.cli import main

    assert main(["train", "--out", str(tmp_path / "m"), "--extra-voices", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("digitmatch train: error: --extra-voices:") and "does not exist" in err


def test_a_synthetic_share_draws_that_fraction_of_the_pairs_from_the_extra_voices():
    from digitmatch.model.training import draw_pairs

    rng = np.random.default_rng(0)
    frames = [rng.normal(size=(30, 13)).astype(np.float32) for _ in range(300)]
    digits = np.arange(300) % 10
    pool = make_pool(frames, digits, np.zeros((50, 28, 28), np.uint8), np.arange(50) % 10, 93)
    pool.synthetic = np.arange(300) >= 100  # 100 real rows, 200 synthetic (as extra voices are appended)
    proportional = draw_pairs(pool, 3000, 0.1, 5)
    assert abs(pool.synthetic[proportional.audio].mean() - 2 / 3) < 0.01
    pairs = draw_pairs(pool, 3000, 0.1, 5, synthetic_share=0.25)
    assert len(pairs) == 3000 and pool.synthetic[pairs.audio].sum() == 750
    assert pairs.label.sum() == 300  # 10 % of each part
    assert np.array_equal(pool.digits[pairs.audio] == pool.image_digits[pairs.image], pairs.label == 1)
    real_used = np.bincount(pairs.audio[~pool.synthetic[pairs.audio]], minlength=300)[:100]
    assert real_used.min() >= 22 and real_used.max() <= 23  # 2,250 pairs over 100 real recordings, evenly
    assert not np.array_equal(pairs.audio, np.sort(pairs.audio))  # the two parts are shuffled together
    again = draw_pairs(pool, 3000, 0.1, 5, synthetic_share=0.25)
    assert np.array_equal(pairs.audio, again.audio) and np.array_equal(pairs.image, again.image)
    pool.synthetic = None  # no extra voices: the share changes nothing
    assert np.array_equal(draw_pairs(pool, 3000, 0.1, 5, 0.25).audio, draw_pairs(pool, 3000, 0.1, 5).audio)


def test_a_synthetic_share_without_extra_voices_is_a_one_line_error(tmp_path, capsys):
    from digitmatch.cli import main

    assert main(["train", "--out", str(tmp_path / "m"), "--extra-voices-share", "0.3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "digitmatch train: error: --extra-voices-share needs --extra-voices"
