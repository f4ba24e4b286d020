"""``digitmatch evaluate``: score a SavedModel on held-out pairs.

Without data flags the held-out test split of the default data is used (FSDD recordings with
index 0-4 + MNIST t10k; from the shipped sample when the full data is absent). ``--fsdd DIR`` uses
every recording in DIR, ``--mnist DIR`` the t10k IDX files in DIR. Inference goes through
:class:`digitmatch.model.serving.ServingModel`, the matcher's code path.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from digitmatch.settings import (SEED_LIMIT, add_data_option, add_option, add_switch, data_problem, model_problem,
                                 path_problem)

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    from digitmatch.model.serving import DEFAULT_MODEL_ROOT

    add_option(parser, "--model", default=DEFAULT_MODEL_ROOT, type=Path,
               help="model root (highest version) or one version directory")
    add_option(parser, "--fsdd", default=None, type=Path, help="use every FSDD recording in this directory")
    add_option(parser, "--mnist", default=None, type=Path, help="use the t10k-* IDX files in this directory")
    add_option(parser, "--pairs", default=10000, type=int, ge=1, help="number of pairs to score")
    add_option(parser, "--match-ratio", default=0.5, type=float, ge=0, le=1, help="fraction of matching pairs")
    add_option(parser, "--seed", default=0, type=int, ge=0, le=SEED_LIMIT, help="seed of the pairing")
    add_option(parser, "--batch-size", default=512, type=int, ge=1, help="pairs per inference call")
    add_switch(parser, "--json", help="print one JSON object on stdout (logs go to stderr)")
    add_data_option(parser)


def score_pairs(model, frames: list[np.ndarray], images: np.ndarray, pairs, batch_size: int = 512):
    """Model outputs for ``pairs`` (indices into ``frames`` and ``images``)."""
    return model.predict_many([frames[k] for k in pairs.audio], images[pairs.image], batch_size=batch_size)


def pair_metrics(outputs: dict[str, np.ndarray], pairs, audio_digits, image_digits, threshold: float) -> dict:
    from digitmatch.model.metrics import binary_metrics, digit_accuracy

    metrics = binary_metrics(pairs.label, outputs["score"], threshold)
    if "spoken_digit_probs" in outputs:
        metrics["spoken_digit_accuracy"] = digit_accuracy(
            outputs["spoken_digit_probs"], np.asarray(audio_digits)[pairs.audio])
    if "written_digit_probs" in outputs:
        metrics["written_digit_accuracy"] = digit_accuracy(
            outputs["written_digit_probs"], np.asarray(image_digits)[pairs.image])
    return metrics


def evaluate_pairs(model, frames, audio_digits, images, n_pairs: int, match_ratio: float, seed: int,
                   batch_size: int = 512) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metrics, raw outputs + labels) of ``n_pairs`` random pairs of these recordings and images.

    ``model`` is a ServingModel or a path to one; ``images`` a ``digitmatch.data.mnist.Images``.
    """
    from digitmatch.data.pairs import make_pairs
    from digitmatch.model.serving import ServingModel

    if not isinstance(model, ServingModel):
        model = ServingModel.load(model)
    pairs = make_pairs(np.asarray(audio_digits), images.labels, n_pairs, match_ratio, seed)
    outputs = score_pairs(model, frames, images.images, pairs, batch_size)
    metrics = pair_metrics(outputs, pairs, audio_digits, images.labels, model.threshold)
    metrics["match_ratio"] = match_ratio
    raw = {"label": pairs.label, **outputs,
           "audio_digit": np.asarray(audio_digits)[pairs.audio], "image_digit": images.labels[pairs.image]}
    return metrics, raw


def load_eval_data(args):
    """(recordings, images, description) chosen by the flags."""
    from digitmatch.data.fsdd import load_fsdd
    from digitmatch.data.mnist import load_mnist
    from digitmatch.data.sample import load_heldout

    recs = images = None
    source = []
    if args.fsdd is None or args.mnist is None:
        recs, images, held = load_heldout(args.data)
        source.append(f"held-out test split ({held})")
    if args.fsdd is not None:
        recs = load_fsdd(args.fsdd)
        source.append(f"FSDD recordings in {args.fsdd}")
    if args.mnist is not None:
        images = load_mnist(args.mnist, "t10k")
        source.append(f"MNIST t10k in {args.mnist}")
    return recs, images, "; ".join(source)


def run(args) -> int:
    from digitmatch.data.errors import DataError
    from digitmatch.model.serving import ModelError, ServingModel

    try:
        if args.pairs < 1:
            raise ValueError(f"--pairs must be at least 1, got {args.pairs}")
        if not 0.0 <= args.match_ratio <= 1.0:
            raise ValueError(f"--match-ratio must be in [0, 1], got {args.match_ratio}")
        # The paths are checked before TensorFlow is imported.
        problem = (model_problem("--model", args.model) or path_problem("--fsdd", args.fsdd, "dir")
                   or path_problem("--mnist", args.mnist, "dir")
                   or data_problem(args.data))
        if problem:
            raise ValueError(problem)
        model = ServingModel.load(args.model)
        recs, images, source = load_eval_data(args)
        log.info("model %s v%d; data: %s: %d recordings, %d images",
                 model.name, model.version, source, len(recs), len(images))
        frames = recs.mfcc(model.features)
        metrics, _ = evaluate_pairs(model, frames, recs.digits, images, args.pairs, args.match_ratio,
                                    args.seed, args.batch_size)
    except (DataError, ModelError, ValueError, OSError) as exc:
        print(f"digitmatch evaluate: error: {exc}", file=sys.stderr)
        return 2
    metrics = {"model": str(model.path), "version": model.version, "data": source,
               "recordings": len(recs), "images": len(images), **metrics}
    if args.json:
        print(json.dumps(metrics))
    else:
        for key, value in metrics.items():
            print(f"{key:>24}: {value:.4f}" if isinstance(value, float) else f"{key:>24}: {value}")
    return 0
