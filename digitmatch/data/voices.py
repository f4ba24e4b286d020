"""Synthetic digit recordings: the ten digit words spoken by the text-to-speech engines installed
here, written as FSDD recordings (``{digit}_{speaker}_{take}.wav``) for training only.

* **Engines.** espeak-ng (its own English voices, ``gmw/*`` in ``espeak-ng --voices=en``, each
  plain or with a voice variant such as ``+m3`` / ``+f2``), flite (the voices ``flite -lv``
  lists, less the limited-domain ``*_time`` ones) and festival (the voices ``(voice.list)``
  finds, spoken with ``text2wave``). An engine that is not on ``PATH`` is skipped, with a log
  line; nothing is ever downloaded.
* **Speakers.** A speaker is (engine, voice, pitch, rate); each engine's catalogue is its voices
  times a fixed grid of pitches and rates (:data:`GRIDS`, :data:`PITCHES`); a flite or festival
  voice that says a word the same at the grid's lowest and highest pitch (flite's ``rms`` ignores
  the setting) keeps its own pitch, written ``p0``. :func:`choose_speakers` shares the
  speakers asked for among the engines as evenly as their catalogues allow and, within an engine,
  goes round its voices in a seeded order, taking a seeded pitch and rate not yet used. The same
  seed, engines and installed voices give the same speakers.
* **Units.** espeak-ng: pitch 0-99 (its ``-p``), rate in words per minute (``-s``). flite and
  festival: pitch is the target mean F0 in Hz (flite's ``int_f0_target_mean``; festival's
  ``int_lr_params``, which voices with another intonation model ignore), rate in percent of the
  voice's own speed (duration stretch ``100 / rate``).
* **Takes.** Take ``k`` of a digit is spoken at the speaker's pitch and rate plus a small jitter
  (:data:`JITTER`: rate +-6 %, pitch +-5 %) drawn from a generator seeded by (seed, speaker,
  digit, take): the takes differ, and a second run writes the same bytes.
* **Like FSDD.** Mono 16-bit PCM at 8 kHz (resampled with soxr, quality HQ, as
  :mod:`digitmatch.features` resamples), leading and trailing silence trimmed (:func:`trim`), named
  ``{digit}_{speaker}_{take}.wav`` with speaker ``synth-<engine>-<voice>-p<pitch>-s<rate>``, which
  :data:`digitmatch.data.fsdd.NAME_PATTERN` accepts and which says the voice is synthetic.
* **Manifest.** ``voices.json`` beside the WAVs: the seed, the engines' versions, the skipped
  engines and every speaker's engine, voice, pitch and rate. It holds no time stamp, so that it too
  is the same for the same seed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import wave
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Callable, Iterator, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from digitmatch.data.errors import DataError
from digitmatch.settings import SEED_LIMIT, Cli, add_model_options, build, path_problem, values_from_args

log = logging.getLogger(__name__)

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SAMPLE_RATE = 8000
PREFIX = "synth"
MANIFEST = "voices.json"
DEFAULT_OUT = Path("runs/voices")
ENGINES = ("espeak-ng", "flite", "festival")
# Each engine's pitches and rates (units in the module's docstring).
GRIDS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "espeak-ng": ((20, 30, 40, 50, 60, 70, 80), (120, 140, 160, 180)),
    "flite": ((85, 95, 105, 115, 125, 140), (85, 95, 105, 115)),
    "festival": ((85, 95, 105, 115, 125, 140), (85, 95, 105, 115)),
}
# Voices whose own pitch lies outside their engine's grid (flite's one female voice).
PITCHES = {("flite", "slt"): (150, 165, 180, 195, 210, 230)}
JITTER = {"rate": 0.06, "pitch": 0.05}  # fractions: a take's value is base * (1 + uniform(-j, j))
TIMEOUT_S = 60.0
TRIM_DB = -35.0  # frames this far below the loudest frame are silence
TRIM_FRAME_S = 0.010
TRIM_MARGIN_S = 0.020


class VoiceError(RuntimeError):
    """No engine to speak with, or an engine that failed; the message is one line."""


@dataclass(frozen=True)
class Speaker:
    """One synthetic voice: an engine's voice at a pitch and a rate."""

    engine: str
    voice: str
    pitch: int
    rate: int

    @property
    def name(self) -> str:
        """``synth-espeak-engbscotland-m3-p40-s150``: a FSDD speaker name (letters, digits, hyphens)."""
        voice = "-".join(_slug(part) for part in self.voice.split("+"))
        return f"{PREFIX}-{_slug(self.engine.removesuffix('-ng'))}-{voice}-p{self.pitch}-s{self.rate}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", text.lower()) or "x"


def is_synthetic(speaker: str) -> bool:
    return speaker.startswith(PREFIX + "-")


# ------------------------------------------------------------------------------------ the engines


def _output(command: Sequence[str], stdin: str | None = None, *, check: bool = True) -> str:
    try:
        done = subprocess.run(list(command), input=stdin, capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VoiceError(f"{command[0]}: {exc}") from None
    if check and done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).split())[-300:]
        raise VoiceError(f"{' '.join(command[:3])} ... failed (exit {done.returncode}): {tail}")
    return done.stdout + done.stderr


def _espeak_voices() -> list[str]:
    """English voices of espeak-ng itself (not mbrola's), each plain and with every numbered variant."""
    languages = []
    for line in _output(["espeak-ng", "--voices=en"]).splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5 and cols[4].startswith("gmw/") and cols[1] not in languages:
            languages.append(cols[1])
    variants = sorted({m.group(1) for m in re.finditer(r"!v/([mf][0-9]+)\b", _output(["espeak-ng", "--voices=variant"]))},
                      key=lambda v: (v[0], int(v[1:])))
    return [lang + (f"+{v}" if v else "") for lang in languages for v in ["", *variants]]


def _flite_voices() -> list[str]:
    text = _output(["flite", "-lv"])
    listed = text.split("Voices available:", 1)[-1].split()
    return [v for v in listed if not v.endswith("_time")]


def _festival_voices() -> list[str]:
    text = _output(["festival", "--pipe"], stdin="(print (voice.list))\n")
    match = re.search(r"\(([^()]*)\)", text)
    return match.group(1).split() if match else []


def _espeak_command(word: str, voice: str, pitch: float, rate: float, out: Path) -> list[str]:
    return ["espeak-ng", "-v", voice, "-p", str(int(round(pitch))), "-s", str(int(round(rate))), "-w", str(out), word]


def _flite_command(word: str, voice: str, pitch: float, rate: float, out: Path) -> list[str]:
    own = [] if pitch <= 0 else ["--setf", f"int_f0_target_mean={pitch:.1f}"]  # 0: the voice's own pitch
    return ["flite", "-voice", voice, *own, "--setf", f"duration_stretch={100.0 / rate:.4f}", "-t", word, "-o", str(out)]


def _festival_command(word: str, voice: str, pitch: float, rate: float, out: Path) -> list[str]:
    text = out.with_suffix(".txt")
    text.write_text(word + "\n")
    own = [] if pitch <= 0 else [  # 0: the voice's own pitch
        "-eval", f"(if (boundp 'int_lr_params) (set! int_lr_params (cons (list 'target_f0_mean {pitch:.1f}) "
                 "int_lr_params)))"]
    return ["text2wave", "-eval", f"(voice_{voice})", "-eval", f"(Parameter.set 'Duration_Stretch {100.0 / rate:.4f})",
            *own, "-o", str(out), str(text)]


@dataclass(frozen=True)
class Engine:
    name: str
    programs: tuple[str, ...]  # every program it needs on PATH
    voices: Callable[[], list[str]]
    command: Callable[[str, str, float, float, Path], list[str]]
    version_command: tuple[str, ...]

    def installed(self) -> bool:
        return all(shutil.which(p) for p in self.programs)

    def version(self) -> str:
        text = _output(list(self.version_command), check=False)  # flite --version exits 1
        lines = [" ".join(ln.split()) for ln in text.splitlines() if ln.strip()]
        return next((ln for ln in lines if "version" in ln.lower()), lines[0] if lines else "")


ENGINE_SPECS = {
    "espeak-ng": Engine("espeak-ng", ("espeak-ng",), _espeak_voices, _espeak_command, ("espeak-ng", "--version")),
    "flite": Engine("flite", ("flite",), _flite_voices, _flite_command, ("flite", "--version")),
    "festival": Engine("festival", ("festival", "text2wave"), _festival_voices, _festival_command,
                       ("festival", "--version")),
}


def available_engines(names: Sequence[str] = ENGINES) -> list[Engine]:
    """The engines of ``names`` whose programs are on PATH, in ``names``' order; each one missing is logged."""
    found = []
    for name in names:
        engine = ENGINE_SPECS[name]
        if engine.installed():
            found.append(engine)
        else:
            missing = ", ".join(p for p in engine.programs if not shutil.which(p))
            log.warning("TTS engine %s skipped: %s not on PATH", name, missing)
    return found


# --------------------------------------------------------------------------------- the speakers


def choose_speakers(catalogues: dict[str, list[str]], n: int, seed: int,
                    fixed_pitch: frozenset[tuple[str, str]] = frozenset()) -> list[Speaker]:
    """``n`` distinct speakers from the engines' voices (see the module's docstring), engine by
    engine; the (engine, voice) pairs of ``fixed_pitch`` keep their own pitch (0)."""
    capacity = {e: sum(len(pitches_of(e, voice, fixed_pitch)) for voice in v) * len(GRIDS[e][1])
                for e, v in catalogues.items()}
    share = dict.fromkeys(catalogues, 0)
    while sum(share.values()) < n and any(share[e] < capacity[e] for e in share):
        for engine in catalogues:
            if sum(share.values()) < n and share[engine] < capacity[engine]:
                share[engine] += 1
    speakers = []
    for engine, voices in catalogues.items():
        rng = np.random.default_rng([seed, zlib.crc32(engine.encode())])
        speakers += _pick(engine, voices, share[engine], rng, fixed_pitch)
    return speakers


def pitches_of(engine: str, voice: str, fixed_pitch: frozenset[tuple[str, str]] = frozenset()) -> tuple[int, ...]:
    if (engine, voice) in fixed_pitch:
        return (0,)
    return PITCHES.get((engine, voice), GRIDS[engine][0])


def _pick(engine: str, voices: list[str], k: int, rng: np.random.Generator,
          fixed_pitch: frozenset[tuple[str, str]]) -> list[Speaker]:
    rates = GRIDS[engine][1]
    order = [voices[i] for i in rng.permutation(len(voices))]
    used: set[tuple[str, int, int]] = set()
    chosen: list[Speaker] = []
    while len(chosen) < k:
        for voice in order:
            free = [(p, r) for p in pitches_of(engine, voice, fixed_pitch) for r in rates if (voice, p, r) not in used]
            if len(chosen) == k or not free:
                continue
            pitch, rate = free[int(rng.integers(len(free)))]
            used.add((voice, pitch, rate))
            chosen.append(Speaker(engine, voice, pitch, rate))
    return chosen


def take_settings(speaker: Speaker, digit: int, take: int, seed: int) -> tuple[float, float]:
    """(pitch, rate) of one take: the speaker's, jittered by a generator seeded from all four."""
    rng = np.random.default_rng([seed, zlib.crc32(speaker.name.encode()), digit, take])
    pitch = speaker.pitch * (1.0 + rng.uniform(-JITTER["pitch"], JITTER["pitch"]))
    rate = speaker.rate * (1.0 + rng.uniform(-JITTER["rate"], JITTER["rate"]))
    if speaker.engine == "espeak-ng":
        pitch = min(max(pitch, 0.0), 99.0)
    return round(pitch, 1), round(rate, 1)


# --------------------------------------------------------------------------------------- audio


def trim(signal: np.ndarray, rate: int) -> np.ndarray:
    """``signal`` without its leading and trailing silence: the span from the first to the last
    10 ms frame within :data:`TRIM_DB` of the loudest frame, widened by :data:`TRIM_MARGIN_S`."""
    frame = max(1, int(rate * TRIM_FRAME_S))
    count = len(signal) // frame
    if count == 0:
        return signal
    frames = signal[: count * frame].astype(np.float64).reshape(count, frame)
    energy = np.sqrt(np.mean(frames**2, axis=1))
    loud = np.flatnonzero(energy > energy.max() * 10.0 ** (TRIM_DB / 20.0))
    if energy.max() == 0.0 or loud.size == 0:
        return signal
    margin = int(rate * TRIM_MARGIN_S)
    start = max(0, int(loud[0]) * frame - margin)
    end = min(len(signal), (int(loud[-1]) + 1) * frame + margin)
    return signal[start:end]


def to_fsdd(samples: np.ndarray, rate: int) -> np.ndarray:
    """Integer PCM at ``rate`` -> int16 at 8 kHz, silence trimmed."""
    import soxr

    from digitmatch.features import to_float_audio

    signal = to_float_audio(samples).astype(np.float64)
    if rate != SAMPLE_RATE:
        signal = soxr.resample(signal, rate, SAMPLE_RATE, quality="HQ")
    signal = trim(signal, SAMPLE_RATE)
    return np.clip(np.round(signal * 32768.0), -32768, 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(samples.astype("<i2").tobytes())


def speak(engine: Engine, word: str, voice: str, pitch: float, rate: float, workdir: Path) -> np.ndarray:
    """``word`` spoken by ``engine`` as int16 samples at 8 kHz, trimmed."""
    from digitmatch.data.fsdd import read_wav

    raw = workdir / "take.wav"
    raw.unlink(missing_ok=True)
    _output(engine.command(word, voice, pitch, rate, raw))
    try:
        samples, source_rate = read_wav(raw)
    except DataError as exc:
        raise VoiceError(f"{engine.name} voice {voice}: {exc.problem}") from None
    audio = to_fsdd(samples, source_rate)
    if not np.any(audio):
        raise VoiceError(f"{engine.name} voice {voice} said nothing for {word!r}")
    return audio


def ignores_pitch(engine: Engine, voice: str) -> bool:
    """Whether ``voice`` says "one" the same at its engine's lowest and highest grid pitch."""
    pitches = pitches_of(engine.name, voice)
    with tempfile.TemporaryDirectory(prefix="digitmatch-voices-") as tmp:
        low, high = (speak(engine, WORDS[1], voice, p, 100.0, Path(tmp)) for p in (pitches[0], pitches[-1]))
        return np.array_equal(low, high)


# ------------------------------------------------------------------------------------ generating


@dataclass(frozen=True)
class Plan:
    """What :func:`generate` writes: the speakers, and the engines used and skipped."""

    engines: list[Engine]
    versions: dict[str, str]
    speakers: list[Speaker]
    skipped: list[str]
    seed: int
    takes: int

    @property
    def recordings(self) -> int:
        return len(self.speakers) * len(WORDS) * self.takes


def plan(engines: Sequence[str], speakers: int, takes: int, seed: int) -> Plan:
    """The speakers to generate with the installed ones of ``engines``; :class:`VoiceError` when none is."""
    unknown = [e for e in engines if e not in ENGINE_SPECS]
    if unknown:
        raise VoiceError(f"unknown engine {unknown[0]!r} (choose from {', '.join(ENGINES)})")
    found = available_engines(engines)
    if not found:
        raise VoiceError(f"no TTS engine installed (looked for {', '.join(engines)} on PATH; "
                         "e.g. apt-get install espeak-ng flite festival)")
    catalogues = {}
    for engine in found:
        voices = engine.voices()
        if voices:
            catalogues[engine.name] = voices
        else:
            log.warning("TTS engine %s skipped: it lists no voice", engine.name)
    if not catalogues:
        raise VoiceError(f"no voice found in {', '.join(e.name for e in found)}")
    used = [e for e in found if e.name in catalogues]
    fixed = frozenset((e.name, v) for e in used if e.name != "espeak-ng" for v in catalogues[e.name]
                      if ignores_pitch(e, v))
    return Plan(used, {e.name: e.version() for e in used}, choose_speakers(catalogues, speakers, seed, fixed),
                [e for e in engines if e not in catalogues], seed, takes)


def recordings(the_plan: Plan, workdir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(file name, int16 samples) of every take of every digit of every speaker, in order."""
    engines = {e.name: e for e in the_plan.engines}
    for speaker in the_plan.speakers:
        for digit, word in enumerate(WORDS):
            for take in range(the_plan.takes):
                pitch, rate = take_settings(speaker, digit, take, the_plan.seed)
                audio = speak(engines[speaker.engine], word, speaker.voice, pitch, rate, workdir)
                yield f"{digit}_{speaker.name}_{take}.wav", audio


def manifest(the_plan: Plan) -> dict:
    return {
        "generator": "digitmatch voices",
        "seed": the_plan.seed,
        "takes": the_plan.takes,
        "sample_rate": SAMPLE_RATE,
        "words": list(WORDS),
        "jitter": JITTER,
        "engines": {name: {"version": version} for name, version in the_plan.versions.items()},
        "skipped": the_plan.skipped,
        "speakers": [{"name": s.name, **asdict(s)} for s in the_plan.speakers],
        "recordings": the_plan.recordings,
    }


def generate(the_plan: Plan, out: Path, progress: Callable[[int], None] | None = None) -> dict:
    """Write every recording of ``the_plan`` and ``voices.json`` into ``out``; return the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="digitmatch-voices-") as tmp:
        for name, audio in recordings(the_plan, Path(tmp)):
            write_wav(out / name, audio)
            if progress is not None:
                progress(1)
    info = manifest(the_plan)
    (out / MANIFEST).write_text(json.dumps(info, indent=2) + "\n")
    return info


def manifest_summary(directory: Path) -> dict | None:
    """The engines, seed and speaker count of ``directory/voices.json``, or None without one."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, f"not a readable voices manifest ({exc})") from None
    return {key: info.get(key) for key in ("generator", "seed", "takes", "engines", "skipped")} | {
        "speakers": len(info.get("speakers", []))}


# ------------------------------------------------------------------------------ digitmatch voices


def engine_list(text: str) -> tuple[str, ...]:
    """``"espeak-ng,flite"`` -> ``("espeak-ng", "flite")``: known engines, each once."""
    import argparse

    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in ENGINE_SPECS]
    if unknown or not names:
        what = f"unknown engine {unknown[0]!r}" if unknown else "name at least one engine"
        raise argparse.ArgumentTypeError(f"{what} (choose from {', '.join(ENGINES)})")
    return names


class VoicesOptions(BaseModel):
    """``digitmatch voices``' options: each field is one flag with its ``DIGITMATCH_*`` variable
    (digitmatch.settings)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    out: Path = Field(DEFAULT_OUT, description="directory the WAVs and voices.json are written to "
                                               "(created; must not hold .wav files already)")
    engines: Annotated[tuple[str, ...], Cli(type=engine_list)] = Field(
        ENGINES, description="TTS engines to use, comma-separated (those not installed are skipped)")
    speakers: int = Field(30, ge=1, le=10_000, description="synthetic speakers, shared among the engines")
    takes: int = Field(10, ge=1, le=1000, description="recordings per digit per speaker (seeded pitch/rate jitter)")
    seed: int = Field(0, ge=0, le=SEED_LIMIT, description="seed choosing the voices, pitches, rates and jitter")


def configure(parser) -> None:
    add_model_options(parser, VoicesOptions)


def out_problem(out: Path) -> str | None:
    """Why ``--out`` cannot take the recordings, or None: a directory (created when missing, so its
    nearest existing parent must be writable) with no ``.wav`` file in it yet. Creates nothing."""
    problem = path_problem("--out", out, "new-dir")
    if problem:
        return problem
    try:
        existing = next(p for p in [out.absolute(), *out.absolute().parents] if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"--out: {str(out)!r} is not writable ({str(existing)!r} is not)"
        held = sum(1 for p in out.iterdir() if p.suffix.lower() == ".wav") if existing == out.absolute() else 0
    except OSError as exc:
        return f"--out: {str(out)!r} cannot be read: {exc.strerror or exc}"
    if held:
        return f"--out: {str(out)!r} already holds {held} .wav files (choose an empty or new directory)"
    return None


def run(args) -> int:
    import sys

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        options = build(VoicesOptions, values_from_args(VoicesOptions, args))
        problem = out_problem(options.out)  # before any engine runs; nothing is created yet
        if problem:
            raise VoiceError(problem)
        the_plan = plan(options.engines, options.speakers, options.takes, options.seed)
        log.info("%d speakers (%s), %d recordings -> %s", len(the_plan.speakers),
                 ", ".join(f"{e.name}: {sum(s.engine == e.name for s in the_plan.speakers)}" for e in the_plan.engines),
                 the_plan.recordings, options.out)
        bar = tqdm(total=the_plan.recordings, desc="voices", unit="wav", file=sys.stderr, leave=False,
                   disable=None)  # no bar when stderr is not a terminal
        with bar, logging_redirect_tqdm():
            generate(the_plan, options.out, bar.update)
    except (VoiceError, ValueError, OSError) as exc:
        print(f"digitmatch voices: error: {exc}", file=sys.stderr)
        return 2
    print(options.out / MANIFEST)
    return 0
