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


# Changes to the improved recipe, measured at the same budget on every split (docs/model.md,
# "Recipe ingredients under test"): name -> the `digitmatch train` flags that make the change.
# Several at once: their names joined by "+" (e.g. conv-bilstm+affine-images).
INGREDIENTS = {
    "conv-bilstm": ["--audio-branch", "conv-bilstm"],
    "affine-images": ["--image-augment", "affine"],
    "no-speed": ["--speed-factors", ""],
    "vtlp": ["--vtlp-factors", "0.9,0.95,1.05,1.1"],
    "masks-2": ["--mfcc-masks", "2"],
    # a quarter of the training pairs from the synthetic voices, whatever their number: with a
    # voices set only
    "share-25": ["--extra-voices-share", "0.25"],
}


def needs_voices(spec: str) -> bool:
    """Whether ``spec`` changes how the synthetic voices are used: run with a voices set only."""
    return "--extra-voices-share" in ingredient_flags(spec)


def ingredient_flags(spec: str) -> list[str]:
    """The ``digitmatch train`` flags of ``spec``: an ingredient's name, or several joined by ``+``."""
    flags = []
    for name in spec.split("+"):
        if name not in INGREDIENTS:
            raise ValueError(f"unknown ingredient {name!r}; choose from {', '.join(INGREDIENTS)} "
                             "(several joined by '+')")
        flags += INGREDIENTS[name]
    return flags


def experiments(voices: Sequence[Path] = (), ingredients: Sequence[str] = (),
                seeds: Sequence[int] = (0,)) -> dict[str, list[str]]:
    """name -> ``digitmatch train`` arguments, cheapest and most informative first.

    ``voices``: directories written by ``digitmatch voices``; ``ingredients``: names from
    :data:`INGREDIENTS`. The improved network is then also trained, on every split at the same
    budget, with each voices set added (``--extra-voices``), with each ingredient, and with each
    ingredient and each voices set together: runs ``improved-<variant>-speaker-<name>`` and
    ``improved-<variant>-recording``, the variant being ``<voices dir name>``, ``<ingredient>`` or
    ``<voices dir name>-<ingredient>`` (an ingredient may be several joined by ``+``:
    :func:`ingredient_flags`; one about the voices, :func:`needs_voices`, only with each voices set). ``seeds``: each seed other than 0 repeats every improved run at the
    comparison budget with that seed, as ``<name>-seed<n>`` (seed 0's runs keep their names)."""
    variants = {voices_tag(d): ["--extra-voices", str(d)] for d in voices}
    variants |= {name: ingredient_flags(name) for name in ingredients if not needs_voices(name)}
    variants |= {f"{voices_tag(d)}-{name}": ["--extra-voices", str(d), *ingredient_flags(name)]
                 for d in voices for name in ingredients}
    runs = {"improved-recording-full": ["--arch", "improved", "--split", "recording", "--seed", "0"]}
    for speaker in SPEAKERS:
        runs[f"improved-speaker-{speaker}"] = [
            "--arch", "improved", "--split", f"speaker:{speaker}", "--seed", "0", *BUDGET]
    for variant, extra in variants.items():
        for speaker in SPEAKERS:
            runs[f"improved-{variant}-speaker-{speaker}"] = [
                "--arch", "improved", "--split", f"speaker:{speaker}", "--seed", "0", *BUDGET, *extra]
        runs[f"improved-{variant}-recording"] = ["--arch", "improved", "--split", "recording", "--seed", "0",
                                                 *BUDGET, *extra]
    for arch in ("improved", "seed"):
        runs[f"{arch}-recording"] = ["--arch", arch, "--split", "recording", "--seed", "0", *BUDGET]
    for speaker in SPEAKERS:
        runs[f"seed-speaker-{speaker}"] = ["--arch", "seed", "--split", f"speaker:{speaker}", "--seed", "0", *BUDGET]
    comparison = [name for name in runs if name.startswith("improved-") and name != "improved-recording-full"]
    for seed in seeds:
        if seed != 0:
            for name in comparison:
                at = runs[name].index("--seed")
                runs[f"{name}-seed{seed}"] = [*runs[name][:at + 1], str(seed), *runs[name][at + 2:]]
    return runs


# The improved network's runs of a variant (voices, ingredients): improved-<variant>-speaker-<name> / -recording,
# and -seed<n> after either for a seed other than 0.
VARIANT_RUN = re.compile(r"improved-([A-Za-z0-9_+-]+?)-(?:speaker-[a-z]+|recording)(?:-seed\d+)?")
SEEDED_RUN = re.compile(r"(.+)-seed(\d+)")


def seeds_of(results: dict[str, dict]) -> list[int]:
    """The seeds among ``results``' run names (0: the names without a ``-seed<n>`` suffix), sorted."""
    return sorted({int(m.group(2)) if (m := SEEDED_RUN.fullmatch(name)) else 0 for name in results})


def voices_tag(directory: Path) -> str:
    """The runs' name for a voices directory: its name, which must start with ``voices``."""
    tag = Path(directory).name
    if not re.fullmatch(r"voices[A-Za-z0-9_-]*", tag):
        raise ValueError(f"a voices directory's name must start with 'voices' and hold only letters, digits, "
                         f"'-' and '_' (got {tag!r})")
    return tag


def variant_label(variant: str) -> str:
    """How the tables name a variant: ``synthetic <voices>`` and the ingredients, joined by `` + ``."""
    names = variant.split("+")
    first, voices = names[0], None
    for name in sorted(INGREDIENTS, key=len, reverse=True):
        if first != name and first.endswith(f"-{name}"):
            voices, names[0] = first[:-len(name) - 1], name
            break
    if first not in INGREDIENTS and voices is None:
        return f"synthetic {variant}"
    return " + ".join(([f"synthetic {voices}"] if voices else []) + names)


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


def variants_of(results: dict[str, dict]) -> list[str]:
    """The variants among ``results``' run names, sorted."""
    return sorted({m.group(1) for name in results if (m := VARIANT_RUN.fullmatch(name))})


def ablation_table(results: dict[str, dict]) -> str:
    """Markdown: each variant's leave-one-speaker-out figures beside the improved recipe's, and the
    change in the mean. A variant's figures are over the seeds for which every fold was run (a
    fold's figure is its mean over those seeds; the worst fold is the lowest of those means), with
    the mean of each seed beside them (how far seeds alone move it); the change is against the
    recipe over the seeds both have. Variants without one complete seed are
    left out."""
    def test(name):
        return results.get(name, {}).get("test", {}).get("match_0.5")

    def run(name, seed):
        return name if seed == 0 else f"{name}-seed{seed}"

    def complete(arch):
        """{seed: the five folds' results} for the seeds with every fold run."""
        found = {seed: [test(run(f"{arch}-speaker-{s}", seed)) for s in SPEAKERS] for seed in seeds_of(results)}
        return {seed: folds for seed, folds in found.items() if None not in folds}

    def loso_mean(by_seed):
        return sum(r["balanced_accuracy"] for folds in by_seed.values() for r in folds) / (len(by_seed) * len(SPEAKERS))

    base = complete("improved")
    lines = ["| improved recipe, same budget | seeds | LOSO mean balanced accuracy | per seed | change | worst fold | "
             "mean spoken-digit accuracy | recording split, 50/50 |", "|---|---|---|---|---|---|---|---|"]
    for variant in ["", *variants_of(results)]:
        arch = f"improved-{variant}" if variant else "improved"
        by_seed = complete(arch)
        if not by_seed:
            continue
        shared = {seed: base[seed] for seed in by_seed if seed in base}
        mean = loso_mean(by_seed)
        change = "-" if not variant else (
            f"{loso_mean({seed: by_seed[seed] for seed in shared}) - loso_mean(shared):+.4f}" if shared else "n/a")
        per_fold = [sum(folds[i]["balanced_accuracy"] for folds in by_seed.values()) / len(by_seed)
                    for i in range(len(SPEAKERS))]
        spoken = sum(r.get("spoken_digit_accuracy", float("nan")) for folds in by_seed.values() for r in folds) / (
            len(by_seed) * len(SPEAKERS))
        recordings = [r for seed in by_seed if (r := test(run(f"{arch}-recording", seed))) is not None]
        label = f"+ {variant_label(variant)}" if variant else "the shipped recipe, unchanged"
        each = ", ".join(f"{loso_mean({seed: folds}):.4f}" for seed, folds in by_seed.items())
        cells = [", ".join(map(str, by_seed)), f"{mean:.4f}", each, change, f"{min(per_fold):.4f}", f"{spoken:.3f}",
                 f"{sum(r['balanced_accuracy'] for r in recordings) / len(recordings):.4f}" if recordings else "n/a"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(results: dict[str, dict]) -> str:
    """Markdown: seed and improved at the same budget, and the shipped (full-budget) model; the
    recording split at 50/50 and 10 % matches, leave-one-speaker-out mean/worst, then per fold."""
    columns = {  # header -> (recording-split run, architecture of the leave-one-speaker-out runs)
        "seed (2019), same budget": ("seed-recording", "seed"),
        "improved, same budget": ("improved-recording", "improved"),
        "improved, shipped (full budget)": ("improved-recording-full", None),
    }
    tags = variants_of(results)
    for tag in tags:
        columns[f"improved + {variant_label(tag)}, same budget"] = (f"improved-{tag}-recording", f"improved-{tag}")

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

    archs = {"seed": "seed", "improved": "improved"} | {f"improved-{tag}": f"improved + {variant_label(tag)}"
                                                        for tag in tags}
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
    parser.add_argument("--ingredients", nargs="*", default=[],
                        help=f"changes to the improved recipe ({', '.join(INGREDIENTS)}; several at once joined by "
                             "'+'): adds the improved network's runs with each (improved-<ingredient>-*), and with "
                             "each voices set too")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0],
                        help="seeds of the improved network's comparison runs (default: 0); each seed but 0 adds "
                             "every such run again as <name>-seed<n>, and the ablation table averages over the seeds")
    parser.add_argument("--only", nargs="*", default=None, help="run only these experiment names")
    parser.add_argument("--table-only", action="store_true", help="summarise finished runs, train nothing")
    parser.add_argument("--extra-voices", type=Path, nargs="*", default=[],
                        help="directories of synthetic speakers written by `digitmatch voices`: adds the improved "
                             "network's runs trained with each (improved-<dir name>-*)")
    args = parser.parse_args(argv)

    results = {}
    if args.summary.is_file():
        results = json.loads(args.summary.read_text()).get("runs", {})
    try:
        runs = experiments(args.extra_voices, args.ingredients, args.seeds)
    except ValueError as exc:
        parser.error(str(exc))
    for name, train_args in runs.items():
        if args.only is not None and name not in args.only:
            continue
        root = run_root(name, args.runs)
        done = (root / "reports" / "1" / "metrics.json").is_file()
        if args.table_only and not done:
            continue
        results[name] = run_one(name, train_args, args.runs, args.data)
        args.summary.write_text(json.dumps({"runs": results}, indent=2) + "\n")
    table = summary_table(results) + "\n\n" + ablation_table(results)
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
