"""The experiments behind docs/model.md (model/experiments.py): which runs, and their table."""

from pathlib import Path

from digitmatch.model.experiments import SPEAKERS, ablation_table, experiments, summary_table, variant_label


def _result(balanced, spoken=None, parameters=263_733, seconds=100.0):
    match = {"balanced_accuracy": balanced, "roc_auc": 0.99, "accuracy": 0.95, "f1": 0.8}
    if spoken is not None:
        match["spoken_digit_accuracy"] = spoken
    return {"test": {"match_0.5": match, "match_0.1": match}, "parameters": parameters, "epochs": 8,
            "max_epochs": 8, "pairs_per_epoch": 15_000, "fit_duration_s": seconds}


def test_synthetic_voices_add_the_improved_runs_with_extra_voices_at_the_same_budget():
    plain = experiments()
    assert not any(name.startswith("improved-voices-") for name in plain)
    runs = experiments([Path("runs/voices")])
    added = {name: args for name, args in runs.items() if name not in plain}
    assert set(added) == {f"improved-voices-speaker-{s}" for s in SPEAKERS} | {"improved-voices-recording"}
    for name, args in added.items():
        twin = plain[name.replace("improved-voices-", "improved-")]
        assert args == [*twin, "--extra-voices", "runs/voices"]  # the same run, voices added


def test_the_table_gets_a_column_for_the_voices_runs_only_when_there_are_some():
    results = {"improved-recording": _result(0.95, 0.97)}
    results |= {f"improved-speaker-{s}": _result(0.80 + 0.02 * i, 0.6) for i, s in enumerate(SPEAKERS)}
    without = summary_table(results)
    assert "synthetic voices" not in without
    assert "| leave-one-speaker-out, 50/50: mean balanced accuracy | n/a | 0.8400 | n/a |" in without
    results |= {f"improved-voices-speaker-{s}": _result(0.90, 0.8) for s in SPEAKERS[:2]}
    table = summary_table(results)
    assert "improved + synthetic voices, same budget" in table
    assert "| george | n/a | 0.8000 (0.600) | 0.9000 (0.800) |" in table
    assert "| theo | n/a | 0.8600 (0.600) | n/a |" in table  # that fold not run with voices yet
    # a mean over folds not all run is not shown
    assert "| leave-one-speaker-out, 50/50: mean balanced accuracy | n/a | 0.8400 | n/a | n/a |" in table


def test_each_voices_set_gets_runs_and_a_column_of_its_own():
    runs = experiments([Path("runs/voices"), Path("/data/voices-90")])
    assert runs["improved-voices-90-speaker-theo"][-2:] == ["--extra-voices", "/data/voices-90"]
    results = {f"improved-{tag}-speaker-{s}": _result(b, 0.7) for tag, b in (("voices", 0.9), ("voices-90", 0.92))
               for s in SPEAKERS}
    table = summary_table(results)
    assert "| leave-one-speaker-out, 50/50: mean balanced accuracy | n/a | n/a | n/a | 0.9000 | 0.9200 |" in table
    assert "improved + synthetic voices-90: balanced accuracy (spoken digit acc.)" in table


def test_a_voices_directory_must_be_named_for_its_runs():
    import pytest

    with pytest.raises(ValueError, match="must start with 'voices'"):
        experiments([Path("runs/synthetic")])


def test_ingredients_add_runs_alone_together_and_with_each_voices_set():
    plain = experiments()
    runs = experiments([Path("runs/voices")], ["conv-bilstm", "conv-bilstm+affine-images"])
    assert runs["improved-conv-bilstm-speaker-theo"] == [*plain["improved-speaker-theo"], "--audio-branch", "conv-bilstm"]
    assert runs["improved-conv-bilstm+affine-images-recording"] == [
        *plain["improved-recording"], "--audio-branch", "conv-bilstm", "--image-augment", "affine"]
    assert runs["improved-voices-conv-bilstm-speaker-nicolas"] == [
        *plain["improved-speaker-nicolas"], "--extra-voices", "runs/voices", "--audio-branch", "conv-bilstm"]
    assert variant_label("voices-conv-bilstm+affine-images") == "synthetic voices + conv-bilstm + affine-images"
    assert variant_label("voices-90") == "synthetic voices-90"


def test_an_ingredient_about_the_voices_runs_with_each_voices_set_only():
    runs = experiments([Path("runs/voices")], ["share-25", "conv-bilstm+share-25"])
    assert not any(name.startswith(("improved-share-25-", "improved-conv-bilstm+share-25-")) for name in runs)
    assert runs["improved-voices-share-25-speaker-theo"] == [
        *experiments()["improved-speaker-theo"], "--extra-voices", "runs/voices", "--extra-voices-share", "0.25"]
    assert "improved-voices-conv-bilstm+share-25-recording" in runs
    assert variant_label("voices-share-25") == "synthetic voices + share-25"


def test_an_unknown_ingredient_is_refused():
    import pytest

    with pytest.raises(ValueError, match="unknown ingredient 'bigger'"):
        experiments([], ["conv-bilstm+bigger"])


def test_the_ablation_table_shows_each_variant_against_the_recipe():
    results = {f"improved-speaker-{s}": _result(0.80, 0.6) for s in SPEAKERS}
    results |= {f"improved-conv-bilstm-speaker-{s}": _result(0.85, 0.7) for s in SPEAKERS}
    results |= {f"improved-voices-speaker-{s}": _result(0.9, 0.8) for s in SPEAKERS[:3]}  # not every fold
    results["improved-conv-bilstm-recording"] = _result(0.97)
    table = ablation_table(results)
    assert "| the shipped recipe, unchanged | 0 | 0.8000 | 0.8000 | - | 0.8000 | 0.600 | n/a |" in table
    assert "| + conv-bilstm | 0 | 0.8500 | 0.8500 | +0.0500 | 0.8500 | 0.700 | 0.9700 |" in table
    assert "voices" not in table


def test_more_seeds_repeat_every_improved_comparison_run_with_that_seed():
    plain = experiments([], ["conv-bilstm"])
    runs = experiments([], ["conv-bilstm"], seeds=[0, 1, 2])
    added = {name: args for name, args in runs.items() if name not in plain}
    comparison = [n for n in plain if n.startswith("improved-") and n != "improved-recording-full"]
    assert set(added) == {f"{n}-seed{seed}" for n in comparison for seed in (1, 2)}
    args = runs["improved-conv-bilstm-speaker-theo-seed2"]
    assert args[args.index("--seed") + 1] == "2"
    assert [a for a in args if a != "2"] == [a for a in plain["improved-conv-bilstm-speaker-theo"] if a != "0"]
    assert experiments([], ["conv-bilstm"], seeds=[0]) == plain


def test_the_ablation_table_averages_over_the_seeds_with_every_fold():
    results = {f"improved-speaker-{s}": _result(0.80, 0.6) for s in SPEAKERS}
    results |= {f"improved-speaker-{s}-seed1": _result(0.84, 0.6) for s in SPEAKERS}
    results |= {f"improved-conv-bilstm-speaker-{s}": _result(0.85, 0.7) for s in SPEAKERS}
    results |= {f"improved-conv-bilstm-speaker-{s}-seed1": _result(0.87 if s == "george" else 0.91, 0.8)
                for s in SPEAKERS}
    results |= {f"improved-conv-bilstm-speaker-{s}-seed2": _result(0.99, 0.9) for s in SPEAKERS[:4]}  # a fold missing
    results["improved-conv-bilstm-recording"] = _result(0.96)
    results["improved-conv-bilstm-recording-seed1"] = _result(0.98)
    table = ablation_table(results)
    assert "| the shipped recipe, unchanged | 0, 1 | 0.8200 | 0.8000, 0.8400 | - | 0.8200 | 0.600 | n/a |" in table
    # conv-bilstm over seeds 0 and 1: mean (0.85*5 + 0.87 + 0.91*4) / 10 = 0.876; george's mean is the worst
    assert "| + conv-bilstm | 0, 1 | 0.8760 | 0.8500, 0.9020 | +0.0560 | 0.8600 | 0.750 | 0.9700 |" in table


def test_a_variant_without_a_seed_the_recipe_has_shows_no_change():
    results = {f"improved-speaker-{s}": _result(0.80, 0.6) for s in SPEAKERS}
    results |= {f"improved-conv-bilstm-speaker-{s}-seed1": _result(0.85, 0.7) for s in SPEAKERS}
    assert "| + conv-bilstm | 1 | 0.8500 | 0.8500 | n/a | 0.8500 | 0.700 | n/a |" in ablation_table(results)
