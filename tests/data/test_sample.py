from __future__ import annotations

import numpy as np
import pytest

from digitmatch.data.errors import DataError
from digitmatch.data.sample import SAMPLE_PATH, load_heldout, load_sample, main, resolve_data_dir


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DIGITMATCH_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("DIGITMATCH_DATA")
    default = resolve_data_dir(None)
    assert default.is_absolute() and default.parts[-2:] == ("shared", "data")


def test_shipped_sample_size_and_contents():
    assert SAMPLE_PATH.stat().st_size <= 2_000_000
    assert (SAMPLE_PATH.parent / "LICENSE.md").is_file()
    recs, images = load_sample()
    assert len(recs) == 250 and set(recs.indices.tolist()) == set(range(5))
    assert len({(s, d) for s, d in zip(recs.speakers, recs.digits)}) == 50
    assert all(a.dtype == np.int16 and a.size > 0 for a in recs.audio)
    assert images.images.shape == (500, 28, 28) and images.images.dtype == np.uint8
    assert np.bincount(images.labels).tolist() == [50] * 10
    with np.load(SAMPLE_PATH, allow_pickle=False) as z:  # nothing needs pickle
        assert all(z[k].dtype != object for k in z.files)


def test_shipped_sample_matches_the_real_data(real_data):
    sample_recs, sample_images = load_sample()
    recs, images, source = load_heldout(real_data)
    assert source == str(real_data)
    assert recs.names == sample_recs.names
    assert all(np.array_equal(a, b) for a, b in zip(recs.audio, sample_recs.audio))
    assert len(images) == 8000
    first = np.sort(np.concatenate([np.flatnonzero(images.labels == d)[:50] for d in range(10)]))
    assert np.array_equal(images.images[first], sample_images.images)
    assert np.array_equal(images.labels[first], sample_images.labels)


def test_heldout_falls_back_to_sample(tmp_path):
    recs, images, source = load_heldout(tmp_path / "nothing-here")
    assert source == str(SAMPLE_PATH)
    assert len(recs) == 250 and len(images) == 500


def test_build_sample_cli(real_data, tmp_path):
    out = tmp_path / "s.npz"
    assert main(["--data", str(real_data), "--out", str(out), "--images-per-digit", "3"]) == 0
    recs, images = load_sample(out)
    assert len(recs) == 250 and len(images) == 30


def test_build_sample_bad_data(tmp_path, capsys):
    assert main(["--data", str(tmp_path), "--out", str(tmp_path / "s.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path) in err and "Traceback" not in err


def test_load_sample_errors(tmp_path):
    with pytest.raises(DataError, match="missing.npz"):
        load_sample(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.npz"):
        load_sample(bad)
    partial = tmp_path / "partial.npz"
    np.savez(partial, audio=np.zeros(3, dtype=np.int16))
    with pytest.raises(DataError, match="partial.npz.*missing"):
        load_sample(partial)
