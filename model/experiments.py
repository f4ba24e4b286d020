"""The seed-vs-improved comparison behind docs/model.md, as one reproducible command:

    python -m digitmatch.model.experiments [--data DIR] [--runs runs/experiments] [--only NAME ...]

Each experiment is one ``digitmatch train`` run in its own process (sequentially: the machine has
two cores), written to ``<runs>/<name>/``; a finished run (its ``metrics.json`` exists) is reused,
so an interrupted sweep resumes. The summary (every run's held-out metrics, parameters and
training time) goes to ``docs/model-experiments.json`` and a Markdown table to stdout.

Budget: the recording-split runs use the full training settings; the leave-one-speaker-out folds
use fewer epochs and pairs (the same for both architectures).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = Path(__file__).resolve().parent / "savedmodels" / "digitmatch"
SPEAKERS = ("george", "jackson", "nicolas", "theo", "yweweler")
FULL: list[str] = []  # the defaults of `digitmatch train`
FOLD = ["--epochs", "8", "--pairs-per-epoch", "15000", "--test-pairs", "5000"]
# The seed takes ~2.5x the improved network's time per step on this CPU: capped at 10 epochs.
SEED_RECORDING = ["--epochs", "10"]


def experiments() -> dict[str, list[str]]:
    """name -> ``digitmatch train`` arguments."""
    runs = {}
    for arch in ("improved", "seed"):
        extra = SEED_RECORDING if arch == "seed" else FULL
        runs[f"{arch}-recording"] = ["--arch", arch, "--split", "recording", "--seed", "0", *extra]
        for speaker in SPEAKERS:
            runs[f"{arch}-speaker-{speaker}"] = [
                "--arch", arch, "--split", f"speaker:{speaker}", "--seed", "0", *FOLD]
    return runs


def run_one(name: str, train_args: list[str], runs_dir: Path, data: str | None) -> dict:
    # The shipped model *is* the improved recording-split run (same command, same seed).
    root = SHIPPED if name == "improved-recording" else runs_dir / name
    metrics_path = root / "reports" / "1" / "metrics.json"
    if not metrics_path.is_file():
        cmd = [sys.executable, "-m", "digitmatch.cli", "train", *train_args,
               "--out", str(root), "--version", "1", "--verbose", "2"]
        if data:
            cmd += ["--data", data]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
    result = json.loads(metrics_path.read_text())
    result["command"] = "digitmatch train " + " ".join(train_args) + f" --out {root.relative_to(REPO)} --version 1"
    return result


def summary_table(results: dict[str, dict]) -> str:
    """Markdown: one row per architecture, recording split at 50/50 and 10 %, LOSO mean/worst."""
    lines = [
        "| | seed (2019) | improved |",
        "|---|---|---|",
    ]

    def cell(arch, fn):
        try:
            return fn(arch)
        except KeyError:
            return "n/a"

    def test(arch, split, ratio, key="balanced_accuracy"):
        return results[f"{arch}-{split}"]["test"][f"match_{ratio}"][key]

    def loso(arch):
        return [test(arch, f"speaker-{s}", 0.5) for s in SPEAKERS]

    rows = [
        ("parameters", lambda a: f"{results[f'{a}-recording']['parameters']:,}"),
        ("recording split, 50/50: balanced accuracy", lambda a: f"{test(a, 'recording', 0.5):.4f}"),
        ("recording split, 50/50: ROC AUC", lambda a: f"{test(a, 'recording', 0.5, 'roc_auc'):.4f}"),
        ("recording split, 10 % match: balanced accuracy", lambda a: f"{test(a, 'recording', 0.1):.4f}"),
        ("recording split, 10 % match: accuracy", lambda a: f"{test(a, 'recording', 0.1, 'accuracy'):.4f}"),
        ("recording split, 10 % match: F1", lambda a: f"{test(a, 'recording', 0.1, 'f1'):.4f}"),
        ("leave-one-speaker-out, 50/50: mean balanced accuracy", lambda a: f"{sum(loso(a)) / len(SPEAKERS):.4f}"),
        ("leave-one-speaker-out, 50/50: worst balanced accuracy", lambda a: f"{min(loso(a)):.4f}"),
        ("recording split: epochs run", lambda a: str(results[f"{a}-recording"]["epochs"])),
        ("recording split: training time (s)", lambda a: f"{results[f'{a}-recording']['fit_duration_s']:.0f}"),
    ]
    for label, fn in rows:
        lines.append(f"| {label} | {cell('seed', fn)} | {cell('improved', fn)} |")
    lines += ["", "| held-out speaker | seed | improved |", "|---|---|---|"]
    for speaker in SPEAKERS:
        split = "speaker-" + speaker

        def fold(arch, split=split):
            m = results[f"{arch}-{split}"]["test"]["match_0.5"]
            return f"{m['balanced_accuracy']:.4f} (spoken digit {m.get('spoken_digit_accuracy', float('nan')):.3f})"

        lines.append(f"| {speaker} | {cell('seed', fold)} | {cell('improved', fold)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data directory (default: digitmatch's default)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "experiments")
    parser.add_argument("--summary", type=Path, default=REPO / "docs" / "model-experiments.json")
    parser.add_argument("--only", nargs="*", default=None, help="run only these experiment names")
    parser.add_argument("--table-only", action="store_true", help="summarise finished runs, train nothing")
    args = parser.parse_args(argv)

    results = {}
    if args.summary.is_file():
        results = json.loads(args.summary.read_text()).get("runs", {})
    for name, train_args in experiments().items():
        if args.only is not None and name not in args.only:
            continue
        root = SHIPPED if name == "improved-recording" else args.runs / name
        done = (root / "reports" / "1" / "metrics.json").is_file()
        if args.table_only and not done:
            continue
        results[name] = run_one(name, train_args, args.runs, args.data)
        args.summary.write_text(json.dumps({"runs": results}, indent=2) + "\n")
    print(summary_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
