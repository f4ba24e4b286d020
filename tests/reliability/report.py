"""Render the reliability suite's figures (JSON written by tests/reliability/conftest.py) as
docs/reliability.md.

    python tests/reliability/report.py docs/reliability.json docs/reliability.md

``make reliability`` runs the suite with ``DIGITMATCH_RELIABILITY_REPORT`` set and then this.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ORDER = [
    ("Faults", ["crash_sigkill", "crash_sigkill_load", "rebalance", "rebalance_load", "exactly_once",
                "broker_absent_at_start", "broker_lost_mid_run", "overload_burst", "partner_never_arrives"]),
    ("Faults on a three-node cluster", ["cluster_leader_sigkill", "cluster_broker_and_matcher_kill",
                                        "cluster_restart_one", "cluster_restart_all", "cluster_broker_sigstop"]),
    ("Bad input", ["bad_input_generated", "bad_input_join_rules"]),
    ("Hostile input and pauses", ["hostile_header_name", "hostile_oversized_dead_letter", "hostile_compression",
                                  "hostile_http_flood",
                                  "hostile_pause_short", "hostile_pause_long", "hostile_pause_partners_after",
                                  "hostile_stale_owner",
                                  "hostile_backlog_stream_time", "hostile_pending_bytes",
                                  "hostile_frozen_broker_shutdown", "model_swap_unservable", "model_swap_fallback"]),
]

SUMMARY = [  # column title, figure names tried in order
    ("pairs sent", ["pairs_sent", "good_pairs_sent", "pairs_after"]),
    ("pairs with a verdict", ["pairs_decided", "good_pairs_decided", "verdicts_after"]),
    ("lost", ["lost", "lost_after", "lone_without_verdict"]),
    ("re-emitted (identical)", ["re_emitted"]),
    ("unpaired", ["unpaired", "unpaired_verdicts", "unpaired_after"]),
    ("bad records sent", ["bad_records_sent", "lone_halves_sent"]),
    ("dead-lettered", ["dead_lettered"]),
    ("matcher crashes (injected / unexpected)", ["matcher_crashes_injected", "matcher_crashes", "process_restarts"]),
    ("peak pending halves", ["peak_pending_halves"]),
    ("peak RSS MiB", ["peak_rss_mib"]),
]

# How each scenario's broker is named under its figures.
BROKERS = {"kafka": " on Apache Kafka 3.9.1 (native KRaft)", "tansu": " on the embedded Tansu broker"}

INTRO = """\
# Reliability

What the matcher does when things go wrong, measured by the reliability suite
(`tests/reliability/`, part of `make test` and CI) against a real broker (Apache Kafka 3.9.1,
started natively by the suite: one node, or three for the cluster faults; `pytest --broker tansu`
runs the same scenarios on the embedded Tansu broker, and each scenario says which broker its
figures come from), real `digitmatch serve` processes and real SavedModels. Nothing here is
typed by hand: every number below was written by the suite itself and rendered by
`tests/reliability/report.py`. To measure again (about 25 minutes on 2 cores):

```
make reliability        # runs tests/reliability, writes docs/reliability.json and this page
```

How to read the figures:

* **lost**: pair IDs sent that never got a verdict on `matches.out`. **re-emitted**: verdict
  records beyond the first for a pair (delivery is at least once: after a crash or a rebalance
  the records after the last commit point are read again); **re_emitted_identical** counts pairs
  whose repeated verdicts agree on every decision field (outcome, threshold, model, predicted
  digits; score within 1e-5, float32 round-off of a different batch composition).
* **wrong_halves**: verdicts whose ground truth (`dm-digit` of both halves) is not the pair's own,
  i.e. a pair joined with a half that is not its partner (an `unpaired` verdict counts here too).
* **peak pending halves**: highest `digitmatch_pending_halves` sampled from `/metrics` (every
  0.1-0.5 s) of any matcher process; **peak RSS**: highest `VmHWM` in `/proc/<pid>/status` of any
  matcher process.
* Matcher processes run with `--session-timeout-ms 6000 --heartbeat-interval-ms 1000
  --commit-interval-ms 200` (Tansu's group joins take about half the session timeout; Apache
  Kafka's follow the heartbeats), on
  librdkafka, the matcher's only Kafka client (`digitmatch/kafka/clients.py` says why kafka-python is no
  longer one).
"""

RULES = """\
## Rules the suite checks (and their limits)

* **At least once, never lost.** A record is committed only when its pair's verdict (or its dead
  letter) is acknowledged by the broker, so a restarted or new owner rebuilds the join state by
  reading again from the commit point. Consumers of `matches.out` treat verdicts as upserts keyed
  by pair ID. The commit point may split a decided pair (first half before it, second half after)
  when the first half lies at most `--lookback-records` (10,000) offsets below it: whoever gets
  the partition reads those records again first, only to remember the pairs decided there, and a
  second half read again is joined again with its remembered partner (an identical verdict, never
  `unpaired`). Without that the commit point could not pass a stretch where every pair overlaps
  the next one (both halves sent apart, as the streams here do) and a crash would replay far more
  than the last commit interval (the `records_committed_at_kills` and `re_emitted` figures show
  how far the commit point got). One case stays outside the guarantee and is not injected here: a
  duplicate or late half whose pair's first half lies more than the read-back window below the
  commit point is, if it is read again after a crash, taken for a new pair and ends `unpaired`
  (see `consumer/offsets.py`).
* **Commit metadata.** Each commit also records how far the partition was read and which records
  before that are unfinished; whoever reads the partition next decides only those (and what comes
  after), and only remembers the rest. Apache Kafka keeps that metadata, so at least once a crash
  re-emits only what was finished since the last commit; Tansu drops it, and everything from the
  commit point is decided again, as before (nothing lost either way).
* **Exactly once** (`exactly_once`, Apache Kafka only). With `--processing-guarantee exactly-once`
  the verdicts, dead letters and offsets (with that metadata) of a commit interval are one
  transaction, fenced by the consumer group's generation (KIP-447); a read_committed reader must
  see every pair's verdict once and every bad record's dead letter once, through SIGKILLs and a
  rebalance. `verdict_records_read_uncommitted` counts what a read_uncommitted reader sees as well:
  the outputs of the transactions the kills left open, aborted by the broker. Tansu returns aborted
  records to read_committed readers and drops the metadata: there is no exactly-once to check on it.
* **Rebalances.** On revocation the matcher drains and publishes what is joined, commits, and
  drops the pending halves of the revoked partitions. Every partition assigned, one the same
  matcher gets back included (the eager protocol revokes everything, then assigns), is read from
  its committed position, so its dropped halves are read again (`reading partitions from (start,
  committed offset, recorded end)` in the log).
* **Bad input** never reaches the join: it is copied to `pairs.dlq` byte for byte with
  `dm-dlq-reason`, `dm-dlq-detail` and `dm-dlq-source` (cut to fit `--max-dead-letter-bytes`
  when it is too large, with headers saying so), and its offset counts as finished. A
  second copy of a pending half with other bytes is `conflicting_duplicate` (the first one read
  wins); an identical copy, or an identical half of a recently decided pair, is dropped silently;
  a half with other bytes for a recently decided pair is `already_decided`. A record with neither
  key nor value, or with a null header value, cannot be produced by kafka-python; the decoder's
  unit tests (`tests/test_wire.py`) cover both.
* **Security** (`test_security.py`, no figures): no pickle module or `allow_pickle` anywhere in
  `digitmatch/ consumer/ producer/ model/` (AST scan); the value size is checked before the key, the
  headers or any array (a header declaring 10^12 frames allocates under 64 KiB); `/metrics`,
  `/healthz`, `/readyz` bind to `--metrics-host` / `DIGITMATCH_METRICS_HOST`; the SASL/TLS options
  reach the producer, consumer and admin clients under kafka-python's own names (and the
  matcher's librdkafka clients under librdkafka's, `tests/kafka/test_librdkafka.py`); the image
  runs as uid 10001.
"""


HOSTILE = """\
Tried as an attacker would, from outside (first on the embedded broker, now measured on Apache Kafka;
`tests/reliability/test_hostile_records.py`, `test_hostile_http.py`, `test_model_swap.py`). What
each attack did before, and what changed:

* **A header name that is not UTF-8** (legal: Kafka header names are bytes). Before: confluent-kafka
  failed on reading the headers, the matcher exited and every restart read the record again;
  kafka-python raised on every poll without naming the partition. Now the record is dead-lettered
  as `bad_header` without its headers (they cannot be read), and kafka-python is no longer a client
  the matcher runs on: it cannot read past such a record at all.
* **Records at the size limit** (a 1 MiB value; 1.08 MB of headers). Before: the dead-letter copy
  was over the producer's 1,000,000-byte limit, refused forever, and the commit point stayed
  behind it. Now a dead letter is never over `--max-dead-letter-bytes` (default 1,000,000): large
  headers go first, then the value and the key are cut to prefixes, and `dm-dlq-truncated` /
  `dm-dlq-original-bytes` say so (docs/wire-format.md); a topic that still refuses gets the
  smallest form (no value, ~1.5 kB). Counted in `digitmatch_dead_letters_truncated_total`.
* **Compression bombs** (one record of 200 MiB of zeros, ~10 kB compressed, per codec). librdkafka
  inflates gzip, snappy and lz4 (the record is then `too_large`); it refuses the zstd one
  (`_BAD_COMPRESSION`), and before, every fetch failed on it again: the partition stopped. Now an
  offset the client cannot read is dead-lettered as `unreadable` (source only) and reading goes on
  after it. The three others are inflated whole by librdkafka, which has no setting that bounds
  the inflated size: peak RSS rose from ~656 MiB to ~1.5 GiB for the 200 MiB records. What bounds
  it is the broker's `message.max.bytes` (the compressed batch) times the codec's ratio (~1000:1
  for zeros), so a deployment's memory limit must leave room for one such batch; the record is
  dropped as soon as its dead letter (the first `--max-dead-letter-bytes` of it) is built.
* **Idle connections on the metrics port** (1,100, half a request each). Before: a thread per
  connection until the process ran out of file descriptors; `/metrics` and `/readyz` timed out, the
  model watcher failed. Now one thread serves at most 256 connections; at the cap the oldest idle
  or answered one makes room, request heads must arrive within 5 s and fit in 8 KiB, `/metrics` is
  built at most every 100 ms.
* **A stopped matcher** (SIGSTOP 4.5 s with a 3-s TTL, and 15 s past the session timeout with a
  10-s TTL; partners produced during the pause). Before: every waiting half was declared
  `unpaired` on SIGCONT, the partners then dead-lettered as `already_decided` (lost for good).
  **A stopped matcher whose partitions moved**: before, it woke up and published `unpaired` for
  pairs the other matcher had decided. **A backlog drained with a short TTL**: before, halves far
  apart in the log expired while the matcher read from one to the other. Now a TTL is judged
  against each partition's stream time (the highest record timestamp read, never ahead of the wall
  clock; a quiet, caught-up partition moves on with the clock one step per poll at most:
  `consumer/stream_time.py`), and no `unpaired` verdict is published for a partition the matcher
  no longer owns.
* **Large lone halves** (3,000 of 1,000 frames, 52 kB each) against `--max-pending-bytes`. Before:
  only a count bound (100,000 halves, ~5 GiB of such halves). Now the pending halves are also
  bounded in bytes (their arrays plus 1 KiB each, default 512 MiB); beyond it the halves read first
  are declared `unpaired` early. Peak RSS stated in the figures.
* **SIGTERM while the broker is frozen**, with joined pairs still to be published. Before: the
  drain's flush had no deadline; the matcher was still running when the test gave up on it after
  35 s (the issue's report: still running after 240 s). Now the shutdown is
  bounded by `--shutdown-timeout-s` (default 30 s): the drain gets half of it, and if committing or
  leaving the group still hangs the process exits with status 3; what was not committed is read
  again by the next matcher.
* **A model version that cannot serve** (a fixed batch dimension of 2). Before: swapped in, then 0
  pairs decided with `/readyz` 200. Now a version is proven on 15 realistic batches (sizes 1, 2, 3,
  7 and `--max-batch-size`; 1, half and all frames) before it is served; a version that fails a
  batch after the swap anyway is replaced by the previous one (`digitmatch_model_fallbacks_total`),
  and `/readyz` says `model_serving: false` while no version can serve.
* **Nonsense option values** (`tests/test_cli_options.py`: every option of every subcommand, by
  flag and by variable: `abc`, empty, `-1`, `0`, `nan`, `±inf`, `1e400`, `10^23`, NUL, lone
  surrogates, a line break, missing or wrong-kind paths; about 3,100 cases). Before: argparse usage
  blocks, three tracebacks, 840 values accepted. Now each is refused in one line
  (`digitmatch <command>: ...`, exit 2) before anything starts. A second `serve` on a taken metrics
  port exits 2 in under a second, naming the address.
* Also tried, no change needed: keys that are not UTF-8, empty, over 128 bytes or malformed
  (`bad_pair_id`), header values that are not ASCII or over 64 bytes (`bad_header`), and the 17
  families of the generated bad records above.

"""

FAULTS = """\
The crash and rebalance scenarios run twice: at a trickle (tens of pairs/s), and **at load**
(`crash_sigkill_load`, `rebalance_load`). At load the test first measures the matcher's own
saturation on the same broker, in the same run, the way `digitmatch bench` drains a backlog: the
matcher (default `--max-batch-size`) is frozen while a backlog is written, then timed from SIGCONT
to its last verdict (`saturation_pairs_per_s`); the stream then runs open-loop at half of it
(`rate_pairs_per_s`) while the faults are injected. The load generator (a librdkafka producer in
the test process), the broker and the matcher(s) share this machine's 2 cores, so the rate is half
of what one matcher drains *on this shared machine*, and a restarted matcher's start-up (TensorFlow,
the model's proof) takes CPU from the others while the backlog grows. `longest_verdict_gap_s` and
`seconds_until_latency_normal` come from the verdicts' own timestamps: the longest time without any
verdict decided from the fault on, and the time from the fault until the last verdict whose
end-to-end latency was above normal (twice the p99 before the fault, 1 s at least).

"""

CLUSTER = """\
Faults only a real cluster can show (`tests/reliability/test_cluster_faults.py`, always on Apache
Kafka): three KRaft nodes on the local JVM (`digitmatch/dev/kafka_native.py`; every node broker and
controller), `pairs.in`/`matches.out` with 4 partitions, replication factor 3,
`min.insync.replicas` 2; one stream at 100 pairs/s, the matcher's default `--request-timeout-ms`
(30 s) except where said. The three JVMs, the matcher(s) and the load generator share the 2 cores:
a node started again takes 15-30 s to catch up (`seconds_until_all_replicas_in_sync`). What the
figures show:

* **A SIGKILLed broker stays leader for about 9 s** (`seconds_until_new_leaders`): the controller
  fences a node only after `broker.session.timeout.ms` (9 s) without its heartbeat. The
  partitions it led get no verdict meanwhile (`longest_verdict_gap_on_its_partitions_s`), and the
  backlog is then decided late (`seconds_until_latency_normal`). Nothing is lost; the pairs decided
  again are those after the commit point when the group's session ran out.
* **When the group coordinator is the node that fails** (killed or frozen), the verdicts of
  *every* partition stop, not only those it led (`longest_verdict_gap_s` close to the gap on its
  partitions): the matcher commits synchronously on its poll loop, and a commit sent to a dead or
  frozen coordinator returns only when librdkafka gives up on it (here when the consumer's 6 s
  session ran out, `UNKNOWN_MEMBER_ID`); the partitions are then lost, the group joined again at
  the new coordinator, and the uncommitted records decided again (identical verdicts). Bounded,
  correct, but a stall of the whole matcher for the coordinator's failover.
* **A broker and a matcher killed together**: the survivor gets the dead matcher's partitions
  from the new coordinator once both the session timeout and the coordinator's failover are over
  (`seconds_until_the_survivor_owned_all`).
* **A broker stopped with SIGTERM** hands its leadership over in a controlled shutdown: the
  verdicts pause for about a second, nothing is decided again. **The whole cluster restarted**
  on its logs (all nodes SIGTERMed at once; the last one, with no quorum left, only stops at the
  cluster's 20 s SIGKILL): the matcher keeps running, its group session runs out, and once the
  cluster is back it resumes from its committed offsets. The pairs it decides again were first
  decided at most `re_decided_pairs_reached_back_s` before the verdicts stopped: under a second,
  the commit interval (200 ms) plus the pairs still open at the commit point (each written half
  follows its spoken half 20 pairs later, so the commit point trails the verdicts); compare
  `rate_times_commit_interval_pairs` with `pairs_decided_twice_or_more`. A replay from the start
  would decide `pairs_decided_until_verdicts_stopped` again.
* **A broker frozen (SIGSTOP) past the matcher's request timeout** (3 s here), short of the 9 s
  after which the cluster would fence it: librdkafka times the requests out and sends them again
  to the same leader until it answers (the producer is idempotent: a verdict sent again is
  written once); the pairs decided again are those after the commit point when the consumer's
  session ran out (the frozen node coordinated the group).

"""

SECTION_NOTES = {"Faults": FAULTS, "Faults on a three-node cluster": CLUSTER, "Hostile input and pauses": HOSTILE}


def fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.01 and value else f"{value:,.1f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {fmt(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value) or "none"
    return "-" if value is None else str(value)


def pick(figures: dict, names: list[str]):
    for name in names:
        if name in figures:
            value = figures[name]
            if name == "re_emitted":
                return f"{fmt(value)} ({fmt(figures.get('re_emitted_identical', 0))} of "\
                       f"{fmt(figures.get('pairs_decided_twice_or_more', 0))} pairs identical)"
            if name == "matcher_crashes_injected":
                return f"{fmt(value)} / {fmt(figures.get('unexpected_exits', 0))}"
            if name in ("matcher_crashes", "process_restarts"):
                return f"0 / {fmt(value)}"
            return fmt(value)
    return "-"


def render(data: dict) -> str:
    out = [INTRO]
    out.append(f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} on {os.cpu_count()} CPU cores "
               f"({platform.machine()}, Python {platform.python_version()}), shared with other work.\n")
    out.append("## Summary\n")
    out.append("| scenario | " + " | ".join(title for title, _ in SUMMARY) + " |")
    out.append("|---|" + "---|" * len(SUMMARY))
    for _, names in ORDER:
        for name in names:
            if name in data:
                figures = data[name]["figures"]
                out.append(f"| [{data[name]['title']}](#{name.replace('_', '-')}) | "
                           + " | ".join(pick(figures, cols) for _, cols in SUMMARY) + " |")
    out.append("")
    for section, names in ORDER:
        out.append(f"## {section}\n")
        if section in SECTION_NOTES:
            out.append(SECTION_NOTES[section])
        for name in names:
            if name not in data:
                out.append(f"### {name}\n\n_not measured in this run_\n")
                continue
            entry = data[name]
            out.append(f'<a id="{name.replace("_", "-")}"></a>\n')
            out.append(f"### {entry['title']}\n")
            out.append(f"**Injected:** {entry['injected']}.\n")
            out.append("| figure | value |\n|---|---|")
            for key, value in entry["figures"].items():
                out.append(f"| {key.replace('_', ' ')} | {fmt(value)} |")
            broker = BROKERS.get(entry.get("broker"), "")
            out.append(f"\n_recorded {entry['recorded']}{broker}_\n")
    out.append(RULES)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figures", type=Path, help="JSON written by the suite")
    parser.add_argument("output", type=Path, help="Markdown page to write")
    args = parser.parse_args(argv)
    data = json.loads(args.figures.read_text())
    args.output.write_text(render(data))
    print(f"wrote {args.output} ({len(data)} scenarios)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
