"""The seed-vs-improved comparison behind docs/model.md, as one reproducible command:

    python -m digitmatch.model.experiments [--data DIR] [--runs runs/experiments] [--only NAME ...]

Each experiment is one ``digitmatch train`` run in its own process (sequentially: the machine has
two cores), written to ``<runs>/<name>/``; a finished run (its ``metrics.json`` exists) is reused,
so an interrupted sweep resumes. The summary (every run's held-out metrics, parameters and
training time) goes to ``docs/model-experiments.json``, the Markdown table to stdout and into
``docs/model.md``.

Budget: the shipped model is the full-budget run (``digitmatch train`` defaults); every comparison
run (both architectures, recording split and each leave-one-speaker-out fold) uses the same
smaller budget, ``BUDGET``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
SHIPPED = Path(__file__).resolve().parent / "savedmodels" / "digitmatch"
SPEAKERS = ("george", "jackson", "nicolas", "theo", "yweweler")
# The comparison budget: the same for both architectures on every split. The seed network takes
# ~2.5x the improved one's time per step on this CPU, so a comparison at the shipped model's full
# budget (20 epochs x 45,000 pairs) would not fit in a CI-machine afternoon.
BUDGET = ["--epochs", "8", "--pairs-per-epoch", "15000", "--test-pairs", "5000"]


def experiments(voices: Sequence[Path] = ()) -> dict[str, list[str]]:
    """name -> ``digitmatch train`` arguments, cheapest and most informative first. ``voices``:
    directories written by ``digitmatch voices``; the improved network is then also trained with
    each set of synthetic speakers added (``--extra-voices``), on every split, at the same budget,
    in runs named after the directory (``improved-<dir name>-speaker-<name>``, ``...-recording``)."""
    runs = {"improved-recording-full": ["--arch", "improved", "--split", "recording", "--seed", "0"]}
    for speaker in SPEAKERS:
        runs[f"improved-speaker-{speaker}"] = [
            "--arch", "improved", "--split", f"speaker:{speaker}", "--seed", "0", *BUDGET]
    for directory in voices:
        tag, extra = voices_tag(directory), ["--extra-voices", str(directory)]
        for speaker in SPEAKERS:
            runs[f"improved-{tag}-speaker-{speaker}"] = [
                "--arch", "improved", "--split", f"speaker:{speaker}", "--seed", "0", *BUDGET, *extra]
        runs[f"improved-{tag}-recording"] = ["--arch", "improved", "--split", "recording", "--seed", "0",
                                             *BUDGET, *extra]
    for arch in ("improved", "seed"):
        runs[f"{arch}-recording"] = ["--arch", arch, "--split", "recording", "--seed", "0", *BUDGET]
    for speaker in SPEAKERS:
        runs[f"seed-speaker-{speaker}"] = ["--arch", "seed", "--split", f"speaker:{speaker}", "--seed", "0", *BUDGET]
    return runs


# The runs trained with a set of synthetic voices: improved-<tag>-speaker-<name> / -recording.
VOICES_RUN = re.compile(r"improved-(voices[A-Za-z0-9_-]*?)-(?:speaker-[a-z]+|recording)")


def voices_tag(directory: Path) -> str:
    """The runs' name for a voices directory: its name, which must start with ``voices``."""
    tag = Path(directory).name
    if not VOICES_RUN.fullmatch(f"improved-{tag}-recording"):
        raise ValueError(f"a voices directory's name must start with 'voices' and hold only letters, digits, "
                         f"'-' and '_' (got {tag!r})")
    return tag


def run_root(name: str, runs_dir: Path) -> Path:
    # The shipped model *is* the full-budget improved run on the recording split (same command, seed).
    return SHIPPED if name == "improved-recording-full" else runs_dir / name


def run_one(name: str, train_args: list[str], runs_dir: Path, data: str | None) -> dict:
    root = run_root(name, runs_dir)
    metrics_path = root / "reports" / "1" / "metrics.json"
    if not metrics_path.is_file():
        cmd = [sys.executable, "-m", "digitmatch.cli", "train", *train_args,
               "--out", str(root), "--version", "1", "--verbose", "2"]
        if data:
            cmd += ["--data", data]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
    result = json.loads(metrics_path.read_text())
    flags = dict(zip(train_args[::2], train_args[1::2]))
    result["max_epochs"] = int(flags.get("--epochs", 20))  # the defaults of `digitmatch train`
    result["pairs_per_epoch"] = int(flags.get("--pairs-per-epoch", 45000))
    result["command"] = "digitmatch train " + " ".join(train_args) + f" --out {root.relative_to(REPO)} --version 1"
    return result


def summary_table(results: dict[str, dict]) -> str:
    """Markdown: seed and improved at the same budget, and the shipped (full-budget) model; the
    recording split at 50/50 and 10 % matches, leave-one-speaker-out mean/worst, then per fold."""
    columns = {  # header -> (recording-split run, architecture of the leave-one-speaker-out runs)
        "seed (2019), same budget": ("seed-recording", "seed"),
        "improved, same budget": ("improved-recording", "improved"),
        "improved, shipped (full budget)": ("improved-recording-full", None),
    }
    tags = sorted({m.group(1) for name in results if (m := VOICES_RUN.fullmatch(name))})
    for tag in tags:
        columns[f"improved + synthetic {tag}, same budget"] = (f"improved-{tag}-recording", f"improved-{tag}")

    def test(run, ratio, key="balanced_accuracy"):
        return results[run]["test"][f"match_{ratio}"][key]

    def loso(arch):
        if arch is None:
            raise KeyError(arch)
        return [test(f"{arch}-speaker-{s}", 0.5) for s in SPEAKERS]

    rows = [
        ("parameters", lambda run, arch: f"{results[run]['parameters']:,}"),
        ("training budget (epochs run / max x pairs per epoch)",
         lambda run, arch: f"{results[run]['epochs']} / {results[run]['max_epochs']} x {results[run]['pairs_per_epoch']:,}"),
        ("training time (s, this 2-core machine)", lambda run, arch: f"{results[run]['fit_duration_s']:.0f}"),
        ("recording split, 50/50: balanced accuracy", lambda run, arch: f"{test(run, 0.5):.4f}"),
        ("recording split, 50/50: ROC AUC", lambda run, arch: f"{test(run, 0.5, 'roc_auc'):.4f}"),
        ("recording split, 10 % match: balanced accuracy", lambda run, arch: f"{test(run, 0.1):.4f}"),
        ("recording split, 10 % match: accuracy", lambda run, arch: f"{test(run, 0.1, 'accuracy'):.4f}"),
        ("recording split, 10 % match: F1", lambda run, arch: f"{test(run, 0.1, 'f1'):.4f}"),
        ("leave-one-speaker-out, 50/50: mean balanced accuracy",
         lambda run, arch: f"{sum(loso(arch)) / len(SPEAKERS):.4f}"),
        ("leave-one-speaker-out, 50/50: worst balanced accuracy", lambda run, arch: f"{min(loso(arch)):.4f}"),
    ]
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, fn in rows:
        cells = []
        for run, arch in columns.values():
            try:
                cells.append(fn(run, arch))
            except KeyError:
                cells.append("n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    archs = {"seed": "seed", "improved": "improved"} | {f"improved-{tag}": f"improved + synthetic {tag}" for tag in tags}
    lines += ["", "| held-out speaker (50/50) | " + " | ".join(
        f"{label}: balanced accuracy (spoken digit acc.)" for label in archs.values()) + " |",
              "|---" * (len(archs) + 1) + "|"]
    for speaker in SPEAKERS:
        cells = []
        for arch in archs:
            m = results.get(f"{arch}-speaker-{speaker}", {}).get("test", {}).get("match_0.5")
            if m is None:
                cells.append("n/a")
            elif "spoken_digit_accuracy" in m:
                cells.append(f"{m['balanced_accuracy']:.4f} ({m['spoken_digit_accuracy']:.3f})")
            else:  # the seed network has no digit heads
                cells.append(f"{m['balanced_accuracy']:.4f}")
        lines.append(f"| {speaker} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data directory (default: digitmatch's default)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "experiments")
    parser.add_argument("--summary", type=Path, default=REPO / "docs" / "model-experiments.json")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "model.md",
                        help="page whose experiments-table markers receive the table")
    parser.add_argument("--only", nargs="*", default=None, help="run only these experiment names")
    parser.add_argument("--table-only", action="store_true", help="summarise finished runs, train nothing")
    parser.add_argument("--extra-voices", type=Path, nargs="*", default=[],
                        help="directories of synthetic speakers written by `digitmatch voices`: adds the improved "
                             "network's runs trained with each (improved-<dir name>-*)")
    args = parser.parse_args(argv)

    results = {}
    if args.summary.is_file():
        results = json.loads(args.summary.read_text()).get("runs", {})
    for name, train_args in experiments(args.extra_voices).items():
        if args.only is not None and name not in args.only:
            continue
        root = run_root(name, args.runs)
        done = (root / "reports" / "1" / "metrics.json").is_file()
        if args.table_only and not done:
            continue
        results[name] = run_one(name, train_args, args.runs, args.data)
        args.summary.write_text(json.dumps({"runs": results}, indent=2) + "\n")
    table = summary_table(results)
    print(table)
    write_table(table, args.doc)
    return 0


def write_table(table: str, doc: Path) -> None:
    """Put the table between the ``experiments-table`` markers of ``doc`` (docs/model.md)."""
    start, end = "<!-- experiments-table -->", "<!-- /experiments-table -->"
    text = doc.read_text() if doc.is_file() else ""
    if start not in text or end not in text:
        return
    head, rest = text.split(start, 1)
    doc.write_text(head + start + "\n" + table + "\n" + end + rest.split(end, 1)[1])


if __name__ == "__main__":
    sys.exit(main())
