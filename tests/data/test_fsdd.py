from __future__ import annotations

import numpy as np
import pytest

from digitmatch.data.errors import DataError
from digitmatch.data.fsdd import load_fsdd, parse_filename, read_wav


def tone(n: int, rate: int, freq: float = 440.0) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(n) / rate)


# --- real data ---------------------------------------------------------------------------------


def test_real_fsdd_is_complete(real_fsdd):
    recs = real_fsdd
    assert len(recs) == 2500
    assert sorted(set(recs.speakers.tolist())) == ["george", "jackson", "nicolas", "theo", "yweweler"]
    assert np.bincount(recs.digits).tolist() == [250] * 10
    assert set(recs.indices.tolist()) == set(range(50))
    assert set(recs.sample_rates.tolist()) == {8000}
    assert all(a.dtype == np.int16 and a.ndim == 1 and a.size > 0 for a in recs.audio)
    assert len(set(recs.names)) == 2500
    for i in (0, 777, 2499):
        assert parse_filename(recs.names[i]) == (recs.digits[i], recs.speakers[i], recs.indices[i])


def test_real_fsdd_root_or_recordings_dir(real_data, real_fsdd):
    again = load_fsdd(real_data / "fsdd" / "recordings")
    assert again.names == real_fsdd.names
    assert np.array_equal(again.audio[10], real_fsdd.audio[10])


def test_real_recordings_mfcc(real_fsdd):
    from digitmatch.features import DEFAULT_PARAMS, mfcc

    sub = real_fsdd.subset([0, 1, 2])
    feats = sub.mfcc(DEFAULT_PARAMS)
    assert len(feats) == 3
    for f, audio in zip(feats, sub.audio):
        assert f.dtype == np.float32 and f.shape[1] == 13
        assert np.array_equal(f, mfcc(audio, 8000, DEFAULT_PARAMS))


# --- files written here --------------------------------------------------------------------------


def test_16bit_16khz(tmp_path, wav_writer):
    samples = (tone(1600, 16000) * 20000).astype(np.int16)
    wav_writer(tmp_path / "3_ann_7.wav", samples, 16000, 2)
    audio, rate = read_wav(tmp_path / "3_ann_7.wav")
    assert rate == 16000 and audio.dtype == np.int16
    assert np.array_equal(audio, samples)
    recs = load_fsdd(tmp_path)
    assert recs.digits.tolist() == [3] and recs.speakers.tolist() == ["ann"]
    assert recs.indices.tolist() == [7] and recs.sample_rates.tolist() == [16000]
    assert recs.mfcc()[0].shape[1] == 13


def test_8bit_unsigned(tmp_path, wav_writer):
    samples = (128 + tone(800, 8000) * 100).astype(np.uint8)
    wav_writer(tmp_path / "a.wav", samples, 8000, 1)
    audio, rate = read_wav(tmp_path / "a.wav")
    assert audio.dtype == np.uint8 and np.array_equal(audio, samples) and rate == 8000


def test_24_and_32_bit(tmp_path, wav_writer):
    values = np.array([0, 1, -1, 8388607, -8388608, 12345, -54321])
    wav_writer(tmp_path / "a.wav", values, 8000, 3)
    audio, _ = read_wav(tmp_path / "a.wav")
    assert audio.dtype == np.int32 and np.array_equal(audio >> 8, values)
    values32 = np.array([0, 2**31 - 1, -(2**31), 7, -7])
    wav_writer(tmp_path / "b.wav", values32, 8000, 4)
    audio32, _ = read_wav(tmp_path / "b.wav")
    assert np.array_equal(audio32, values32)


def test_stereo_is_averaged_to_mono(tmp_path, wav_writer):
    left = np.array([100, 200, -300, 0], dtype=np.int16)
    right = np.array([300, 0, -100, 1], dtype=np.int16)
    wav_writer(tmp_path / "s.wav", np.stack([left, right], axis=1).ravel(), 8000, 2, channels=2)
    audio, _ = read_wav(tmp_path / "s.wav")
    assert audio.dtype == np.int16
    assert np.array_equal(audio, np.round((left.astype(float) + right) / 2).astype(np.int16))


@pytest.mark.parametrize(
    "name,expected",
    [("0_george_0.wav", (0, "george", 0)), ("9_yweweler_49.wav", (9, "yweweler", 49))],
)
def test_parse_filename(name, expected):
    assert parse_filename(name) == expected


@pytest.mark.parametrize("name", ["george_0.wav", "10_george_1.wav", "1_george_x.wav", "1_george_1.mp3", "1__1.wav"])
def test_parse_filename_rejects(name):
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        parse_filename(name)


def test_truncated_wav_names_file(tmp_path, wav_writer):
    path = wav_writer(tmp_path / "1_a_1.wav", np.arange(4000, dtype=np.int16), 8000, 2)
    path.write_bytes(path.read_bytes()[:-1001])
    with pytest.raises(DataError, match="1_a_1.wav"):
        read_wav(path)
    with pytest.raises(DataError, match="1_a_1.wav"):
        load_fsdd(tmp_path)


BAD_FMT_SIZE = (  # a fmt chunk whose size field points past the end of the file
    b"RIFF\xc4\x12\x00\x00WAVEfmt \x10\x00\n\x00\x01\x00\x01\x00@\x1f\x00\x00\x80>\x00\x00\x02\x00\x10\x00"
)


@pytest.mark.parametrize(
    "content",
    [b"", b"RIFX0000WAVE", b"not a wav file at all" * 10, b"RIFF\x24\x00\x00\x00WAVEfmt ", BAD_FMT_SIZE],
)
def test_bad_riff_header_names_file(tmp_path, content):
    path = tmp_path / "2_b_3.wav"
    path.write_bytes(content)
    with pytest.raises(DataError, match="2_b_3.wav"):
        read_wav(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.wav"):
        read_wav(tmp_path / "nope.wav")


def test_bad_filename_in_directory(tmp_path, wav_writer):
    wav_writer(tmp_path / "1_a_1.wav", np.zeros(100, dtype=np.int16), 8000, 2)
    wav_writer(tmp_path / "recording.wav", np.zeros(100, dtype=np.int16), 8000, 2)
    with pytest.raises(DataError, match="recording.wav"):
        load_fsdd(tmp_path)


def test_empty_and_missing_directory(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        load_fsdd(tmp_path)
    with pytest.raises(DataError, match="absent"):
        load_fsdd(tmp_path / "absent")


def test_subset_keeps_fields_aligned(tmp_path, wav_writer):
    for d in range(3):
        wav_writer(tmp_path / f"{d}_s_{d}.wav", np.full(10 + d, d, dtype=np.int16), 8000, 2)
    recs = load_fsdd(tmp_path)
    sub = recs.subset([2, 0])
    assert sub.digits.tolist() == [2, 0] and sub.names == ["2_s_2.wav", "0_s_0.wav"]
    assert [a.size for a in sub.audio] == [12, 10] and len(sub) == 2


def test_wav_without_samples(tmp_path, wav_writer):
    path = wav_writer(tmp_path / "0_z_0.wav", np.zeros(0, dtype=np.int16), 8000, 2)
    with pytest.raises(DataError, match="0_z_0.wav.*no audio"):
        read_wav(path)
