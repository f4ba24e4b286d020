"""Synthetic voices (digitmatch.data.voices): each installed engine, for real, speaking a few digit
words as FSDD recordings; the seeded choice of speakers; ``digitmatch voices`` and its errors.
An engine that is not installed skips its tests, saying which."""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import wave
from pathlib import Path

import numpy as np
import pytest

from digitmatch.data import voices
from digitmatch.data.fsdd import NAME_PATTERN, load_fsdd


def installed(engine: str) -> voices.Engine:
    spec = voices.ENGINE_SPECS[engine]
    if not spec.installed():
        missing = ", ".join(p for p in spec.programs if not shutil.which(p))
        pytest.skip(f"TTS engine {engine} not installed ({missing} not on PATH; apt-get install {engine})")
    return spec


def write_first(engine: str, out: Path, count: int, seed: int, takes: int = 2) -> list[Path]:
    """The first ``count`` recordings of one speaker of ``engine`` (digit 0's takes first), written to ``out``."""
    the_plan = voices.plan([engine], speakers=1, takes=takes, seed=seed)
    out.mkdir(parents=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, audio in itertools.islice(voices.recordings(the_plan, Path(tmp)), count):
            voices.write_wav(out / name, audio)
            written.append(out / name)
    return written


@pytest.mark.parametrize("engine", voices.ENGINES)
def test_engine_speaks_fsdd_recordings(engine, tmp_path):
    installed(engine)
    first = write_first(engine, tmp_path / "a", count=3, seed=7)  # "zero" twice, then "one"
    again = write_first(engine, tmp_path / "b", count=3, seed=7)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]  # same seed, same bytes

    recs = load_fsdd(tmp_path / "a")
    assert recs.digits.tolist() == [0, 0, 1] and recs.indices.tolist() == [0, 1, 0]
    assert len(set(recs.speakers.tolist())) == 1
    speaker = str(recs.speakers[0])
    assert voices.is_synthetic(speaker) and speaker.startswith(f"synth-{engine.removesuffix('-ng')}-")
    for path, audio, rate in zip(first, recs.audio, recs.sample_rates):
        assert NAME_PATTERN.match(path.name)
        with wave.open(str(path), "rb") as wav:
            assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 8000)
        assert rate == 8000 and audio.dtype == np.int16
        assert 0.1 < len(audio) / rate < 1.5  # one word, its silence trimmed
        assert np.abs(audio).max() > 1000  # not silent
        edge = int(0.005 * rate)
        assert np.abs(audio[:edge]).max() < np.abs(audio).max() / 4  # starts and ends near silence
    assert first[0].read_bytes() != first[1].read_bytes()  # two takes differ (pitch/rate jitter)


def test_speakers_are_seeded_distinct_and_shared_among_engines():
    catalogues = {"espeak-ng": ["en", "en-us+m3", "en-gb-scotland+f2"], "flite": ["kal", "slt"]}
    chosen = voices.choose_speakers(catalogues, 7, seed=1)
    assert chosen == voices.choose_speakers(catalogues, 7, seed=1)
    assert chosen != voices.choose_speakers(catalogues, 7, seed=2)
    names = [s.name for s in chosen]
    assert len(set(names)) == 7 and all(NAME_PATTERN.match(f"3_{n}_0.wav") for n in names)
    assert [s.engine for s in chosen].count("espeak-ng") == 4  # shared as evenly as possible
    assert {s.voice for s in chosen if s.engine == "flite"} == {"kal", "slt"}  # every voice before a repeat
    assert all(s.pitch in voices.PITCHES[("flite", "slt")] for s in chosen if s.voice == "slt")
    # an engine with few voices gives what it has; the others make up the rest
    small = {"festival": ["kal_diphone"], "flite": ["kal", "awb", "rms"]}
    capacity = len(voices.GRIDS["festival"][0]) * len(voices.GRIDS["festival"][1])
    many = voices.choose_speakers(small, capacity + 30, seed=0)
    assert len({s.name for s in many}) == capacity + 30
    assert sum(s.engine == "festival" for s in many) == capacity
    assert len(voices.choose_speakers(small, 10_000, seed=0)) == 4 * capacity  # all there is


def test_a_voice_that_ignores_pitch_keeps_its_own():
    rates = voices.GRIDS["flite"][1]
    chosen = voices.choose_speakers({"flite": ["rms"]}, 10, seed=0, fixed_pitch=frozenset({("flite", "rms")}))
    assert len(chosen) == len(rates) and {s.pitch for s in chosen} == {0}
    assert sorted(s.rate for s in chosen) == sorted(rates)
    assert voices.take_settings(chosen[0], 1, 1, seed=0)[0] == 0  # no jitter on "the voice's own"
    assert not any("int_f0_target_mean" in arg for arg in voices._flite_command("one", "rms", 0, 100, Path("x.wav")))


def test_take_jitter_is_small_and_seeded():
    speaker = voices.Speaker("espeak-ng", "en-us+m3", 40, 150)
    takes = [voices.take_settings(speaker, 3, k, seed=0) for k in range(5)]
    assert takes == [voices.take_settings(speaker, 3, k, seed=0) for k in range(5)]
    assert len(set(takes)) == 5
    for pitch, rate in takes:
        assert abs(pitch - 40) <= 40 * voices.JITTER["pitch"] + 0.1
        assert abs(rate - 150) <= 150 * voices.JITTER["rate"] + 0.1


def test_trim_cuts_leading_and_trailing_silence():
    rate = 8000
    tone = 0.5 * np.sin(2 * np.pi * 300 * np.arange(int(0.3 * rate)) / rate)
    signal = np.concatenate([np.zeros(rate // 2), tone, 1e-4 * np.ones(rate)])
    kept = voices.trim(signal, rate)
    margin = int(voices.TRIM_MARGIN_S * rate)
    assert len(tone) <= len(kept) <= len(tone) + 2 * margin + 2 * int(voices.TRIM_FRAME_S * rate)
    assert np.abs(kept).max() == pytest.approx(0.5, abs=1e-3)
    assert voices.trim(np.zeros(100), rate).size == 100  # all silence: nothing to tell apart


def test_voices_command_writes_recordings_and_manifest(tmp_path, capsys):
    from digitmatch.cli import main

    installed("espeak-ng")
    args = ["voices", "--engines", "espeak-ng", "--speakers", "2", "--takes", "1", "--seed", "3"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "a" / voices.MANIFEST)
    recs = load_fsdd(tmp_path / "a")
    assert len(recs) == 20 and sorted(set(recs.digits.tolist())) == list(range(10))
    info = json.loads((tmp_path / "a" / voices.MANIFEST).read_text())
    assert info["seed"] == 3 and info["takes"] == 1 and info["recordings"] == 20
    assert info["engines"]["espeak-ng"]["version"] and info["skipped"] == []
    assert sorted(s["name"] for s in info["speakers"]) == sorted(set(recs.speakers.tolist()))
    assert all(s["engine"] == "espeak-ng" and s["voice"] for s in info["speakers"])

    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    for name in sorted(p.name for p in (tmp_path / "a").iterdir()):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    summary = voices.manifest_summary(tmp_path / "a")
    assert summary["speakers"] == 2 and summary["seed"] == 3 and list(summary["engines"]) == ["espeak-ng"]
    assert voices.manifest_summary(tmp_path) is None


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("digitmatch voices: error:")
    return last


def test_no_engine_installed_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from digitmatch.cli import main

    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert main(["voices", "--out", str(tmp_path / "out")]) == 2
    assert "no TTS engine installed" in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_unwritable_or_used_out_is_a_one_line_error(tmp_path, capsys):
    from digitmatch.cli import main

    installed("espeak-ng")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["voices", "--engines", "espeak-ng", "--out", str(blocker / "voices")]) == 2
    assert "--out" in _one_line_error(capsys)
    used = tmp_path / "used"
    used.mkdir()
    (used / "0_theo_0.wav").write_bytes(b"")
    assert main(["voices", "--engines", "espeak-ng", "--out", str(used)]) == 2
    assert "already holds 1 .wav" in _one_line_error(capsys)


def test_unknown_engine_is_refused_by_the_parser(capsys):
    from digitmatch.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["voices", "--engines", "espeak-ng,say"])
    assert exc.value.code == 2
    assert "unknown engine 'say'" in capsys.readouterr().err
