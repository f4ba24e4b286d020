"""Fixtures of the foreign-client tests (clients that share no code with digitmatch): Debian's
``kcat`` and a program on Apache Kafka's Java client, the shipped model, and real halves.

* ``kcat``: its path; skipped with the reason when it is not installed (``make system-deps``
  installs it, as ``.ci/system-deps`` does in CI).
* ``java_client``: the command that runs ``tests/clients/java``'s ``PairClient`` (``java -cp ...``).
  Maven compiles it into ``~/.cache/digitmatch/java-clients-<hash of the pom and sources>`` outside
  the clone, offline first (``-o``) and online when that fails (the first build resolves
  ``kafka-clients`` and Maven's compiler plugin from Maven Central into ``~/.m2``); a build whose
  classes and jars are all still there is reused.
* ``shipped_model``: ``model/savedmodels/digitmatch``; the test fails without it.
* ``real_halves``: :class:`RealData`, real held-out halves (FSDD recordings through the shipped model's
  MFCC settings, MNIST t10k images; the full data in ``data_dir`` when present, else the shipped
  sample): the first recording and the first image of each digit, in file order;
  ``.pair(spoken_digit, written_digit)`` is a :class:`Halves`, which also keeps the recording's
  samples (``write_wav``: the recording as a 16-bit PCM WAV file, what a user would start from).
* ``sox``: its path; skipped with the reason when it is not installed (Debian package sox, in
  ``.ci/system-deps``).
"""

from __future__ import annotations

import hashlib
import os
import wave
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
JAVA_PROJECT = HERE / "java"
JAVA_MAIN_CLASS = "io.digitmatch.clients.PairClient"
# matcher_harness (the project's own sender and reader, the verdicts' decision fields) is shared
# with tests/consumer.
sys.path.insert(0, str(HERE.parent / "consumer"))


@dataclass(frozen=True)
class Halves:
    """One recording's MFCC frames and one image, with their true digits."""

    mfcc: np.ndarray  # (frames, 13) float32
    image: np.ndarray  # (28, 28) uint8
    spoken_digit: int
    written_digit: int
    recording: np.ndarray  # the samples the MFCC frames were computed from, int16
    sample_rate: int

    def write_wav(self, path: Path) -> Path:
        """The recording as a mono 16-bit PCM WAV file."""
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(self.sample_rate)
            out.writeframes(np.ascontiguousarray(self.recording, dtype="<i2").tobytes())
        return path

    @property
    def frames(self) -> int:
        return self.mfcc.shape[0]

    def spoken_bytes(self) -> bytes:
        return np.ascontiguousarray(self.mfcc, dtype="<f4").tobytes()

    def written_bytes(self) -> bytes:
        return np.ascontiguousarray(self.image, dtype="u1").tobytes()


@pytest.fixture(scope="session")
def kcat() -> str:
    path = shutil.which("kcat")
    if path is None:
        pytest.skip("kcat is not installed (run `make system-deps`: Debian package kcat)")
    return path


@pytest.fixture(scope="session")
def sox() -> str:
    path = shutil.which("sox")
    if path is None:
        pytest.skip("sox is not installed (run `make system-deps`: Debian package sox)")
    return path


@pytest.fixture(scope="session")
def shipped_model() -> Path:
    """The model the product ships (model/savedmodels/digitmatch)."""
    from digitmatch.model.serving import DEFAULT_MODEL_ROOT, versions

    if not versions(DEFAULT_MODEL_ROOT):
        pytest.fail(f"no SavedModel under {DEFAULT_MODEL_ROOT}")
    return DEFAULT_MODEL_ROOT


def _java_build_dir() -> Path:
    from digitmatch.dev.kafka_native import cache_dir

    digest = hashlib.sha256()
    for path in sorted([JAVA_PROJECT / "pom.xml", *(JAVA_PROJECT / "src").rglob("*.java")]):
        digest.update(path.relative_to(JAVA_PROJECT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return cache_dir() / f"java-clients-{digest.hexdigest()[:16]}"


def _built(build: Path) -> str | None:
    """The run classpath of a complete earlier build in ``build``, else None."""
    listed = build / "classpath.txt"
    main_class = build / "classes" / (JAVA_MAIN_CLASS.replace(".", "/") + ".class")
    if not (listed.is_file() and main_class.is_file()):
        return None
    jars = listed.read_text().strip().split(os.pathsep)
    if not all(Path(jar).is_file() for jar in jars):
        return None
    return os.pathsep.join([str(build / "classes"), *jars])


@pytest.fixture(scope="session")
def java_client() -> list[str]:
    from digitmatch.dev.kafka_native import java_executable

    java = java_executable()
    build = _java_build_dir()
    classpath = _built(build)
    if classpath is None:
        mvn = shutil.which("mvn")
        if mvn is None:
            pytest.fail("Maven (`mvn`) is needed to build tests/clients/java (Debian: apt-get install maven)")
        command = [mvn, "-B", "-q", "-f", str(JAVA_PROJECT / "pom.xml"), f"-Dclients.build.directory={build}",
                   "compile", "dependency:build-classpath", f"-Dmdep.outputFile={build / 'classpath.txt'}"]
        for offline in (["-o"], []):  # once ~/.m2 has everything, no network is needed
            done = subprocess.run(command[:1] + offline + command[1:], capture_output=True, text=True)
            classpath = _built(build) if done.returncode == 0 else None
            if classpath is not None:
                break
        else:
            pytest.fail(f"Maven could not build {JAVA_PROJECT}: {(done.stdout + done.stderr)[-3000:]}")
    return [java, "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", classpath, JAVA_MAIN_CLASS]


class RealData:
    """The first held-out recording (as MFCC frames) and the first held-out image of each digit."""

    def __init__(self, frames: dict[int, np.ndarray], images: dict[int, np.ndarray],
                 recordings: dict[int, tuple[np.ndarray, int]]):
        self.frames = frames
        self.images = images
        self.recordings = recordings

    def pair(self, spoken_digit: int, written_digit: int) -> Halves:
        return Halves(self.frames[spoken_digit], self.images[written_digit], spoken_digit, written_digit,
                      *self.recordings[spoken_digit])


@pytest.fixture(scope="session")
def real_halves(data_dir, shipped_model) -> RealData:
    from digitmatch.data.sample import load_heldout
    from digitmatch.features import mfcc
    from digitmatch.producer.load import model_features

    recordings, images, _source = load_heldout(data_dir)
    features = model_features(shipped_model)
    frames, pictures, sounds = {}, {}, {}
    for digit in range(10):
        r = int(np.flatnonzero(recordings.digits == digit)[0])
        sounds[digit] = (np.asarray(recordings.audio[r], np.int16), int(recordings.sample_rates[r]))
        frames[digit] = mfcc(*sounds[digit], features)
        pictures[digit] = images.images[int(np.flatnonzero(images.labels == digit)[0])]
    return RealData(frames, pictures, sounds)
