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
    ("Faults", ["crash_sigkill", "rebalance", "broker_absent_at_start", "broker_lost_mid_run",
                "overload_burst", "partner_never_arrives"]),
    ("Bad input", ["bad_input_generated", "bad_input_join_rules"]),
]  # fmt: skip

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

INTRO = """\
# Reliability

What the matcher does when things go wrong, measured by the reliability suite
(`tests/reliability/`, part of `make test` and CI) against a real Kafka-protocol broker (the
embedded Tansu broker), real `digitmatch serve` processes and real SavedModels. Nothing here is
typed by hand: every number below was written by the suite itself and rendered by
`tests/reliability/report.py`. To measure again (5-10 minutes on 2 cores):

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
  --commit-interval-ms 200` (Tansu's group joins take about half the session timeout), on the
  Kafka client `DIGITMATCH_KAFKA_CLIENT` names (the matcher's default, librdkafka, unless set).
  `tests/consumer/test_matcher.py` runs its crash, restart, rebalance and back-pressure tests on
  both clients in every test run.
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
* **Rebalances.** On revocation the matcher drains and publishes what is joined, commits, and
  drops the pending halves of the revoked partitions. A partition the same matcher gets back (the
  eager protocol revokes everything, then assigns) is sought back to its commit point, so its
  dropped halves are read again (`reading partitions again from (read-back start, commit point)` in the log).
* **Bad input** never reaches the join: it is copied to `pairs.dlq` byte for byte with
  `dm-dlq-reason`, `dm-dlq-detail` and `dm-dlq-source`, and its offset counts as finished. A
  second copy of a pending half with other bytes is `conflicting_duplicate` (the first one read
  wins); an identical copy, or an identical half of a recently decided pair, is dropped silently;
  a half with other bytes for a recently decided pair is `already_decided`. A record with neither
  key nor value, or with a null header value, cannot be produced by kafka-python; the decoder's
  unit tests (`tests/test_wire.py`) cover both.
* **Security** (`test_security.py`, no figures): no pickle module or `allow_pickle` anywhere in
  `core/ consumer/ producer/ model/` (AST scan); the value size is checked before the key, the
  headers or any array (a header declaring 10^12 frames allocates under 64 KiB); `/metrics`,
  `/healthz`, `/readyz` bind to `--metrics-host` / `DIGITMATCH_METRICS_HOST`; the SASL/TLS options
  reach the producer, consumer and admin clients under kafka-python's own names (and the
  matcher's librdkafka clients under librdkafka's, `tests/kafka/test_librdkafka.py`); the image
  runs as uid 10001.
"""


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
            out.append(f"\n_recorded {entry['recorded']}_\n")
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
