"""digitmatch.model.serving: TensorFlow's CPU thread pools (in fresh interpreters: the pools can
only be sized before TensorFlow runs its first operation), and the serving contract checked on the
signature at load."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from digitmatch.features import FeatureParams
from digitmatch.model.serving import ModelError, ServingModel

SCRIPT = """
import json, logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
import numpy as np
from digitmatch.model.serving import DEFAULT_MODEL_ROOT, ServingModel, set_cpu_threads
first = set_cpu_threads(1, 2)
model = ServingModel.load(DEFAULT_MODEL_ROOT)
scores = model.predict([np.zeros((20, 13), np.float32)], np.zeros((1, 28, 28), np.uint8))["score"]
again = set_cpu_threads(2, 2)  # too late for a different size: kept, with a warning
print(json.dumps({"first": first, "again": again, "scores": len(scores)}))
"""


def test_thread_pools_are_sized_before_the_first_operation_and_kept_after():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"first": {"intra_op": 1, "inter_op": 2}, "again": {"intra_op": 1, "inter_op": 2}, "scores": 1}
    assert "keeping its intra-op threads at 1 (wanted 2)" in done.stderr


# --------------------------------------------------------------------------- the signature contract

CONTRACT = {"mfcc": ("float32", [None, None, 13]), "image": ("uint8", [None, 28, 28])}


def export_with_inputs(root, inputs: dict):
    """A tiny Keras model through the project's exporter, its serving function declaring
    ``inputs`` (name -> (dtype, shape)) instead of the contract's; the graph casts and crops them to it."""
    from unittest import mock

    import keras
    import tensorflow as tf
    from keras import layers

    import digitmatch.model.export as exporter

    keras.utils.set_random_seed(0)
    mfcc = keras.Input(shape=(None, 13), dtype="float32", name="mfcc")
    image = keras.Input(shape=(28, 28), dtype="uint8", name="image")
    pixels = layers.Flatten()(layers.Rescaling(1 / 255)(image))
    joined = layers.Concatenate()([layers.GlobalAveragePooling1D()(mfcc), pixels])
    score = layers.Dense(1, activation="sigmoid", name="score")(joined)
    model = keras.Model({"mfcc": mfcc, "image": image}, {"score": score})

    def serving_function(model, max_frames, fixed_frames=None):
        names = list(inputs)
        specs = [tf.TensorSpec(shape, dtype, name=name) for name, (dtype, shape) in inputs.items()]

        @tf.function(input_signature=specs)
        def serve(*args):
            given = dict(zip(names, args))
            image = tf.ensure_shape(tf.cast(given["image"], tf.uint8)[:, :28, :28], [None, 28, 28])
            out = model({"mfcc": given["mfcc"], "image": image}, training=False)
            return {"score": tf.reshape(out["score"], [-1])}

        return serve

    with mock.patch.object(exporter, "serving_function", serving_function):
        return exporter.export(model, root, 1, {"name": "contract", "threshold": 0.5}, FeatureParams(max_frames=20))


BROKEN = [
    ("batch_2", {**CONTRACT, "mfcc": ("float32", [2, None, 13]), "image": ("uint8", [2, 28, 28])},
     "input 'mfcc' is declared [2, None, 13], the contract says [None, None, 13] (None: any size); "
     "input 'image' is declared [2, 28, 28]"),
    ("fixed_frames", {**CONTRACT, "mfcc": ("float32", [None, 93, 13])}, "input 'mfcc' is declared [None, 93, 13]"),
    ("float_image", {**CONTRACT, "image": ("float32", [None, 28, 28])},
     "input 'image' is float32, the contract says uint8"),
    ("wrong_image_size", {**CONTRACT, "image": ("uint8", [None, 32, 32])}, "input 'image' is declared [None, 32, 32]"),
    ("extra_input", {**CONTRACT, "mask": ("float32", [None])},
     "it requires input 'mask', which the matcher never sends"),
]


@pytest.mark.parametrize("inputs,error", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_a_signature_that_breaks_the_serving_contract_is_refused_at_load(tmp_path, inputs, error):
    version_dir = export_with_inputs(tmp_path, inputs)
    with pytest.raises(ModelError, match="breaks the serving contract") as raised:
        ServingModel.load(version_dir)
    assert error in str(raised.value)


def test_a_signature_that_leaves_more_open_than_the_contract_is_served(tmp_path):
    model = ServingModel.load(export_with_inputs(tmp_path, {**CONTRACT, "image": ("uint8", [None, None, None])}))
    out = model.predict([np.ones((3, 13), np.float32)] * 2, np.zeros((2, 28, 28), np.uint8))
    assert out["score"].shape == (2,)
