"""``digitmatch train``: build pairs from the train pool, fit the two-branch network, export a
versioned SavedModel with its metadata, metrics and plots.

Data discipline: recordings and images are split once (``--split``) into a train pool and a
held-out test set. A fixed part of the train pool (``validation_split``) is the validation set for
early stopping; it is never re-split. Training pairs are drawn fresh from the rest of the pool every
epoch (improved recipe) or once (seed recipe, as the 2019 notebook did). The test set is touched
only after training, for the metrics stored in the metadata.

Extra voices (``--extra-voices DIR``, e.g. the synthetic speakers of ``digitmatch voices``) are
training-only: they are appended after the real recordings are split
(:func:`digitmatch.data.splits.append_training_only`) and join the fitted part of the train pool
alone. The validation set that early stopping watches and the test set stay real recordings, drawn
exactly as without them, so both measure real speech. Without the flag nothing changes.

Outputs under ``--out ROOT``: ``ROOT/<version>/`` (SavedModel + metadata.json) and
``ROOT/reports/<version>/`` (metrics.json, history.json, PNG plots).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from digitmatch.features import DEFAULT_PARAMS, FeatureParams, pad_batch
from digitmatch.settings import SEED_LIMIT, add_data_option, add_option, add_switch, data_problem, path_problem

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("runs/models/digitmatch")
VALIDATION_FRACTION = 0.1
VALIDATION_PAIRS = 5000
TEST_PAIRS = 10000


@dataclass(frozen=True)
class Recipe:
    """How an architecture is trained (the seed keeps the notebook's recipe)."""

    fresh_pairs: bool  # new random pairing of the train pool every epoch
    augment: bool  # SpecAugment-style MFCC masking/shift + image augmentation (image_augment)
    class_weighted: bool  # weight matches and non-matches to equal total weight
    digit_loss_weight: float  # weight of each auxiliary digit-head loss (0 = no heads)
    fixed_frames: int | None  # pad/truncate MFCC to this many frames (None = variable)
    learning_rate: float = 1e-3
    speed_factors: tuple[float, ...] = ()  # speed perturbation of training audio (0.9 = slower)
    vtlp_factors: tuple[float, ...] = ()  # vocal-tract-length perturbation (formants x factor)
    audio_branch: str = "lstm"  # the improved network's audio branch (model/architecture.py)
    image_augment: str = "shift"  # "shift": shifts of <= 2 px; "affine": + rotation, scale and shear
    mfcc_masks: int = 1  # coefficient bands and frame spans masked per training recording (augment_mfcc)


RECIPES = {
    "seed": Recipe(fresh_pairs=False, augment=False, class_weighted=False, digit_loss_weight=0.0, fixed_frames=93),
    "improved": Recipe(fresh_pairs=True, augment=True, class_weighted=True, digit_loss_weight=0.5, fixed_frames=None,
                       speed_factors=(0.85, 0.9, 0.95, 1.05, 1.1, 1.15)),
}


def split_type(text: str) -> str:
    if text == "recording" or (text.startswith("speaker:") and len(text) > len("speaker:")):
        return text
    raise argparse.ArgumentTypeError("expected 'recording' or 'speaker:<name>'")


def factors_type(what: str, low: float, high: float):
    """An argparse type: comma-separated numbers in [low, high] (``''`` = none)."""

    def parse(text: str) -> tuple[float, ...]:
        try:
            factors = tuple(float(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
        if any(not low <= f <= high for f in factors):
            raise argparse.ArgumentTypeError(f"{what} factors must lie in [{low:g}, {high:g}]")
        return factors

    return parse


speed_factors_type = factors_type("speed", 0.5, 2.0)
vtlp_factors_type = factors_type("VTLP", 0.8, 1.25)


IMAGE_AUGMENTS = ("shift", "affine")
MAX_MFCC_MASKS = 4
# model/architecture.py's AUDIO_BRANCHES (not imported: it would import Keras to parse the flags).
AUDIO_BRANCHES = ("lstm", "conv-bilstm")


def configure(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--arch", default="improved", choices=["improved", "seed"], help="network")
    add_option(parser, "--audio-branch", default=None, choices=list(AUDIO_BRANCHES),
               help="the improved network's audio branch: lstm (Masking -> LSTM) or conv-bilstm (two Conv1D "
                    "-> bidirectional LSTM) (default: the recipe's, lstm)")
    add_option(parser, "--image-augment", default=None, choices=list(IMAGE_AUGMENTS),
               help="training-image augmentation: shift (<= 2 px) or affine (shift, rotation <= 12 degrees, "
                    "scale +-10 %%, shear <= 0.15) (default: the recipe's, shift)")
    add_option(parser, "--split", default="recording", type=split_type,
               help="held-out test set: 'recording' (FSDD index 0-4) or 'speaker:<name>'")
    add_option(parser, "--epochs", default=20, type=int, ge=1, help="maximum epochs (early stopping on validation loss)")
    add_option(parser, "--patience", default=5, type=int, ge=0, help="early-stopping patience in epochs (0 = off)")
    add_option(parser, "--batch-size", default=128, type=int, ge=1, help="pairs per training step")
    add_option(parser, "--pairs-per-epoch", default=45000, type=int, ge=1, help="training pairs per epoch")
    add_option(parser, "--match-ratio", default=0.1, type=float, gt=0, lt=1,
               help="fraction of matching training pairs (strictly between 0 and 1: the classes are weighted)")
    add_option(parser, "--seed", default=0, type=int, ge=0, le=SEED_LIMIT, help="random seed (weights, pairs, augmentation)")
    add_data_option(parser)
    add_option(parser, "--out", default=DEFAULT_OUT, type=Path,
               help="model root: the SavedModel goes to ROOT/<version>/, reports to ROOT/reports/<version>/")
    add_option(parser, "--extra-voices", default=None, type=Path,
               help="directory of training-only recordings ({digit}_{speaker}_{index}.wav, e.g. written by "
                    "`digitmatch voices`): added to the fitted pool, never to validation or test (default: none)")
    add_option(parser, "--extra-voices-share", default=None, type=float, gt=0, lt=1,
               help="fraction of each epoch's training pairs whose recording is one of --extra-voices' "
                    "(default: none; they are then drawn with the real recordings, in proportion to their number)")
    add_option(parser, "--version", default=None, type=int, ge=1, help="version number (default: next free)")
    add_option(parser, "--speed-factors", default=None, type=speed_factors_type, allow_empty=True,
               help="speed-perturbation factors of training audio, e.g. 0.9,1.1 ('' = none; default: the recipe's)")
    add_option(parser, "--vtlp-factors", default=None, type=vtlp_factors_type, allow_empty=True,
               help="vocal-tract-length perturbation of training audio: a copy of each recording per factor, "
                    "formants moved by it (digitmatch.features), e.g. 0.9,1.1 ('' = none; default: the recipe's, none)")
    add_option(parser, "--mfcc-masks", default=None, type=int, ge=1, le=MAX_MFCC_MASKS,
               help="SpecAugment strength: how many bands of <= 2 coefficients and how many spans of <= 8 frames "
                    "each training recording has masked (default: the recipe's, 1)")
    add_option(parser, "--steps", default=None, type=int, ge=1, help="cap on steps per epoch (smoke tests)")
    add_option(parser, "--test-pairs", default=TEST_PAIRS, type=int, ge=1, help="held-out pairs for the final metrics")
    add_switch(parser, "--plots", help="write PNG plots (default on)")
    parser.set_defaults(plots=True)
    add_option(parser, "--verbose", default=2, type=int, choices=[0, 1, 2],
               help="Keras progress: 0 silent, 1 progress bar, 2 one line per epoch")


# ------------------------------------------------------------------------------------------ data


@dataclass
class Pool:
    """Padded MFCC features + digit labels of some recordings, and some images + labels."""

    mfcc: np.ndarray  # float32 (N, T, 13), zero-padded
    lengths: np.ndarray  # int64 (N,)
    digits: np.ndarray  # int64 (N,)
    images: np.ndarray  # uint8 (M, 28, 28)
    image_digits: np.ndarray  # int64 (M,)
    copies_mfcc: np.ndarray | None = None  # float32 (K, N, T, 13): perturbed copies (perturbed_copies)
    copies_lengths: np.ndarray | None = None  # int64 (K, N)
    synthetic: np.ndarray | None = None  # bool (N,): the training-only extra voices' rows (--extra-voices)


def make_pool(frames: list[np.ndarray], digits, images, image_digits, max_frames: int) -> Pool:
    return Pool(
        mfcc=pad_batch(frames, max_frames),
        lengths=np.array([min(len(f), max_frames) for f in frames], dtype=np.int64),
        digits=np.asarray(digits, dtype=np.int64),
        images=np.asarray(images, dtype=np.uint8),
        image_digits=np.asarray(image_digits, dtype=np.int64),
    )


def perturbed_copies(recs, params: FeatureParams, speed_factors: tuple[float, ...] = (),
                     vtlp_factors: tuple[float, ...] = ()):
    """MFCCs of ``recs`` once per speed factor, then once per VTLP factor: (K, N, T, 13), (K, N).

    Speed: declaring the audio's rate as ``rate * factor`` makes :func:`digitmatch.features.mfcc`
    resample it back to ``params.sample_rate``: duration / factor, pitch and formants x factor,
    which imitates other speakers (Ko et al., 2015, "Audio augmentation for speech recognition").
    VTLP: the features' ``warp``: formants x factor, duration and pitch kept (Jaitly and Hinton, 2013).
    """
    from digitmatch.features import mfcc

    stacks, lengths = [], []
    for speed, warp in [(f, 1.0) for f in speed_factors] + [(1.0, f) for f in vtlp_factors]:
        frames = [mfcc(a, int(round(r * speed)), params, warp) for a, r in zip(recs.audio, recs.sample_rates)]
        stacks.append(pad_batch(frames, params.max_frames))
        lengths.append([min(len(f), params.max_frames) for f in frames])
    width = params.max_frames
    stacks = [np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0))) for x in stacks]
    return np.stack(stacks), np.asarray(lengths, dtype=np.int64)


def draw_pairs(pool: Pool, n: int, match_ratio: float, seed: int, synthetic_share: float | None = None):
    """``n`` pairs of the pool's recordings and images (:func:`digitmatch.data.pairs.make_pairs`).

    ``synthetic_share``: that fraction of the pairs (rounded) takes its recording among the pool's
    ``synthetic`` rows, the rest among the others, each part drawn as ``make_pairs`` draws (at the
    match ratio, recordings used evenly), then shuffled together; None: all rows alike."""
    from digitmatch.data.pairs import Pairs, make_pairs

    if synthetic_share is None or pool.synthetic is None or not pool.synthetic.any():
        return make_pairs(pool.digits, pool.image_digits, n, match_ratio, seed)
    n_synthetic = int(round(n * synthetic_share))
    parts = [(rows, make_pairs(pool.digits[rows], pool.image_digits, count, match_ratio, seed + part))
             for part, (rows, count) in enumerate([(np.flatnonzero(~pool.synthetic), n - n_synthetic),
                                                   (np.flatnonzero(pool.synthetic), n_synthetic)]) if count]
    order = np.random.default_rng(seed).permutation(n)
    return Pairs(audio=np.concatenate([rows[p.audio] for rows, p in parts])[order],
                 image=np.concatenate([p.image for _, p in parts])[order],
                 label=np.concatenate([p.label for _, p in parts])[order])


def augment_mfcc(batch: np.ndarray, lengths: np.ndarray, rng: np.random.Generator, masks: int = 1) -> np.ndarray:
    """SpecAugment-style: drop up to 3 leading frames, zero ``masks`` bands of <= 2 coefficients and
    ``masks`` spans of <= 8 frames (zero frames are skipped by the Masking layer, i.e. a span is cut
    out; spans may overlap). One of each is the improved recipe's, and makes the random draws it
    always made, so a seed trains as it did before the option existed."""
    out = np.zeros_like(batch)
    for row in range(batch.shape[0]):
        n = int(lengths[row])
        shift = int(rng.integers(0, min(3, n - 1) + 1)) if n > 1 else 0
        x = batch[row, shift:n].copy()
        for _ in range(masks):
            width = int(rng.integers(0, 3))
            if width:
                start = int(rng.integers(0, x.shape[1] - width + 1))
                x[:, start : start + width] = 0.0
        for _ in range(masks):
            span = int(rng.integers(0, min(8, len(x) // 4) + 1))
            if span:
                start = int(rng.integers(0, len(x) - span + 1))
                x[start : start + span] = 0.0
        out[row, : len(x)] = x
    return out


def augment_images(images: np.ndarray, rng: np.random.Generator, max_shift: int = 2) -> np.ndarray:
    """Shift each image by up to ``max_shift`` pixels in x and y (MNIST digits have a 4-px border)."""
    out = np.empty_like(images)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(len(images), 2))
    for row, (dy, dx) in enumerate(shifts):
        out[row] = np.roll(images[row], (int(dy), int(dx)), axis=(0, 1))
    return out


def augment_images_affine(images: np.ndarray, rng: np.random.Generator, max_degrees: float = 12.0,
                          max_scale: float = 0.1, max_shear: float = 0.15, max_shift: float = 2.0) -> np.ndarray:
    """Each image rotated, scaled, sheared and shifted at random about its centre (the usual MNIST
    augmentation: a writer's slant, size and place on the page), resampled bilinearly; what comes
    from outside the image is background (0)."""
    n = len(images)
    angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees, n))
    scale = rng.uniform(1 - max_scale, 1 + max_scale, n)
    shear = rng.uniform(-max_shear, max_shear, n)
    shift = rng.uniform(-max_shift, max_shift, (n, 2))
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    # The inverse map, output (y, x) -> input (y, x): rotation and scale, then shear along x.
    inverse = np.stack([np.stack([cos, sin], -1), np.stack([-sin + shear * cos, cos + shear * sin], -1)], 1)
    size = images.shape[1]
    centre = (size - 1) / 2
    ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    grid = np.stack([ys.ravel(), xs.ravel()], 0) - centre  # (2, size*size)
    source = inverse @ grid + centre - shift[:, :, None]  # (n, 2, size*size)
    y0, x0 = np.floor(source[:, 0]).astype(np.int64), np.floor(source[:, 1]).astype(np.int64)
    fy, fx = source[:, 0] - y0, source[:, 1] - x0
    padded = np.pad(images.astype(np.float32), ((0, 0), (1, 1), (1, 1)))  # background around
    rows = np.arange(n)[:, None]

    def at(y, x):
        inside = (y >= -1) & (y <= size) & (x >= -1) & (x <= size)
        return np.where(inside, padded[rows, np.clip(y + 1, 0, size + 1), np.clip(x + 1, 0, size + 1)], 0.0)

    out = ((1 - fy) * (1 - fx) * at(y0, x0) + (1 - fy) * fx * at(y0, x0 + 1)
           + fy * (1 - fx) * at(y0 + 1, x0) + fy * fx * at(y0 + 1, x0 + 1))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(images.shape)


def class_weights(match_ratio: float) -> tuple[float, float]:
    """(non-match weight, match weight) giving both classes the same total weight."""
    return 0.5 / (1.0 - match_ratio), 0.5 / match_ratio


def make_batches(pool: Pool, pairs, recipe: Recipe, batch_size: int, match_ratio: float,
                 rng: np.random.Generator | None, with_heads: bool):
    """Yield (x, y, sample_weight) batches for ``pairs`` (augmented when ``rng`` is given)."""
    w_neg, w_pos = class_weights(match_ratio) if recipe.class_weighted else (1.0, 1.0)
    for start in range(0, len(pairs.label), batch_size):
        a = pairs.audio[start : start + batch_size]
        i = pairs.image[start : start + batch_size]
        label = pairs.label[start : start + batch_size].astype(np.float32)
        lengths = pool.lengths[a]
        width = recipe.fixed_frames or pool.mfcc.shape[1]  # fixed: Keras fixes batch shapes from the first batches
        mfcc = pool.mfcc[a, :width]
        images = pool.images[i]
        if rng is not None and pool.copies_mfcc is not None:
            # each row: the original (variant 0) or one of the K perturbed copies
            variant = rng.integers(0, len(pool.copies_mfcc) + 1, size=len(a))
            rows = np.flatnonzero(variant > 0)
            mfcc = mfcc.copy()
            mfcc[rows] = pool.copies_mfcc[variant[rows] - 1, a[rows], :width]
            lengths = lengths.copy()
            lengths[rows] = pool.copies_lengths[variant[rows] - 1, a[rows]]
        if rng is not None:
            mfcc = augment_mfcc(mfcc, lengths, rng, recipe.mfcc_masks)
            images = (augment_images_affine if recipe.image_augment == "affine" else augment_images)(images, rng)
        if recipe.fixed_frames and mfcc.shape[1] < recipe.fixed_frames:
            mfcc = np.pad(mfcc, ((0, 0), (0, recipe.fixed_frames - mfcc.shape[1]), (0, 0)))
        x = {"mfcc": mfcc, "image": images}
        weight = np.where(label > 0.5, w_pos, w_neg).astype(np.float32)
        y = {"score": label[:, None]}
        sw = {"score": weight}
        if with_heads:
            y["spoken_digit_probs"] = pool.digits[a]
            y["written_digit_probs"] = pool.image_digits[i]
            ones = np.ones(len(label), np.float32)
            sw["spoken_digit_probs"] = ones
            sw["written_digit_probs"] = ones
        yield x, y, sw


def pair_dataset(pool: Pool, recipe: Recipe, args, with_heads: bool, seed: int):
    """A Keras PyDataset over the train pool: a fresh pairing per epoch when the recipe says so."""
    import keras

    class PairSequence(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.rng = np.random.default_rng(seed + 1)
            self._draw()

        def _draw(self):
            pair_seed = seed * 1000 + (self.epoch if recipe.fresh_pairs else 0)
            self.pairs = draw_pairs(pool, args.pairs_per_epoch, args.match_ratio, pair_seed, args.extra_voices_share)

        def __len__(self):
            steps = -(-len(self.pairs.label) // args.batch_size)
            return min(steps, args.steps) if args.steps else steps

        def __getitem__(self, index):
            s = slice(index * args.batch_size, (index + 1) * args.batch_size)
            sub = type(self.pairs)(self.pairs.audio[s], self.pairs.image[s], self.pairs.label[s])
            rng = self.rng if recipe.augment else None
            return next(make_batches(pool, sub, recipe, args.batch_size, args.match_ratio, rng, with_heads))

        def on_epoch_end(self):
            self.epoch += 1
            if recipe.fresh_pairs:
                self._draw()

    return PairSequence()


def fixed_batches(pool: Pool, pairs, recipe: Recipe, batch_size: int, match_ratio: float, with_heads: bool):
    """All batches of a fixed pair set, materialised (validation data)."""
    import keras

    batches = list(make_batches(pool, pairs, recipe, batch_size, match_ratio, None, with_heads))

    class Fixed(keras.utils.PyDataset):
        def __len__(self):
            return len(batches)

        def __getitem__(self, index):
            return batches[index]

    return Fixed()


# -------------------------------------------------------------------------------------- training


def split_pool(recs, split: str, extra=None):
    """(recordings, train-pool idx, test idx, extra idx): ``recs`` split per ``--split``, then the
    ``extra`` recordings (or none) appended as training-only (the module's docstring)."""
    from digitmatch.data.splits import append_training_only, recording_split, speaker_split

    if split == "recording":
        train_idx, test_idx = recording_split(recs)
    else:
        train_idx, test_idx = speaker_split(recs, split.split(":", 1)[1])
    if extra is None:
        return recs, train_idx, test_idx, np.zeros(0, dtype=np.int64)
    recs, extra_idx = append_training_only(recs, extra)
    return recs, train_idx, test_idx, extra_idx


def fit_and_validation(train_idx: np.ndarray, extra_idx: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fitted recordings, validation recordings): the validation set is drawn from the real train
    pool alone, as without extra voices; the extra recordings are all fitted."""
    from digitmatch.data.splits import validation_split

    fit_pos, val_pos = validation_split(len(train_idx), VALIDATION_FRACTION, seed)
    return np.concatenate([train_idx[fit_pos], extra_idx]), train_idx[val_pos]


def extra_voices_summary(directory: Path, extra) -> dict[str, Any]:
    """What the metadata records of ``--extra-voices``: where, how many speakers and recordings,
    and the summary of its ``voices.json`` (None when it has none)."""
    from digitmatch.data.voices import manifest_summary

    return {"dir": str(directory), "speakers": len(set(extra.speakers.tolist())),
            "recordings": len(extra), "manifest": manifest_summary(directory)}


def load_split(data_dir: Path, split: str, params: FeatureParams, extra_voices: Path | None = None):
    """(recordings, train-pool idx, test idx, extra idx, their MFCC list, train images, test images,
    extra voices' summary or None)."""
    from digitmatch.data.fsdd import load_fsdd
    from digitmatch.data.mnist import load_mnist

    extra = load_fsdd(extra_voices) if extra_voices is not None else None
    recs, train_idx, test_idx, extra_idx = split_pool(load_fsdd(data_dir / "fsdd"), split, extra)
    train_images = load_mnist(data_dir / "mnist", "train")
    test_images = load_mnist(data_dir / "mnist", "t10k")
    frames = recs.mfcc(params)
    summary = extra_voices_summary(Path(extra_voices), extra) if extra is not None else None
    return recs, train_idx, test_idx, extra_idx, frames, train_images, test_images, summary


def compile_model(model, recipe: Recipe):
    import keras

    losses = {"score": keras.losses.BinaryCrossentropy()}
    weights = {"score": 1.0}
    metrics = {"score": [keras.metrics.BinaryAccuracy(name="accuracy")]}
    if recipe.digit_loss_weight:
        for head in ("spoken_digit_probs", "written_digit_probs"):
            losses[head] = keras.losses.SparseCategoricalCrossentropy()
            weights[head] = recipe.digit_loss_weight
            metrics[head] = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model.compile(
        optimizer=keras.optimizers.Adam(recipe.learning_rate),
        loss=losses,
        loss_weights=weights,
        metrics=metrics,
    )


def predict_pool(model, pool: Pool, pairs, recipe: Recipe, batch_size: int = 512) -> dict[str, np.ndarray]:
    """Keras-side predictions for fixed pairs (used on the validation set)."""
    outs: dict[str, list] = {}
    for x, _, _ in make_batches(pool, pairs, recipe, batch_size, 0.5, None, False):
        for name, value in model(x, training=False).items():
            outs.setdefault(name, []).append(np.asarray(value))
    return {name: np.concatenate(v) for name, v in outs.items()}


def train(args) -> Path:
    """Train per ``args`` (the parsed ``train`` flags); return the exported version directory."""
    import keras
    import tensorflow as tf

    from digitmatch.data.sample import resolve_data_dir
    from digitmatch.data.splits import validation_split
    from digitmatch.model import architecture
    from digitmatch.model.evaluation import evaluate_pairs
    from digitmatch.model.export import export, next_version
    from digitmatch.model.metrics import binary_metrics

    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    overrides = {field: getattr(args, field)
                 for field in ("speed_factors", "vtlp_factors", "audio_branch", "image_augment", "mfcc_masks")}
    recipe = dataclasses.replace(RECIPES[args.arch], **{k: v for k, v in overrides.items() if v is not None})
    params = DEFAULT_PARAMS
    data_dir = resolve_data_dir(args.data)
    started = time.perf_counter()

    recs, train_idx, test_idx, extra_idx, frames, train_images, test_images, extra_voices = load_split(
        data_dir, args.split, params, args.extra_voices)
    log.info("data %s: %d train-pool / %d test recordings, %d train / %d test images",
             data_dir, len(train_idx), len(test_idx), len(train_images), len(test_images))
    if extra_voices is not None:
        extra_voices["share"] = args.extra_voices_share
        log.info("extra voices %s: %d speakers, %d training-only recordings (share of the pairs: %s)",
                 extra_voices["dir"], extra_voices["speakers"], extra_voices["recordings"],
                 "in proportion" if args.extra_voices_share is None else args.extra_voices_share)
    fit_rec, val_rec = fit_and_validation(train_idx, extra_idx, args.seed)
    img_fit, img_val = validation_split(len(train_images), VALIDATION_FRACTION, args.seed)

    def pool_of(rec_idx, images):
        return make_pool([frames[k] for k in rec_idx], recs.digits[rec_idx],
                         images.images, images.labels, params.max_frames)

    fit_pool = pool_of(fit_rec, train_images.subset(img_fit))
    fit_pool.synthetic = np.isin(fit_rec, extra_idx)
    if recipe.speed_factors or recipe.vtlp_factors:
        fit_pool.copies_mfcc, fit_pool.copies_lengths = perturbed_copies(
            recs.subset(fit_rec), params, recipe.speed_factors, recipe.vtlp_factors)
        log.info("speed perturbation %s, VTLP %s: %d extra copies of each training recording",
                 recipe.speed_factors, recipe.vtlp_factors, len(fit_pool.copies_mfcc))
    val_pool = pool_of(val_rec, train_images.subset(img_val))

    model = architecture.build(args.arch, recipe.audio_branch)
    with_heads = architecture.has_digit_heads(model)
    compile_model(model, recipe)
    log.info("%s network: %d parameters", args.arch, model.count_params())

    train_data = pair_dataset(fit_pool, recipe, args, with_heads, args.seed)
    val_pairs = draw_pairs(val_pool, VALIDATION_PAIRS, args.match_ratio, args.seed * 1000 + 999)
    val_data = fixed_batches(val_pool, val_pairs, recipe, 512, args.match_ratio, with_heads)
    callbacks = []
    if args.patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=args.patience, restore_best_weights=True))
    fit_started = time.perf_counter()
    history = model.fit(train_data, validation_data=val_data, epochs=args.epochs,
                        callbacks=callbacks, verbose=args.verbose)
    fit_seconds = time.perf_counter() - fit_started
    epochs_run = len(history.history["loss"])
    val_losses = history.history.get("val_loss", [])
    # EarlyStopping restores the best epoch's weights; without it the last epoch's weights stay.
    best_epoch = int(np.argmin(val_losses)) + 1 if args.patience > 0 and val_losses else epochs_run

    # Validation metrics at the exported threshold, then the one look at the test set.
    threshold = 0.5
    val_out = predict_pool(model, val_pool, val_pairs, recipe)
    val_metrics = binary_metrics(val_pairs.label, val_out["score"].ravel(), threshold)

    root = Path(args.out)
    version = args.version if args.version is not None else next_version(root)
    metadata: dict[str, Any] = {
        "name": root.name,
        "architecture": args.arch,
        "parameters": int(model.count_params()),
        "threshold": threshold,
        "training": {
            "data": str(data_dir),
            "split": args.split,
            "seed": args.seed,
            "epochs": epochs_run,
            "best_epoch": best_epoch,
            "max_epochs": args.epochs,
            "batch_size": args.batch_size,
            "pairs_per_epoch": args.pairs_per_epoch,
            "match_ratio": args.match_ratio,
            "steps_cap": args.steps,
            "recipe": recipe.__dict__,
            "train_pool": {"recordings": int(len(fit_rec)), "images": int(len(img_fit))},
            "extra_voices": extra_voices,
            "validation": {"recordings": int(len(val_rec)), "images": int(len(img_val)),
                           "pairs": int(len(val_pairs.label))},
            "test": {"recordings": int(len(test_idx)), "images": int(len(test_images))},
            "fit_duration_s": round(fit_seconds, 1),
        },
        "metrics": {},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    version_dir = export(model, root, version, metadata, params, fixed_frames=recipe.fixed_frames)

    # Held-out metrics through the exported SavedModel (the code path that serves).
    test_metrics, raw = {}, {}
    test_frames = [frames[k] for k in test_idx]
    for ratio in (0.5, 0.1):
        key = f"match_{ratio}"
        test_metrics[key], raw[key] = evaluate_pairs(
            version_dir, test_frames, recs.digits[test_idx], test_images,
            n_pairs=args.test_pairs, match_ratio=ratio, seed=args.seed)
    duration = time.perf_counter() - started
    metadata["training"]["duration_s"] = round(duration, 1)
    metadata["metrics"] = {"validation": val_metrics, "test": test_metrics}
    meta_path = version_dir / "metadata.json"
    stored = json.loads(meta_path.read_text())
    stored["training"] = metadata["training"]
    stored["metrics"] = metadata["metrics"]
    meta_path.write_text(json.dumps(stored, indent=2) + "\n")

    report_dir = root / "reports" / str(version)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "history.json").write_text(json.dumps(
        {k: [float(v) for v in vals] for k, vals in history.history.items()}, indent=2) + "\n")
    (report_dir / "metrics.json").write_text(json.dumps(
        {"architecture": args.arch, "split": args.split, "seed": args.seed,
         "parameters": metadata["parameters"], "epochs": epochs_run, "best_epoch": best_epoch,
         "fit_duration_s": metadata["training"]["fit_duration_s"],
         "duration_s": metadata["training"]["duration_s"],
         "validation": val_metrics, "test": test_metrics}, indent=2) + "\n")
    if args.plots:
        from digitmatch.model import plots

        plots.write_training_report(report_dir, history.history, raw["match_0.5"], threshold)
    log.info("exported %s (%.0f s); test at 50/50: balanced accuracy %.4f; at 10%%: %.4f",
             version_dir, duration, test_metrics["match_0.5"]["balanced_accuracy"],
             test_metrics["match_0.1"]["balanced_accuracy"])
    return version_dir


def run(args) -> int:
    from digitmatch.data.errors import DataError

    try:
        # The paths are checked before TensorFlow is imported; a --data given must be a
        # directory (the default's absence is reported by the data loaders).
        problem = (path_problem("--out", args.out, "new-dir") or data_problem(args.data)
                   or path_problem("--extra-voices", args.extra_voices, "dir"))
        if problem:
            raise ValueError(problem)
        if args.extra_voices_share is not None and args.extra_voices is None:
            raise ValueError("--extra-voices-share needs --extra-voices")
        version_dir = train(args)
    except (DataError, ValueError, OSError) as exc:
        print(f"digitmatch train: error: {exc}", file=__import__("sys").stderr)
        return 2
    print(version_dir)
    return 0
