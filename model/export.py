"""Export a trained Keras model as a TF-Serving SavedModel directory ``<root>/<version>/``.

The ``serving_default`` signature takes ``mfcc`` float32 ``[batch, frames, 13]`` (any batch, any
``frames >= 1``) and ``image`` uint8 ``[batch, 28, 28]`` and returns ``score`` float32 ``[batch]``,
plus ``spoken_digit_probs`` / ``written_digit_probs`` float32 ``[batch, 10]`` when the model has
digit heads. Frames beyond ``features.max_frames`` are dropped inside the signature; the seed
network, trained on exactly 93 frames, also gets its input zero-padded to that length there.
``metadata.json`` is written beside ``saved_model.pb``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from digitmatch.features import N_MFCC, FeatureParams
from digitmatch.model.serving import METADATA_FILE, SIGNATURE, versions


def next_version(root: Path) -> int:
    """One more than the highest complete version under ``root`` (1 for an empty root)."""
    found = versions(Path(root))
    return max(found) + 1 if found else 1


def serving_function(model, max_frames: int, fixed_frames: int | None = None):
    """A ``tf.function`` with named inputs/outputs wrapping ``model`` for inference."""
    import tensorflow as tf

    output_names = list(model.output_names)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, N_MFCC], tf.float32, name="mfcc"),
            tf.TensorSpec([None, 28, 28], tf.uint8, name="image"),
        ]
    )
    def serve(mfcc, image):
        mfcc = mfcc[:, :max_frames, :]
        if fixed_frames is not None:
            missing = tf.maximum(fixed_frames - tf.shape(mfcc)[1], 0)
            mfcc = tf.pad(mfcc, [[0, 0], [0, missing], [0, 0]])[:, :fixed_frames, :]
        out = model({"mfcc": mfcc, "image": image}, training=False)
        result = {"score": tf.reshape(out["score"], [-1])}
        for name in output_names:
            if name != "score":
                result[name] = tf.identity(out[name], name=name)
        return result

    return serve


def signature_description(model) -> dict[str, Any]:
    """The signature as stored in metadata: name -> {dtype, shape} for inputs and outputs."""
    outputs = {"score": {"dtype": "float32", "shape": [None]}}
    for name in model.output_names:
        if name != "score":
            outputs[name] = {"dtype": "float32", "shape": [None, 10]}
    return {
        "inputs": {
            "mfcc": {"dtype": "float32", "shape": [None, None, N_MFCC]},
            "image": {"dtype": "uint8", "shape": [None, 28, 28]},
        },
        "outputs": outputs,
    }


def export(
    model,
    root: Path | str,
    version: int | None,
    metadata: dict[str, Any],
    features: FeatureParams,
    fixed_frames: int | None = None,
) -> Path:
    """Write ``model`` to ``root/<version>/`` (next free version when ``None``); return that dir.

    The SavedModel is written to a temporary sibling and renamed into place, so a matcher that
    watches ``root`` never sees a half-written version.
    """
    import keras

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    version = next_version(root) if version is None else int(version)
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    target = root / str(version)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, serving_function(model, features.max_frames, fixed_frames))
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; a serving container may run as another user
    try:
        archive.write_out(str(staging), verbose=False)
        full = {
            **metadata,
            "version": version,
            "features": features.model_dump(),
            **signature_description(model),
        }
        (staging / METADATA_FILE).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
