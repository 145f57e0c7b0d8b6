"""scripts/experiments/compare_levers.py: TAPT experiments of one task side by side, each lever paired with the reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlm_pretraining.errors import InputError
from scripts.experiments.compare_levers import lever_name, main

SETTINGS = {"task_dir": "../shared/data/citation_intent", "model_name_or_path": "m", "tapt_epochs": 20.0,
            "tapt_learning_rate": 1e-4, "mlm_probability": 0.15, "head_warmup_steps": "auto", "mix_train_file": None,
            "max_train_samples": None}


def write_experiment(folder, settings, base, tapt, minutes=15.0):
    """A results.json as tapt_experiment.py writes it: per-arm, per-seed results (fractions)."""
    folder.mkdir()
    runs = {arm: {str(seed): {"eval_macro_f1": value, "test_macro_f1": value, "test_micro_f1": value}
                  for seed, value in scores.items()} for arm, scores in (("base", base), ("tapt", tapt))}
    report = {"task": "citation_intent", "settings": {**SETTINGS, **settings}, "runs": runs,
              "tapt": {"perplexity": {"task": {"after": 48.25}, "general": {"after": 1000.5}}},
              "minutes": {"tapt": {"tapt": minutes}}}
    (folder / "results.json").write_text(json.dumps(report))
    return str(folder)


def test_levers_are_paired_with_the_reference_over_common_seeds(tmp_path):
    reference = write_experiment(tmp_path / "ref", {}, {1: .40, 2: .50, 3: .60}, {1: .50, 2: .55, 3: .60})
    lever = write_experiment(tmp_path / "ep40", {"tapt_epochs": 40.0, "task_dir": "/abs/citation_intent"},
                             {1: .40, 2: .50}, {1: .60, 2: .70}, minutes=30.25)
    out = tmp_path / "levers.md"
    markdown = main(["--experiments", reference, lever, "--output", str(out)])
    rows = {line.split(" | ")[0]: line.split(" | ") for line in markdown.splitlines() if line.startswith("| ")}
    ref_row, lever_row = rows["| reference: ref"], rows["| --tapt_epochs 40.0"]
    # Reference TAPT − base: +10, +5, 0 -> mean +5, sd 5, half-width 4.302653 * 5 / sqrt(3) = 12.42.
    assert ref_row[1] == "1, 2, 3" and ref_row[2] == "+5.00 [-7.42, +17.42] (n=3)"
    assert ref_row[5] == "–"
    # The lever ran seeds 1-2: TAPT − base +20, +20 (no spread); lever − reference over seeds 1, 2: +10, +15
    # -> mean +12.5, sd 3.5355, half-width 12.706205 * 3.5355 / sqrt(2) = 31.77.
    assert lever_row[2] == "+20.00 [+20.00, +20.00]* (n=2)"
    assert lever_row[5] == "+12.50 [-19.27, +44.27] (n=2)"
    assert lever_row[-3:] == ["48.2", "1,000.5", "30.2 |"]
    assert out.read_text() == markdown
    # A copy of the reference's results.json (as kept in docs/) stands for its folder.
    copy = tmp_path / "tapt_ref.json"
    copy.write_text((tmp_path / "ref" / "results.json").read_text())
    from_copy = main(["--experiments", str(copy), lever])
    assert from_copy.replace("reference: tapt_ref", "reference: ref") == markdown


def test_lever_name_lists_the_changed_tapt_settings():
    assert lever_name({**SETTINGS, "mix_train_file": ["wiki.txt"], "mix_share": 0.2}, SETTINGS) == (
        "--mix_train_file wiki.txt --mix_share 0.2")
    assert lever_name(SETTINGS, SETTINGS) == "(same TAPT settings)"
    # Runs record files as absolute paths; a row shows them relative to where the table is made.
    beside = Path.cwd().parent / "shared" / "wiki.txt"
    assert lever_name({**SETTINGS, "mix_train_file": [str(beside)]}, SETTINGS) == (
        "--mix_train_file ../shared/wiki.txt")
    # A results.json from before --tapt_text existed ran with its default.
    assert lever_name({**SETTINGS, "tapt_text": "fine_tune"}, SETTINGS) == "(same TAPT settings)"
    assert lever_name({**SETTINGS, "tapt_text": "all"}, SETTINGS) == "--tapt_text all"


def test_experiments_that_fine_tune_differently_or_are_missing_are_refused(tmp_path):
    reference = write_experiment(tmp_path / "ref", {}, {1: .4, 2: .5}, {1: .5, 2: .6})
    subset = write_experiment(tmp_path / "subset", {"max_train_samples": 100}, {1: .4, 2: .5}, {1: .5, 2: .6})
    with pytest.raises(InputError, match="--max_train_samples"):
        main(["--experiments", reference, subset])
    # bf16 changes every fine-tune's rounding: a bf16 experiment is not paired with one from before the setting.
    bf16 = write_experiment(tmp_path / "bf16", {"bf16": True}, {1: .4, 2: .5}, {1: .5, 2: .6})
    with pytest.raises(InputError, match="--bf16"):
        main(["--experiments", reference, bf16])
    fp32 = write_experiment(tmp_path / "fp32", {"bf16": False}, {1: .4, 2: .5}, {1: .5, 2: .6})
    assert "reference: ref" in main(["--experiments", reference, fp32])
    with pytest.raises(InputError, match="has no results.json"):
        main(["--experiments", reference, str(tmp_path / "missing")])
    (tmp_path / "other.json").write_text(json.dumps({"loss": 1.0}))
    with pytest.raises(InputError, match="other.json is not a tapt_experiment.py results.json"):
        main(["--experiments", reference, str(tmp_path / "other.json")])
