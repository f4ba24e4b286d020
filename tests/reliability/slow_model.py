"""A real SavedModel that is deliberately slow: the serving contract of the shipped model, with an
expensive stack of matrix products per pair, so inference falls behind a burst of input.

Exported through the project's own exporter (``digitmatch.model.export``), loaded and served by
the matcher like any other version; no mock, no sleep inside the graph.
"""

from __future__ import annotations

from pathlib import Path

from digitmatch.features import FeatureParams

SLOW_FEATURES = FeatureParams(max_frames=40)
UNITS = 1024
REPEATS = 256  # ~270 M multiply-adds per pair


def export_slow_model(root: Path, *, units: int = UNITS, repeats: int = REPEATS) -> Path:
    import keras
    from keras import layers, ops

    from digitmatch.model.export import export

    class Grind(layers.Layer):
        """``h = tanh(h @ W)``, ``repeats`` times: the expensive op."""

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(units, units), initializer="orthogonal", name="kernel")

        def call(self, h):
            for _ in range(repeats):
                h = ops.tanh(ops.matmul(h, self.kernel))
            return h

    keras.utils.set_random_seed(0)
    mfcc = keras.Input(shape=(None, 13), dtype="float32", name="mfcc")
    image = keras.Input(shape=(28, 28), dtype="uint8", name="image")
    audio = layers.Dense(units // 2, activation="tanh")(layers.GlobalAveragePooling1D()(mfcc))
    written = layers.Dense(units // 2, activation="tanh")(layers.Flatten()(layers.Rescaling(1 / 255)(image)))
    hidden = Grind()(layers.Concatenate()([audio, written]))
    score = layers.Dense(1, activation="sigmoid", name="score")(hidden)
    model = keras.Model({"mfcc": mfcc, "image": image}, {"score": score}, name="slow")
    metadata = {"name": "slow", "architecture": f"slow: {repeats} x {units}x{units} matmul per pair", "threshold": 0.5}
    return export(model, root, 1, metadata, SLOW_FEATURES)
