"""mlm_pretraining/checkpoints.py: which checkpoint a run resumes from; half-written checkpoints are detected and
skipped, a missing or incomplete explicit one and one of a different model are refused, and nothing is touched."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import run_mlm
from arguments import ModelArguments
from mlm_pretraining.checkpoints import (
    check_checkpoint_matches,
    checkpoint_problem,
    find_resume_checkpoint,
    last_complete_checkpoint,
)
from mlm_pretraining.errors import InputError


@pytest.fixture(scope="module")
def saved_checkpoint(tiny_model_dir, corpus_text, tmp_path_factory) -> Path:
    """A checkpoint folder as the Trainer writes it (two steps of run_mlm.py)."""
    out = tmp_path_factory.mktemp("checkpointed") / "out"
    run_mlm.main(["--model_name_or_path", str(tiny_model_dir), "--train_file", str(corpus_text), "--output_dir",
                  str(out), "--max_seq_length", "32", "--per_device_train_batch_size", "4", "--max_steps", "2",
                  "--save_steps", "2", "--do_eval", "false", "--report_to", "none", "--use_cpu", "true",
                  "--preprocessing_num_workers", "1", "--disable_tqdm", "true"])
    return out / "checkpoint-2"


@pytest.fixture(scope="module")
def corpus_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("checkpoint-data") / "train.txt"
    path.write_text("the city park was known for its music and the band played the first song of the year .\n" * 40)
    return path


@pytest.mark.parametrize("damage, reason", [
    ("truncate model.safetensors", "model.safetensors: tensor data cut short"),
    ("truncate optimizer.pt", "optimizer.pt is cut short or corrupt"),
    ("truncate trainer_state.json", "trainer_state.json is cut short or corrupt"),
    ("delete trainer_state.json", "no trainer_state.json"),
    ("delete rng_state.pth", "no RNG state"),
    ("delete scheduler.pt", "no scheduler.pt"),
])
def test_incomplete_checkpoint_is_detected(saved_checkpoint, tmp_path, damage, reason):
    folder = tmp_path / "checkpoint-12"
    shutil.copytree(saved_checkpoint, folder)
    assert checkpoint_problem(folder) is None
    action, name = damage.split()
    path = folder / name
    if action == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert reason in checkpoint_problem(folder)


def fake_checkpoint(folder: Path, config: dict) -> Path:
    """A checkpoint folder whose files are all whole (small stand-ins), with the given config.json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": []}))
    save_file({"w": torch.zeros(4, 4)}, str(folder / "model.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"x": torch.ones(2)}, folder / name)
    assert checkpoint_problem(folder) is None
    return folder


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_missing_resume_checkpoint(run, corpus, tmp_path):
    run(["--train_file", str(corpus), "--resume_from_checkpoint", str(tmp_path / "checkpoint-9")],
        r"--resume_from_checkpoint '.*checkpoint-9' is not a folder\. Give a checkpoint folder")


def test_incomplete_resume_checkpoint(run, corpus, tmp_path, tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    folder = fake_checkpoint(tmp_path / "checkpoint-4", config)
    (folder / "rng_state.pth").write_bytes((folder / "rng_state.pth").read_bytes()[:40])
    run(["--train_file", str(corpus), "--resume_from_checkpoint", str(folder)],
        r"'.*checkpoint-4' is not a complete checkpoint \(rng_state\.pth is cut short or corrupt\).*earlier checkpoint")


def test_output_dir_of_a_different_model_is_left_untouched(run, corpus, tmp_path, tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    out = tmp_path / "out"
    fake_checkpoint(out / "checkpoint-2", dict(config, hidden_size=768, vocab_size=30522))
    before = digest(out)
    run(["--train_file", str(corpus)],
        r"--output_dir '.*checkpoint-2' holds a checkpoint of a different model than --model_name_or_path .* "
        r"\(vocab_size 30522 vs 117; hidden_size 768 vs 32, checkpoint vs model\)\. Pick another --output_dir, or "
        r"pass --overwrite_output_dir")
    assert digest(out) == before  # nothing the user saved was changed


def training_args(output_dir: Path, **overrides) -> SimpleNamespace:
    return SimpleNamespace(**{"output_dir": str(output_dir), "resume_from_checkpoint": None, "do_train": True,
                              "overwrite_output_dir": False, **overrides})


def test_the_last_checkpoint_is_the_highest_step_not_the_last_name(tiny_model_dir, tmp_path):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    for step in (9, 10, 2):
        fake_checkpoint(tmp_path / f"checkpoint-{step}", config)
    (tmp_path / "checkpoint-99-old").mkdir()  # not a checkpoint name: ignored
    (tmp_path / "checkpoint-50").write_text("a file")
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert find_resume_checkpoint(training_args(tmp_path)) == str(tmp_path / "checkpoint-10")


def test_incomplete_checkpoints_are_skipped_down_to_a_complete_one(tiny_model_dir, tmp_path, caplog):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    for step in (4, 8, 12):
        fake_checkpoint(tmp_path / f"checkpoint-{step}", config)
    (tmp_path / "checkpoint-12" / "optimizer.pt").write_bytes(b"PK")
    (tmp_path / "checkpoint-8" / "trainer_state.json").unlink()
    with caplog.at_level(logging.WARNING, logger="mlm_pretraining.checkpoints"):
        assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert "checkpoint-12: incomplete checkpoint (optimizer.pt is cut short or corrupt)" in caplog.text
    assert "checkpoint-8: incomplete checkpoint (no trainer_state.json)" in caplog.text
    (tmp_path / "checkpoint-4" / "rng_state.pth").unlink()
    assert last_complete_checkpoint(str(tmp_path)) is None


def test_overwrite_output_dir_or_no_training_starts_afresh(tiny_model_dir, tmp_path, caplog):
    fake_checkpoint(tmp_path / "checkpoint-3", json.loads((tiny_model_dir / "config.json").read_text()))
    with caplog.at_level(logging.WARNING, logger="mlm_pretraining.checkpoints"):
        assert find_resume_checkpoint(training_args(tmp_path, overwrite_output_dir=True)) is None
    assert "--overwrite_output_dir: ignoring the checkpoints" in caplog.text
    assert find_resume_checkpoint(training_args(tmp_path, do_train=False)) is None
    assert find_resume_checkpoint(training_args(tmp_path / "not-yet")) is None
    explicit = str(tmp_path / "checkpoint-3")
    assert find_resume_checkpoint(training_args(tmp_path / "elsewhere", resume_from_checkpoint=explicit)) == explicit


def test_sharded_checkpoint_is_left_to_its_own_loader(tmp_path):
    folder = tmp_path / "checkpoint-5"
    (folder / "global_step5").mkdir(parents=True)  # DeepSpeed: weights and optimizer states in here
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
    torch.save({"x": torch.ones(2)}, folder / "rng_state_0.pth")
    assert checkpoint_problem(folder) is None
    (folder / "rng_state_0.pth").unlink()
    assert checkpoint_problem(folder) == "no RNG state (rng_state*.pth)"


def test_an_explicit_checkpoint_of_another_model_is_refused(tiny_model_dir, tmp_path):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    folder = fake_checkpoint(tmp_path / "checkpoint-2", dict(config, num_hidden_layers=12))
    args = ModelArguments(model_name_or_path=str(tiny_model_dir))
    with pytest.raises(InputError, match=r"--resume_from_checkpoint '.*checkpoint-2' holds a checkpoint of a "
                                         r"different model .*\(num_hidden_layers 12 vs 2, checkpoint vs model\)\. "
                                         r"Give a checkpoint of this model\."):
        check_checkpoint_matches(str(folder), args, explicit=True)
    same = fake_checkpoint(tmp_path / "checkpoint-4", config)
    assert check_checkpoint_matches(str(same), args, explicit=True) is None  # the same model: resumes
