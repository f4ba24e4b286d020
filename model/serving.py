"""Loading and calling an exported SavedModel: the one code path used by ``evaluate``, the matcher
and the benchmarks.

Layout (TF Serving's): ``<root>/<version>/`` with ``saved_model.pb``, ``variables/`` and
``metadata.json``. :func:`resolve` accepts either the root (serves its highest version) or one
version directory.

:meth:`ServingModel.load` checks the ``serving_default`` signature against the serving contract
(:data:`INPUTS`, :data:`OUTPUTS`; written by ``digitmatch.model.export``) before anything is run:
inputs ``mfcc`` float32 ``[batch, frames, 13]`` and ``image`` uint8 ``[batch, 28, 28]`` with any
batch size and any frame count (a dimension fixed where the contract has none, such as a batch of
exactly 2, is refused), no other input, and outputs ``score`` float32 ``[batch]`` plus the optional
digit heads float32 ``[batch, 10]``. The check reads the signature's declared specs only; whether
the graph behind them computes is for the caller to try (the matcher's proof).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from digitmatch.features import N_MFCC, FeatureParams, pad_batch

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"
METADATA_FILE = "metadata.json"
DEFAULT_MODEL_ROOT = Path(__file__).resolve().parent / "savedmodels" / "digitmatch"

# The serving contract: name -> (dtype, shape); None is a dimension of any size (batch, frames).
INPUTS = {"mfcc": ("float32", (None, None, N_MFCC)), "image": ("uint8", (None, 28, 28))}
OUTPUTS = {"score": ("float32", (None,))}
HEADS = {"spoken_digit_probs": ("float32", (None, 10)), "written_digit_probs": ("float32", (None, 10))}


class ModelError(RuntimeError):
    """A model directory that cannot be served (missing, malformed, wrong signature)."""


def is_version_dir(path: Path) -> bool:
    return (path / "saved_model.pb").is_file()


def versions(root: Path) -> dict[int, Path]:
    """Numeric version subdirectories of ``root`` that hold a complete SavedModel."""
    found = {}
    if root.is_dir():
        for child in root.iterdir():
            if child.name.isdigit() and is_version_dir(child) and (child / METADATA_FILE).is_file():
                found[int(child.name)] = child
    return found


def resolve(path: Path | str) -> tuple[int, Path]:
    """(version, version directory) for a versioned root or a single version directory."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model path {path} does not exist")
    if is_version_dir(path):
        version = int(path.name) if path.name.isdigit() else read_metadata(path).get("version", 1)
        return int(version), path
    found = versions(path)
    if not found:
        raise ModelError(f"{path} holds no SavedModel: expected {path}/<version>/saved_model.pb")
    best = max(found)
    return best, found[best]


def read_metadata(version_dir: Path) -> dict[str, Any]:
    meta_path = Path(version_dir) / METADATA_FILE
    try:
        return json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{meta_path} is missing") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{meta_path} is not valid JSON: {exc}") from None


def _spec_problem(name: str, spec, dtype: str, shape: tuple, *, is_input: bool) -> str | None:
    """Why ``spec`` (a ``tf.TensorSpec``) breaks the contract's ``dtype`` and ``shape``, or None.

    An input must accept every tensor of the contract's shape: a dimension the contract leaves
    open must be open in the spec. An output may be less precisely declared than the contract
    (an unknown rank or dimension), never differently."""
    if spec.dtype.name != dtype:
        return f"{'input' if is_input else 'output'} {name!r} is {spec.dtype.name}, the contract says {dtype}"
    declared = spec.shape.as_list() if spec.shape.rank is not None else None
    if declared is None:
        return None
    wrong = len(declared) != len(shape) or any(
        (want is None and got is not None and is_input) or (want is not None and got not in (None, want))
        for got, want in zip(declared, shape)
    )
    if wrong:
        kind = "input" if is_input else "output"
        return f"{kind} {name!r} is declared {declared}, the contract says {list(shape)} (None: any size)"
    return None


def check_signature(fn, where: Path) -> None:
    """Raise :class:`ModelError` unless the signature ``fn`` (a concrete function) follows the
    serving contract (module docstring)."""
    _, inputs = fn.structured_input_signature
    outputs = fn.structured_outputs
    problems = [f"input {name!r} is missing" for name in INPUTS if name not in inputs]
    problems += [f"it requires input {name!r}, which the matcher never sends" for name in inputs if name not in INPUTS]
    problems += [f"output {name!r} is missing" for name in OUTPUTS if name not in outputs]
    for name, (dtype, shape) in INPUTS.items():
        if name in inputs:
            problems.append(_spec_problem(name, inputs[name], dtype, shape, is_input=True))
    for name, (dtype, shape) in {**OUTPUTS, **HEADS}.items():
        if name in outputs and hasattr(outputs[name], "dtype"):
            problems.append(_spec_problem(name, outputs[name], dtype, shape, is_input=False))
    problems = [p for p in problems if p]
    if problems:
        raise ModelError(f"{where}: signature {SIGNATURE!r} breaks the serving contract: {'; '.join(problems)}")


def set_cpu_threads(intra_op: int = 0, inter_op: int = 0) -> dict[str, int]:
    """Size TensorFlow's CPU thread pools; 0 keeps TensorFlow's choice (one thread per core).

    *Intra-op* threads split one operation (a matrix product) across cores; *inter-op* threads run
    independent operations (the audio and the image branch) side by side. This network's
    operations are small (an LSTM step on a batch of 13 coefficients), so on a CPU one intra-op
    thread serves batches faster than one per core: the work per op is too little to share out
    (docs/benchmarks.md). The pools can only be sized before TensorFlow runs its first operation;
    if it already has, the sizes it runs with are kept and logged. Returns the sizes in force."""
    import tensorflow as tf

    pools = tf.config.threading
    sizes = {}
    for name, wanted, get, set_ in (
        ("intra_op", intra_op, pools.get_intra_op_parallelism_threads, pools.set_intra_op_parallelism_threads),
        ("inter_op", inter_op, pools.get_inter_op_parallelism_threads, pools.set_inter_op_parallelism_threads),
    ):
        if wanted and get() != wanted:
            try:
                set_(wanted)
            except RuntimeError:
                log.warning("TensorFlow already started: keeping its %s threads at %s (wanted %d)",
                            name.replace("_", "-"), get() or "its default", wanted)
        sizes[name] = get()
    return sizes


@dataclass
class ServingModel:
    """A loaded SavedModel plus its metadata. ``predict`` takes unpadded MFCC arrays."""

    path: Path
    version: int
    metadata: dict[str, Any]
    _fn: Any = field(repr=False)

    @classmethod
    def load(cls, path: Path | str) -> "ServingModel":
        import tensorflow as tf

        version, version_dir = resolve(path)
        metadata = read_metadata(version_dir)
        try:
            loaded = tf.saved_model.load(str(version_dir))
        except Exception as exc:  # TF raises several unrelated types for a broken directory
            raise ModelError(f"cannot load SavedModel {version_dir}: {exc}") from exc
        if SIGNATURE not in loaded.signatures:
            raise ModelError(f"{version_dir} has no {SIGNATURE!r} signature")
        check_signature(loaded.signatures[SIGNATURE], version_dir)
        model = cls(version_dir, version, metadata, loaded.signatures[SIGNATURE])
        model._keepalive = loaded  # the signature needs its object graph alive
        return model

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", self.path.parent.name))

    @property
    def features(self) -> FeatureParams:
        return FeatureParams(**self.metadata["features"])

    @property
    def threshold(self) -> float:
        return float(self.metadata.get("threshold", 0.5))

    @property
    def max_frames(self) -> int:
        return self.features.max_frames

    def predict_padded(self, mfcc: np.ndarray, images: np.ndarray) -> dict[str, np.ndarray]:
        """``mfcc`` float32 (B, T, 13) zero-padded, ``images`` uint8 (B, 28, 28)."""
        import tensorflow as tf

        out = self._fn(
            mfcc=tf.convert_to_tensor(mfcc, tf.float32),
            image=tf.convert_to_tensor(images, tf.uint8),
        )
        return {name: tensor.numpy() for name, tensor in out.items()}

    def predict(self, frames: list[np.ndarray], images: np.ndarray) -> dict[str, np.ndarray]:
        return self.predict_padded(pad_batch(frames, self.max_frames), np.asarray(images, np.uint8))

    def predict_many(
        self, frames: list[np.ndarray], images: np.ndarray, batch_size: int = 512
    ) -> dict[str, np.ndarray]:
        """``predict`` in batches of ``batch_size``, outputs concatenated."""
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(frames), batch_size):
            out = self.predict(frames[start : start + batch_size], images[start : start + batch_size])
            for name, value in out.items():
                parts.setdefault(name, []).append(value)
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}
