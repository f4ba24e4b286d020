"""Print the pip requirements of one image variant, read from pyproject.toml.

The Dockerfile installs these before it copies the code, so the dependency layer stays cached
until pyproject.toml changes. ``cpu`` is the project's dependencies; ``gpu`` swaps the CPU-only
TensorFlow wheel for the ``gpu`` extra (``tensorflow[and-cuda]``): both wheels provide the
``tensorflow`` module and must not be installed together.

    python requirements.py --variant gpu pyproject.toml > requirements.txt
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

VARIANTS = ("cpu", "gpu")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def project_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement string."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject: Path, variant: str = "cpu", extras: tuple[str, ...] = ()) -> list[str]:
    """Requirement strings (environment markers kept) for ``variant`` plus any ``extras``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    optional = project.get("optional-dependencies", {})
    wanted = list(extras) + (["gpu"] if variant == "gpu" else [])
    missing = [name for name in wanted if name not in optional]
    if missing:
        raise ValueError(f"{pyproject} has no optional dependency group {', '.join(missing)}")
    base = list(project.get("dependencies", []))
    if variant == "gpu":
        base = [r for r in base if project_name(r) not in ("tensorflow", "tensorflow-cpu")]
    return base + [r for name in wanted for r in optional[name]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path, nargs="?", default=Path("pyproject.toml"))
    parser.add_argument("--variant", choices=VARIANTS, default="cpu")
    parser.add_argument("--extra", action="append", default=[], help="another optional group to add")
    args = parser.parse_args(argv)
    try:
        lines = requirements(args.pyproject, args.variant, tuple(args.extra))
    except (OSError, KeyError, ValueError, tomllib.TOMLDecodeError) as exc:
        print(f"requirements.py: {args.pyproject}: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
