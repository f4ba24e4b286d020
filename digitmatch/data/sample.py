"""The held-out data: from the full data sets when present, else from the shipped sample.

``digitmatch/data/sample/heldout.npz`` holds FSDD's 250 test recordings (index 0-4, raw int16 audio) and
the first 50 images of each digit of MNIST t10k, so the demo, the load producer and the model
tests run without the full data. Rebuild it with::

    python -m digitmatch.data.sample --data ../shared/data
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from digitmatch.data.errors import DataError
from digitmatch.data.fsdd import Recordings, load_fsdd
from digitmatch.data.mnist import Images, load_mnist
from digitmatch.data.splits import recording_split

SAMPLE_PATH = Path(__file__).resolve().parent / "sample" / "heldout.npz"
REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES_PER_DIGIT = 50


def resolve_data_dir(path: str | Path | None = None) -> Path:
    """``path`` (a flag) > ``DIGITMATCH_DATA`` > ``../shared/data`` beside the repository."""
    if path is not None:
        return Path(path)
    env = os.environ.get("DIGITMATCH_DATA")
    if env:
        return Path(env)
    from digitmatch.settings import DEFAULT_DATA_DIR

    return (REPO_ROOT / DEFAULT_DATA_DIR).resolve()


def _full_data_present(data_dir: Path) -> bool:
    return (data_dir / "fsdd").is_dir() and (data_dir / "mnist").is_dir()


def load_heldout(data_dir: str | Path | None = None) -> tuple[Recordings, Images, str]:
    """(FSDD test recordings, MNIST t10k images, source): ``source`` is the data directory or
    the sample file that was read."""
    root = resolve_data_dir(data_dir)
    if _full_data_present(root):
        recs = load_fsdd(root / "fsdd")
        _, test = recording_split(recs)
        return recs.subset(test), load_mnist(root / "mnist", "t10k"), str(root)
    return (*load_sample(SAMPLE_PATH), str(SAMPLE_PATH))


def load_sample(path: str | Path = SAMPLE_PATH) -> tuple[Recordings, Images]:
    """Read a sample written by :func:`build_sample`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataError(path, "sample file not found") from None
    except (OSError, ValueError) as exc:
        raise DataError(path, f"not a readable sample archive ({exc})") from None
    needed = {"audio", "offsets", "digits", "speakers", "indices", "rates", "names", "images", "labels"}
    if not needed <= data.keys():
        raise DataError(path, f"missing arrays: {sorted(needed - data.keys())}")
    offsets = data["offsets"]
    audio = [data["audio"][offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    recs = Recordings(
        digits=data["digits"].astype(np.int64),
        speakers=data["speakers"].astype(str),
        indices=data["indices"].astype(np.int64),
        audio=audio,
        sample_rates=data["rates"].astype(np.int64),
        names=data["names"].astype(str).tolist(),
    )
    return recs, Images(images=data["images"], labels=data["labels"].astype(np.int64))


def first_per_digit(labels: np.ndarray, per_digit: int) -> np.ndarray:
    """Indices of the first ``per_digit`` images of each digit, in file order."""
    chosen = [np.flatnonzero(labels == d)[:per_digit] for d in range(10)]
    return np.sort(np.concatenate(chosen))


def build_sample(data_dir: str | Path, out_path: str | Path = SAMPLE_PATH, images_per_digit: int = IMAGES_PER_DIGIT) -> Path:
    """Write the held-out sample (FSDD index 0-4 + the first images of each digit of t10k)."""
    data_dir = Path(data_dir)
    recs = load_fsdd(data_dir / "fsdd")
    recs = recs.subset(recording_split(recs)[1])
    if any(a.dtype != np.int16 for a in recs.audio):
        raise DataError(data_dir / "fsdd", "the sample stores int16 audio; found another sample width")
    images = load_mnist(data_dir / "mnist", "t10k")
    images = images.subset(first_per_digit(images.labels, images_per_digit))
    offsets = np.concatenate([[0], np.cumsum([a.size for a in recs.audio])]).astype(np.int64)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out_path,
        audio=np.concatenate(recs.audio).astype(np.int16),
        offsets=offsets,
        digits=recs.digits.astype(np.int8),
        speakers=np.asarray(recs.speakers, dtype=str),
        indices=recs.indices.astype(np.int16),
        rates=recs.sample_rates.astype(np.int32),
        names=np.asarray(recs.names, dtype=str),
        images=images.images,
        labels=images.labels.astype(np.uint8),
    )
    return out_path


def main(argv: list[str] | None = None) -> int:
    from digitmatch.settings import add_data_option, add_option

    parser = argparse.ArgumentParser(prog="python -m digitmatch.data.sample", description=__doc__.split("\n")[0])
    add_data_option(parser)
    add_option(parser, "--out", default=SAMPLE_PATH, type=Path, help="where to write the sample")
    add_option(parser, "--images-per-digit", default=IMAGES_PER_DIGIT, type=int, help="MNIST t10k images kept per digit")
    args = parser.parse_args(argv)
    try:
        path = build_sample(args.data, args.out, args.images_per_digit)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
