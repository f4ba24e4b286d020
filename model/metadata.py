"""``digitmatch inspect``: a SavedModel's metadata and its serving signature, as read back from the
SavedModel itself (not only from metadata.json)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from digitmatch.settings import add_option, add_switch, model_problem


def configure(parser: argparse.ArgumentParser) -> None:
    from digitmatch.model.serving import DEFAULT_MODEL_ROOT

    add_option(parser, "--model", default=DEFAULT_MODEL_ROOT, type=Path,
               help="model root (highest version) or one version directory")
    add_switch(parser, "--json", help="print one JSON object instead of text")


def _spec(tensor_spec) -> dict[str, Any]:
    return {"dtype": tensor_spec.dtype.name, "shape": tensor_spec.shape.as_list()}


def signature_of(model) -> dict[str, dict[str, dict[str, Any]]]:
    """Inputs and outputs of a loaded ServingModel's ``serving_default`` signature."""
    fn = model._fn
    _, kwargs = fn.structured_input_signature
    return {
        "inputs": {name: _spec(spec) for name, spec in sorted(kwargs.items())},
        "outputs": {name: _spec(spec) for name, spec in sorted(fn.structured_outputs.items())},
    }


def describe(path: Path | str) -> dict[str, Any]:
    """Metadata plus the live signature of the model at ``path``."""
    from digitmatch.model.serving import ServingModel

    model = ServingModel.load(path)
    return {"path": str(model.path), "metadata": model.metadata, "signature": signature_of(model)}


def _text(info: dict[str, Any]) -> str:
    meta = info["metadata"]
    lines = [f"model      {info['path']}"]
    for key in ("name", "version", "architecture", "parameters", "threshold", "created"):
        if key in meta:
            lines.append(f"{key:<10} {meta[key]}")
    lines.append("signature  serving_default")
    for kind in ("inputs", "outputs"):
        for name, spec in info["signature"][kind].items():
            shape = ", ".join("None" if d is None else str(d) for d in spec["shape"])
            lines.append(f"  {kind[:-1]:<7} {name:<20} {spec['dtype']:<8} [{shape}]")
    lines.append("features   " + json.dumps(meta.get("features", {})))
    training = meta.get("training", {})
    if training:
        lines.append("training   " + ", ".join(
            f"{k}={training[k]}" for k in ("data", "split", "seed", "epochs", "duration_s") if k in training))
    test = meta.get("metrics", {}).get("test", {})
    for setting, values in test.items():
        lines.append(f"test {setting:<9} balanced_accuracy={values.get('balanced_accuracy', float('nan')):.4f}"
                     f" roc_auc={values.get('roc_auc', float('nan')):.4f} pairs={values.get('pairs')}")
    return "\n".join(lines)


def run(args) -> int:
    from digitmatch.model.serving import ModelError

    problem = model_problem("--model", args.model)  # before TensorFlow is imported
    if problem:
        print(f"digitmatch inspect: error: {problem}", file=sys.stderr)
        return 2
    try:
        info = describe(args.model)
    except ModelError as exc:
        print(f"digitmatch inspect: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2) if args.json else _text(info))
    return 0
