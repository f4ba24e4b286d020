"""Hostile model versions dropped into the versioned root a real matcher serves from.

The attack that was reported: a version whose serving signature has a fixed batch dimension of 2
(the shipped model behind ``[2, None, 13]`` / ``[2, 28, 28]`` inputs) loaded "ok", since the
warm-up tried one batch of 2, and was swapped in; from then on every batch of another size failed
and was retried forever: 0 of 10 pairs decided, ``/readyz`` still 200.

Here the matcher serves a copy of the shipped model as version 1 with ``--model-poll-s 0.2``;
while it serves, two hostile versions are renamed into the root: version 2 declares the fixed
batch of 2, version 3 hides it in the graph (its signature is open, its outputs are reshaped to a
batch of 2). Both must be refused before any swap (``digitmatch_model_loads_total{result="error"}``
grows by 2), and 10 pairs sent in batches of 1, 2, 3 and 4 must all be decided by version 1 with
``/readyz`` 200 throughout.

Then the fallback: a version that passes the proof but fails on a batch it did not try (the
shipped model with an assertion that the batch is not 33 frames long, a count the proof never
uses) is swapped in; the first batch of 33 frames fails on it and must be decided by the previous
version, restored at once (``digitmatch_model_fallbacks_total`` 1, an error in the log)."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from flow import serve_flags, tally
from matcher_harness import PairSpec, Topics, make_pairs, metric_value

pytestmark = [pytest.mark.slow, pytest.mark.any_broker]

POLL_S = 0.2
GROUPS = (1, 2, 3, 4)  # pairs sent together (one batch each, as far as the batcher's deadline goes)
GROUP_TIMEOUT_S = 30.0
LATE_FAILURE_FRAMES = 33  # not among the proof's frame counts for 93 frames (1, 47, 93)


def publish_wrapped(source: Path, root: Path, version: int, fault: str) -> Path:
    """The SavedModel ``source`` behind a serving function with ``fault``, written beside ``root``
    and renamed into ``root/<version>`` (as an exporter publishes):

    * ``batch_2_declared``: inputs declared ``[2, None, 13]`` / ``[2, 28, 28]``;
    * ``batch_2_in_graph``: inputs open, every output reshaped to a batch of 2;
    * ``fails_later``: an assertion that the batch is not ``LATE_FAILURE_FRAMES`` frames long."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(source))
    inner = loaded.signatures["serving_default"]
    batch = 2 if fault == "batch_2_declared" else None

    class Wrapped(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = loaded  # tracked: its variables are saved with the wrapper

        @tf.function(input_signature=[tf.TensorSpec([batch, None, 13], tf.float32, name="mfcc"),
                                      tf.TensorSpec([batch, 28, 28], tf.uint8, name="image")])
        def serve(self, mfcc, image):
            if fault == "fails_later":
                tf.debugging.assert_none_equal(tf.shape(mfcc)[1], LATE_FAILURE_FRAMES)
            out = inner(mfcc=mfcc, image=image)
            if fault == "batch_2_in_graph":
                out = {name: tf.reshape(value, [2, *value.shape[1:]]) for name, value in out.items()}
            return out

    staging = root.parent / f".{root.name}-{version}"
    module = Wrapped()
    tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
    meta = json.loads((source / "metadata.json").read_text())
    (staging / "metadata.json").write_text(json.dumps({**meta, "version": version, "architecture": fault}))
    target = root / str(version)
    staging.rename(target)
    return target


class ReadyWatch:
    """``/readyz`` every 0.2 s on a thread: the statuses seen."""

    def __init__(self, process):
        self.process = process
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="readyz-watch", daemon=True)

    def __enter__(self) -> "ReadyWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.statuses.append(self.process.get("/readyz", 2.0)[0])
            except OSError:
                self.statuses.append(0)
            self._stop.wait(0.2)


def scrape(process, name: str, labels: dict | None = None) -> float:
    status, text = process.get("/metrics")
    return (metric_value(text, name, labels) or 0.0) if status == 200 else 0.0


def wait_for_metric(process, name: str, labels: dict | None, at_least: float, timeout_s: float) -> float | None:
    """Seconds until the metric reaches ``at_least`` (None if it does not within ``timeout_s``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if scrape(process, name, labels) >= at_least:
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def send_in_groups(sender, reader, pairs: list[PairSpec], sizes) -> list[float | None]:
    """Send ``pairs`` in groups of ``sizes`` (both halves of a group at once), each once the one
    before is decided (or ``GROUP_TIMEOUT_S`` has passed); the seconds each group took."""
    took, start = [], 0
    for size in sizes:
        group = pairs[start:start + size]
        start += size
        started = time.monotonic()
        sender.send_all([p.spoken() for p in group] + [p.written() for p in group])
        wanted = {p.pair_id for p in group}
        got = reader.wait_for(lambda c: wanted <= c.verdicts.keys(), timeout_s=GROUP_TIMEOUT_S)
        took.append(round(time.monotonic() - started, 2) if wanted <= got.verdicts.keys() else None)
    return took


@pytest.fixture
def versioned_root(tmp_path, shipped_model) -> Path:
    """A root holding a copy of the shipped model as version 1."""
    root = tmp_path / "models" / "digitmatch"
    root.mkdir(parents=True)
    shutil.copytree(shipped_model / "1", root / "1")
    return root


def test_a_version_that_cannot_serve_every_batch_size_is_never_swapped_in(
        broker, start_matcher, figures, clients, versioned_root):
    topics = Topics.create(broker.connection, "swap")
    matcher = start_matcher(broker.bootstrap, **serve_flags(topics, versioned_root, "swap", model_poll_s=POLL_S))
    pairs = make_pairs(sum(GROUPS), "swap", seed=113)
    sender, reader = clients(broker.connection, topics)
    errors_label = {"result": "error"}
    errors_before = scrape(matcher, "digitmatch_model_loads_total", errors_label)
    with ReadyWatch(matcher) as ready:
        dropped = time.monotonic()
        publish_wrapped(versioned_root / "1", versioned_root, 2, "batch_2_declared")
        publish_wrapped(versioned_root / "1", versioned_root, 3, "batch_2_in_graph")
        export_s = time.monotonic() - dropped
        refused_s = wait_for_metric(matcher, "digitmatch_model_loads_total", errors_label, errors_before + 2, 60)
        took = send_in_groups(sender, reader, pairs, GROUPS)
        got = reader.poll(1.0)
    text = matcher.get("/metrics")[1]
    log = matcher.log_tail(200_000)
    result = tally(pairs, got.verdicts)
    versions = sorted({v.model.version for p in pairs for v in got.verdicts.get(p.pair_id, [])})
    errors = (metric_value(text, "digitmatch_model_loads_total", errors_label) or 0) - errors_before
    figures(
        "model_swap_unservable",
        title="Model versions that cannot serve every batch size dropped in while serving",
        injected="while the matcher serves a copy of the shipped model as version 1 (--model-poll-s "
                 f"{POLL_S:g}), two versions renamed into its root: v2, the shipped model behind inputs "
                 "declared [2, None, 13] / [2, 28, 28]; v3, the same batch of 2 hidden in the graph (open "
                 f"inputs, outputs reshaped to 2 rows); then {sum(GROUPS)} pairs sent in groups of "
                 f"{', '.join(map(str, GROUPS))}",
        proof_seconds_at_start_up=proof_seconds(log),
        seconds_to_export_and_drop_both=round(export_s, 1),
        seconds_from_the_last_drop_until_both_refused=None if refused_s is None else round(refused_s, 2),
        loads_refused=int(errors),
        model_swaps=int((metric_value(text, "digitmatch_model_loads_total", {"result": "ok"}) or 0) - 1),
        model_served_after={s.labels["version"]: s.value for s in _samples(text, "digitmatch_model_info")},
        pairs_sent=result.pairs_sent,
        pairs_decided=result.pairs_decided,
        lost=result.lost,
        wrong_halves=result.wrong_halves,
        decided_by_versions=versions,
        seconds_per_group=dict(zip(map(str, GROUPS), took)),
        readyz_samples=len(ready.statuses),
        readyz_not_200=sum(s != 200 for s in ready.statuses),
        matcher_crashes=0 if matcher.returncode is None else 1,
    )
    assert result.pairs_decided == len(pairs) and result.lost == 0 and result.wrong_halves == 0, (result, took)
    assert versions == [1], versions
    assert refused_s is not None and errors == 2, f"the hostile versions were not refused:\n{log[-3000:]}"
    assert "model version 2" in log and "breaks the serving contract" in log
    assert "model version 3" in log and "fails on a batch of 1 x 1 frames" in log
    assert "model hot swap" not in log
    assert ready.statuses and all(s == 200 for s in ready.statuses), ready.statuses
    assert metric_value(text, "digitmatch_model_info", {"name": "digitmatch", "version": "1"}) == 1
    assert matcher.returncode is None


def test_a_version_that_fails_after_the_swap_falls_back_to_the_previous(
        broker, start_matcher, figures, clients, versioned_root):
    topics = Topics.create(broker.connection, "fallback")
    matcher = start_matcher(broker.bootstrap, **serve_flags(topics, versioned_root, "fallback", model_poll_s=POLL_S))
    before, after = make_pairs(3, "fallback-before", seed=127), make_pairs(3, "fallback-after", seed=131)
    rng = np.random.default_rng(137)
    trigger = PairSpec("fallback-33-frames", 4, 4, rng.normal(size=(LATE_FAILURE_FRAMES, 13)).astype(np.float32),
                       rng.integers(0, 256, size=(28, 28), dtype=np.uint8))
    before = [PairSpec(p.pair_id, p.spoken_digit, p.written_digit, p.mfcc[:20], p.image) for p in before]
    sender, reader = clients(broker.connection, topics)
    with ReadyWatch(matcher) as ready:
        publish_wrapped(versioned_root / "1", versioned_root, 2, "fails_later")
        swapped_s = wait_for_metric(matcher, "digitmatch_model_info", {"name": "digitmatch", "version": "2"}, 1, 60)
        took = send_in_groups(sender, reader, before + [trigger] + after, (3, 1, 3))
        got = reader.poll(1.0)
    text = matcher.get("/metrics")[1]
    log = matcher.log_tail(200_000)
    everyone = before + [trigger] + after
    result = tally(everyone, got.verdicts)
    version_of = {p.pair_id: sorted({v.model.version for v in got.verdicts.get(p.pair_id, [])}) for p in everyone}
    figures(
        "model_swap_fallback",
        title="A swapped-in version that fails on a later batch",
        injected="while the matcher serves a copy of the shipped model as version 1, v2 renamed into its root: "
                 f"the shipped model with an assertion that a batch is not {LATE_FAILURE_FRAMES} frames long "
                 "(a frame count the proof does not try; it passes the proof and is swapped in); then 3 pairs "
                 f"of 20 frames, 1 pair of {LATE_FAILURE_FRAMES} frames, 3 pairs of 10-89 frames",
        seconds_until_swapped=None if swapped_s is None else round(swapped_s, 2),
        fallbacks=metric_value(text, "digitmatch_model_fallbacks_total"),
        model_served_after={s.labels["version"]: s.value for s in _samples(text, "digitmatch_model_info")},
        pairs_sent=result.pairs_sent,
        pairs_decided=result.pairs_decided,
        lost=result.lost,
        decided_by_version={"before": version_of[before[0].pair_id], "trigger": version_of[trigger.pair_id],
                            "after": sorted({v for p in after for v in version_of[p.pair_id]})},
        seconds_per_group=dict(zip(("before", "trigger", "after"), took)),
        readyz_samples=len(ready.statuses),
        readyz_not_200=sum(s != 200 for s in ready.statuses),
        matcher_crashes=0 if matcher.returncode is None else 1,
    )
    assert swapped_s is not None, log[-3000:]
    assert result.pairs_decided == len(everyone) and result.lost == 0 and result.wrong_halves == 0, took
    assert all(version_of[p.pair_id] == [2] for p in before)
    assert version_of[trigger.pair_id] == [1]
    assert all(version_of[p.pair_id] == [1] for p in after)
    assert metric_value(text, "digitmatch_model_fallbacks_total") == 1
    assert metric_value(text, "digitmatch_model_info", {"name": "digitmatch", "version": "1"}) == 1
    assert "failed on a batch of 1 pairs after it was swapped in" in log and "fell back to digitmatch v1" in log
    assert all(s == 200 for s in ready.statuses), ready.statuses
    assert matcher.returncode is None


def proof_seconds(log: str) -> float | None:
    """How long the proof of the first version loaded took (from the matcher's log)."""
    found = re.search(r"proven on \d+ batches .* in ([\d.]+) s", log)
    return float(found.group(1)) if found else None


def _samples(text: str, name: str):
    from prometheus_client.parser import text_string_to_metric_families

    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]
