"""Budgets (--max_train_tokens, --max_train_time) and the mask-rate schedule (--mlm_probability_end): durations,
bad values, the progress-driven learning-rate schedule, end-to-end stops at the right step with the schedule's end
value, a time budget on a fake clock that survives a resume, falling mask rates, and exact resume with them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import kill_when_saved
from helpers import snapshot
from safetensors.torch import load_file

import run_mlm
from arguments import parse_args
from collators import MLMCollator
from mlm_pretraining import budget
from mlm_pretraining.budget import ProgressScheduler, mask_rate, progress_scheduler
from mlm_pretraining.errors import InputError
from mlm_pretraining.flag_values import parse_duration
from mlm_pretraining.trainer import MLMTrainer, build_trainer

REPO = Path(__file__).resolve().parents[1]
LR = 1e-3


def flags(model: Path, corpus: Path, out: Path, **extra) -> list[str]:
    args = {"model_name_or_path": model, "train_file": corpus, "output_dir": out, "max_seq_length": 32,
            "per_device_train_batch_size": 4, "learning_rate": LR, "warmup_steps": 0, "logging_steps": 1,
            "save_strategy": "no", "do_eval": False, "report_to": "none", "use_cpu": True, "preprocessing_num_workers": 1,
            "disable_tqdm": True, **extra}
    return [item for key, value in args.items() for item in (f"--{key}", str(value))]


def train_logs(out: Path) -> list[dict]:
    return [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]


# ---- durations and bad values ----

@pytest.mark.parametrize("text, seconds", [
    ("90m", 5400), ("8h", 28800), ("1h30m", 5400), ("3600", 3600), ("45s", 45), ("1.5h", 5400), ("2d", 172800),
    ("1h 30m", 5400), ("0.5", 0.5), (60, 60), ("1d2h3m4s", 93784),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5x", "", "h", "1h30", "-5", "0", "0m", "m30", "nan", "1.2.3s"])
def test_parse_duration_refuses_bad_values(text):
    with pytest.raises(InputError, match="--max_train_time"):
        parse_duration(text)


@pytest.mark.parametrize("extra, message", [
    (["--max_train_tokens", "0"], "--max_train_tokens must be a positive number of tokens, got 0"),
    (["--max_train_time", "5x"], "--max_train_time '5x' is not a duration"),
    (["--max_train_time", "0"], "--max_train_time must be a positive duration"),
    (["--mlm_probability_end", "0"], "--mlm_probability_end must be between 0 and 1 (exclusive), got 0.0"),
    (["--mlm_probability_end", "1.2"], "--mlm_probability_end must be between 0 and 1 (exclusive), got 1.2"),
    (["--max_train_tokens", "1000", "--max_steps", "10"],
     "--max_train_tokens sets the number of steps itself; drop --max_steps (10)"),
    (["--max_train_tokens", "1000", "--max_train_time", "1h"], "Give one budget"),
    (["--max_train_time", "1h", "--warmup_steps", "100"], "--max_train_time needs --warmup_steps as a ratio"),
    (["--max_train_time", "1h", "--lr_scheduler_type", "reduce_lr_on_plateau"],
     "--lr_scheduler_type reduce_lr_on_plateau follows the loss, not the budget"),
    (["--max_train_tokens", "1000", "--streaming", "--line_by_line", "--train_file", "x.txt"],
     "--max_train_tokens with --streaming --line_by_line"),
])
def test_bad_budget_flags_name_the_flag(tmp_path, extra, message):
    with pytest.raises(InputError) as err:
        parse_args(["--output_dir", str(tmp_path), *extra])
    assert message in str(err.value)


def test_budgets_parse_and_turn_on_token_counting(tmp_path):
    args = parse_args(["--output_dir", str(tmp_path), "--max_train_tokens", "5120"])[-1]
    assert args.max_train_tokens == 5120 and args.include_num_input_tokens_seen == "non_padding"
    streaming = parse_args(["--output_dir", str(tmp_path), "--streaming", "--train_file", "x.txt",
                            "--max_train_time", "90m"])
    assert streaming[-1].max_train_time == "90m" and streaming[-1].max_steps == -1  # no --max_steps needed


# ---- schedules ----

def test_mask_rate_is_linear_and_clipped():
    assert [mask_rate(0.3, 0.15, p) for p in (0, 0.5, 1, 1.5)] == pytest.approx([0.3, 0.225, 0.15, 0.15])
    assert mask_rate(0.15, None, 0.7) == 0.15


def _optimizer():
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=LR)


def test_progress_scheduler_follows_progress(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), lr_scheduler_type="linear", report_to="none")
    optimizer = _optimizer()
    scheduler = progress_scheduler(args, optimizer, warmup_fraction=0.1)
    values = []
    for progress in (0.05, 0.1, 0.55, 1.0):
        scheduler.set_progress(progress)
        optimizer.step()
        scheduler.step()  # the Trainer steps it after every optimizer step: the value must stay
        values.append(optimizer.param_groups[0]["lr"])
        assert scheduler.get_last_lr()[0] == values[-1]
    assert values == pytest.approx([0.5 * LR, LR, 0.5 * LR, 0.0])
    torch.save(scheduler.state_dict(), tmp_path / "scheduler.pt")  # the Trainer's checkpoint: no closures
    restored = ProgressScheduler(_optimizer(), scheduler.lr_lambdas)
    restored.load_state_dict(torch.load(tmp_path / "scheduler.pt", weights_only=True))
    assert restored.progress == 1.0


def test_cosine_with_min_lr_ends_at_its_floor(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), lr_scheduler_type="cosine_with_min_lr",
                             lr_scheduler_kwargs={"min_lr_rate": 0.1}, report_to="none")
    optimizer = _optimizer()
    scheduler = progress_scheduler(args, optimizer, warmup_fraction=0.0)
    scheduler.set_progress(0.5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.55 * LR)
    scheduler.set_progress(1.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * LR)


def test_transformers_internals_we_use_exist():
    """MLMTrainer.get_batch_samples masks after the Trainer fetched a step's batches and recounts the masked tokens
    with Trainer._get_num_items_in_batch; budgets are stored through ExportableState / stateful_callbacks."""
    import inspect

    from transformers import Trainer, TrainerState
    from transformers.trainer_callback import ExportableState  # noqa: F401

    assert list(inspect.signature(Trainer.get_batch_samples).parameters) == ["self", "epoch_iterator",
                                                                              "num_batches", "device"]
    assert hasattr(Trainer, "_get_num_items_in_batch"), "transformers moved Trainer._get_num_items_in_batch"
    assert "stateful_callbacks" in inspect.signature(TrainerState).parameters


# ---- --max_train_tokens ----

def test_max_train_tokens_packed_stops_at_the_exact_step(tiny_model_dir, corpus, tmp_path):
    """633 tokens in blocks of 32 x batch 4 = 128 tokens a step: ceil(633 / 128) = 5 steps; linear decay puts the
    last step at the schedule's end value, 0."""
    out = tmp_path / "out"
    run_mlm.main(flags(tiny_model_dir, corpus, out, max_train_tokens=633))
    logs = train_logs(out)
    assert [e["step"] for e in logs] == [1, 2, 3, 4, 5]
    assert [e["learning_rate"] for e in logs] == pytest.approx([LR * (1 - s / 5) for s in range(1, 6)])
    assert logs[-1]["learning_rate"] == 0.0
    assert [e["num_input_tokens_seen"] for e in logs] == [128 * s for s in range(1, 6)]
    assert logs[-1]["budget_progress"] == 1.0 and "train_tokens_per_second" in logs[-1]
    assert "budget_eta_seconds" in logs[0]


def test_max_train_tokens_with_accumulation_counts_the_global_batch(tiny_model_dir, corpus, tmp_path):
    out = tmp_path / "out"
    run_mlm.main(flags(tiny_model_dir, corpus, out, max_train_tokens=700, per_device_train_batch_size=2,
                       gradient_accumulation_steps=2, warmup_steps=2))
    logs = train_logs(out)
    assert len(logs) == 6  # ceil(700 / (32 x 2 x 2)) = 6
    # Warm-up of 2 of the 6 steps = a third of the budget; the step ending at progress s/6 gets its value.
    expected = [LR * min(s / 2, (6 - s) / 4) for s in range(1, 7)]
    assert [e["learning_rate"] for e in logs] == pytest.approx(expected)


def test_max_train_tokens_line_by_line_stops_when_the_count_is_reached(tiny_model_dir, corpus, tmp_path):
    """Lines vary in length: training stops at the first step whose real tokens reach the budget, and the learning
    rate follows the tokens seen, ending at 0."""
    out = tmp_path / "out"
    run_mlm.main(flags(tiny_model_dir, corpus, out, max_train_tokens=500, line_by_line=True))
    logs = train_logs(out)
    seen = [e["num_input_tokens_seen"] for e in logs]
    assert seen[-1] >= 500 > seen[-2]
    assert len({b - a for a, b in zip([0, *seen], seen)}) > 1  # real token counts, not padded batch sizes
    assert [e["learning_rate"] for e in logs] == pytest.approx([LR * max(0.0, 1 - n / 500) for n in seen])
    assert logs[-1]["learning_rate"] == 0.0


def test_under_deepspeed_each_step_trains_at_its_rate(tiny_model_dir, corpus, tmp_path, monkeypatch):
    """DeepSpeed steps the optimizer inside the backward of a step's last micro-batch (accelerate's
    DeepSpeedEngineWrapper.backward), before on_pre_optimizer_step: MLMTrainer.training_step sets the step's rate
    before that backward, the rate the plain path sets (real tokens of lines of varying length, 2 micro-batches a
    step: the last one's tokens are counted for it, and once in the state). Played without deepspeed: training_step
    runs as under DeepSpeed, the rest of the run takes the plain path. The negative control: without it the rate at
    that backward is the step before's."""
    as_deepspeed, at_backward, original = True, [], MLMTrainer.training_step

    def training_step(self, *args, **kwargs):
        self.is_deepspeed_enabled = as_deepspeed
        try:
            loss = original(self, *args, **kwargs)
        finally:
            self.is_deepspeed_enabled = False
        if self.accelerator.sync_gradients:  # DeepSpeed's engine would have stepped with this rate
            at_backward.append(self.optimizer.param_groups[0]["lr"])
        return loss

    monkeypatch.setattr(MLMTrainer, "training_step", training_step)
    extra = dict(max_train_tokens=500, line_by_line=True, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    run_mlm.main(flags(tiny_model_dir, corpus, tmp_path / "deepspeed", **extra))
    as_deepspeed, deepspeed_rates, at_backward = False, at_backward, []
    run_mlm.main(flags(tiny_model_dir, corpus, tmp_path / "plain", **extra))
    logs, reference = train_logs(tmp_path / "deepspeed"), train_logs(tmp_path / "plain")
    seen = [e["num_input_tokens_seen"] for e in logs]
    assert seen == [e["num_input_tokens_seen"] for e in reference] and len(seen) > 2
    assert [e["learning_rate"] for e in logs] == pytest.approx([LR * max(0.0, 1 - n / 500) for n in seen])
    assert deepspeed_rates == pytest.approx([e["learning_rate"] for e in logs])
    assert [e["loss"] for e in logs] == pytest.approx([e["loss"] for e in reference], abs=1e-6)
    assert at_backward == pytest.approx([LR] + [e["learning_rate"] for e in reference][:-1])  # one step late


@pytest.mark.parametrize("extra", [{}, {"line_by_line": True}], ids=["blocks", "lines"])
def test_rerunning_a_spent_token_budget_changes_nothing(tiny_model_dir, corpus, tmp_path, extra, caplog):
    """The same command run again after the budget was spent (its last checkpoint the step that spent it) trains
    nothing and writes nothing, and says so. Before, the Trainer trained one step more (checkpoint-5 of a 4-step
    budget); then, stopped before that step, it still rewrote the results and the card with train_loss 0.0. Negative
    control: a raised budget trains on, from what was spent (measured against the new budget, not the old one)."""
    out = tmp_path / "out"
    argv = flags(tiny_model_dir, corpus, out, max_train_tokens=500, save_strategy="steps", save_steps=1000, **extra)
    first = run_mlm.main(argv)
    (checkpoint,) = out.glob("checkpoint-*")
    steps = [e["step"] for e in train_logs(out)]
    assert checkpoint.name == f"checkpoint-{steps[-1]}"
    before = snapshot(out)
    with caplog.at_level("INFO", logger="mlm_pretraining.run_mlm"):
        again = run_mlm.main(argv)
    assert snapshot(out) == before
    assert again["train_loss"] == pytest.approx(first["train_loss"]) and again["train_loss"] > 1
    assert f"Nothing to do: {checkpoint} is at the end of training (--max_train_tokens 500 spent" in caplog.text

    with caplog.at_level("INFO", logger="mlm_pretraining.budget"):
        run_mlm.main(flags(tiny_model_dir, corpus, out, max_train_tokens=1000, save_strategy="steps",
                           save_steps=1000, **extra))
    logs = train_logs(out)
    assert [e["step"] for e in logs][:len(steps)] == steps and len(logs) > len(steps)
    assert logs[len(steps) - 1]["budget_progress"] == 1.0  # of the first budget, as it was logged
    assert logs[len(steps)]["budget_progress"] < 1.0 and logs[-1]["budget_progress"] == 1.0
    assert "Resuming a time budget" not in caplog.text


# ---- --max_train_time on a fake clock ----

class FakeClock:
    """Moves only when a training step runs (10 s each), so deadlines are reached without waiting."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(budget, "clock", clock)
    original = MLMTrainer.training_step

    def ten_second_step(self, *args, **kwargs):
        clock.now += 10.0
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MLMTrainer, "training_step", ten_second_step)
    return clock


def test_time_budget_stops_at_the_deadline_with_a_checkpoint(tiny_model_dir, corpus, tmp_path, fake_clock):
    out = tmp_path / "out"
    run_mlm.main(flags(tiny_model_dir, corpus, out, max_train_time="45s", save_strategy="steps", save_steps=1000))
    logs = train_logs(out)
    # Steps end at 10, 20, ..., 50 s: the 5th passes the deadline, trains at the end value and stops.
    assert [e["learning_rate"] for e in logs] == pytest.approx([LR * (1 - t / 45) for t in (10, 20, 30, 40)] + [0])
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-5"]
    state = json.loads((out / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["global_step"] == 5
    assert state["stateful_callbacks"]["BudgetCallback"]["attributes"]["elapsed_before"] == pytest.approx(50.0)


def test_rerunning_a_spent_time_budget_changes_nothing(tiny_model_dir, corpus, tmp_path, fake_clock, caplog):
    """As for tokens: the time budget spent at step 5 (50 s of 45 s) is the end of training; a rerun writes nothing."""
    out = tmp_path / "out"
    argv = flags(tiny_model_dir, corpus, out, max_train_time="45s", save_strategy="steps", save_steps=1000)
    run_mlm.main(argv)
    before = snapshot(out)
    fake_clock.now = 5000.0  # a new process
    with caplog.at_level("INFO", logger="mlm_pretraining.run_mlm"):
        run_mlm.main(argv)
    assert snapshot(out) == before
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-5"]
    assert [e["step"] for e in train_logs(out)] == [1, 2, 3, 4, 5]
    assert f"{out / 'checkpoint-5'} is at the end of training (--max_train_time 0:00:45 spent (0:00:50))" \
        in caplog.text


def test_resumed_run_continues_the_time_budget(tiny_model_dir, corpus, tmp_path, fake_clock):
    """A run cut at step 4 (40 s of a 100 s budget) and rerun has 60 s left: it stops at step 10, not 14."""
    out = tmp_path / "out"
    argv = flags(tiny_model_dir, corpus, out, max_train_time="100", save_strategy="steps", save_steps=2)
    run_mlm.main([*argv, "--max_steps", "4"])
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["stateful_callbacks"][
        "BudgetCallback"]["attributes"]["elapsed_before"] == pytest.approx(40.0)
    fake_clock.now = 5000.0  # a new process: its clock has nothing to do with the first one's
    run_mlm.main(argv)
    logs = train_logs(out)
    assert [e["step"] for e in logs] == list(range(1, 11))
    assert [e["learning_rate"] for e in logs[4:]] == pytest.approx([LR * (1 - t / 100) for t in range(50, 101, 10)])


# ---- mask-rate schedule ----

def test_deferred_masking_equals_masking_in_the_collator(tiny_tokenizer):
    features = [{"input_ids": [2] + [10 + (i * 7 + j) % 90 for j in range(5 + 3 * i)] + [3]} for i in range(6)]
    for rate in (0.15, 0.3):
        direct = MLMCollator(tiny_tokenizer, mlm_probability=rate, seed=3)
        direct.epoch = 2
        deferred = MLMCollator(tiny_tokenizer, mlm_probability=0.5, seed=3, defer_masking=True)
        deferred.epoch = 2
        padded = deferred(features)
        assert "labels" not in padded and padded["mask_seed"].shape == (6,)
        masked, expected = deferred.mask(padded, rate), direct(features)
        assert masked.keys() == expected.keys()
        for key in expected:
            assert torch.equal(masked[key], expected[key]), key


def test_mask_rate_reaches_the_masks(tiny_tokenizer):
    collator = MLMCollator(tiny_tokenizer, seed=0, defer_masking=True)
    collator.epoch = 0
    features = [{"input_ids": [2] + [10 + (i * 13 + j * 7 + i * j) % 90 for j in range(100)] + [3]}
                for i in range(100)]
    for rate in (0.3, 0.15):
        labels = collator.mask(collator(features), rate)["labels"]
        # 10,000 candidates: standard deviation 0.005 at 0.3
        assert (labels != -100).sum().item() / 10_000 == pytest.approx(rate, abs=0.02)


def test_mask_rate_falls_linearly_in_the_logs(tiny_model_dir, corpus, tmp_path):
    """0.3 -> 0.15 over 6 steps: the step-s batches are masked at 0.3 - 0.15 s / 6 and the log says so; the first
    step's masks (rate 0.3) are those of a constant 0.3, the later ones differ."""
    scheduled, constant = tmp_path / "scheduled", tmp_path / "constant"
    run_mlm.main(flags(tiny_model_dir, corpus, scheduled, max_steps=6, mlm_probability=0.3,
                       mlm_probability_end=0.15))
    run_mlm.main(flags(tiny_model_dir, corpus, constant, max_steps=6, mlm_probability=0.3))
    logs = train_logs(scheduled)
    assert [e["mlm_probability"] for e in logs] == pytest.approx([0.3 - 0.15 * s / 6 for s in range(6)])
    assert "mlm_probability" not in train_logs(constant)[0]
    assert logs[0]["loss"] == pytest.approx(train_logs(constant)[0]["loss"], abs=1e-6)
    assert logs[3]["loss"] != pytest.approx(train_logs(constant)[3]["loss"], abs=1e-4)


def test_evaluation_masks_at_the_end_rate(tiny_model_dir, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    _, _, mask_args, speed_args, *_, training_args = parse_args(
        ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path), "--use_cpu", "--report_to",
         "none", "--mlm_probability", "0.3", "--mlm_probability_end", "0.15"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer = build_trainer(AutoModelForMaskedLM.from_pretrained(tiny_model_dir), tokenizer, speed_args, mask_args,
                            training_args)
    assert trainer.eval_data_collator.mlm_probability == 0.15 and not trainer.eval_data_collator.defer_masking
    assert trainer.data_collator.mlm_probability == 0.3 and trainer.data_collator.defer_masking


def test_mask_rate_follows_the_time_budget(tiny_model_dir, corpus, tmp_path, fake_clock):
    out = tmp_path / "out"
    run_mlm.main(flags(tiny_model_dir, corpus, out, max_train_time="40s", mlm_probability=0.3,
                       mlm_probability_end=0.1))
    rates = [e["mlm_probability"] for e in train_logs(out)]
    # A step's rate is the share of the budget spent before it: 0, 10, 20, 30 s of 40.
    assert rates == pytest.approx([0.3, 0.25, 0.2, 0.15])


# ---- exact resume with the schedule ----

SCHEDULE = dict(mlm_probability=0.3, mlm_probability_end=0.15, max_steps=8, save_strategy="steps", save_steps=4)


@pytest.fixture(scope="module")
def scheduled_run(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("scheduled")
    corpus = folder / "train.txt"
    corpus.write_text("".join(f" = season {i % 5} = \n\nthe city park was known for its music and the band played "
                              f"the first song of the year .\nhe released {i % 5} new album , which became known "
                              "in the world during the war .\n" for i in range(60)), encoding="utf-8")
    out = folder / "out"
    run_mlm.main(flags(tiny_model_dir, corpus, out, **SCHEDULE))
    assert len(train_logs(out)) == 8
    return corpus, out


def _losses(out: Path) -> list[float]:
    return [e["loss"] for e in train_logs(out)]


def _max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def test_resume_with_a_mask_schedule_is_exact(scheduled_run, tiny_model_dir, tmp_path):
    corpus, full = scheduled_run
    out = tmp_path / "out"
    shutil.copytree(full / "checkpoint-4", out / "checkpoint-4")
    run_mlm.main(flags(tiny_model_dir, corpus, out, **SCHEDULE))
    assert _losses(out) == pytest.approx(_losses(full), abs=1e-6)
    assert [e["mlm_probability"] for e in train_logs(out)] == [e["mlm_probability"] for e in train_logs(full)]
    assert _max_weight_difference(out, full) <= 1e-6


@pytest.mark.slow
def test_mask_schedule_with_dataloader_workers_is_exact(scheduled_run, tiny_model_dir, tmp_path):
    """The collator runs in a worker process, ahead of the step; the rate is applied in the main process."""
    corpus, full = scheduled_run
    out = tmp_path / "out"
    run_mlm.main(flags(tiny_model_dir, corpus, out, dataloader_num_workers=1, **SCHEDULE))
    assert _losses(out) == pytest.approx(_losses(full), abs=1e-6)


@pytest.mark.slow
def test_torchrun_with_token_budget_and_mask_schedule_matches_one_process(tiny_model_dir, corpus, tmp_path):
    """2 processes x 2 sequences = 1 x 4: same step count from the budget, same rates, same losses."""
    import shutil as sh

    from transformers import AutoConfig

    model = tmp_path / "model"
    sh.copytree(tiny_model_dir, model)
    config = AutoConfig.from_pretrained(model)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    config.save_pretrained(model)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", HF_DATASETS_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=str(REPO))
    extra = dict(max_train_tokens=600, mlm_probability=0.3, mlm_probability_end=0.15)
    single = subprocess.run([sys.executable, "run_mlm.py", *flags(model, corpus, tmp_path / "one", **extra)],
                            cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "run_mlm.py", *flags(model, corpus, tmp_path / "two", per_device_train_batch_size=2,
                                               **extra)],
                         cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = train_logs(tmp_path / "one"), train_logs(tmp_path / "two")
    assert len(one) == len(two) == 5  # ceil(600 / 128)
    assert [e["num_input_tokens_seen"] for e in two] == [e["num_input_tokens_seen"] for e in one]
    assert [e["mlm_probability"] for e in two] == [e["mlm_probability"] for e in one]
    assert [e["loss"] for e in two] == pytest.approx([e["loss"] for e in one], abs=1e-5)
    assert two[-1]["learning_rate"] == 0.0


def test_streaming_token_budget_is_exact(tiny_model_dir, corpus, tmp_path):
    """A packed stream has full blocks too: no --max_steps needed, ceil(600 / 128) = 5 steps."""
    out = tmp_path / "out"
    run_mlm.main(flags(tiny_model_dir, corpus, out, streaming=True, validation_file=corpus, max_train_tokens=600, mlm_probability=0.3,
                       mlm_probability_end=0.2))
    logs = train_logs(out)
    assert [e["num_input_tokens_seen"] for e in logs] == [128 * s for s in range(1, 6)]
    assert logs[-1]["learning_rate"] == 0.0
    assert [e["mlm_probability"] for e in logs] == pytest.approx([0.3 - 0.1 * s / 5 for s in range(5)])


@pytest.mark.slow
def test_kill9_with_a_mask_schedule_then_rerun_is_exact(scheduled_run, tiny_model_dir, tmp_path):
    """SIGKILL once checkpoint-4 is written, rerun the same command: the scheduled run ends as uninterrupted."""

    corpus, full = scheduled_run
    out = tmp_path / "out"
    argv = [sys.executable, str(REPO / "run_mlm.py"), *flags(tiny_model_dir, corpus, out, **SCHEDULE)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    with open(tmp_path / "killed.log", "w") as log:
        kill_when_saved(subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT),
                        out / "checkpoint-4" / "trainer_state.json")
    assert not (out / "model.safetensors").exists()
    rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _losses(out) == pytest.approx(_losses(full), abs=1e-6)
    assert _max_weight_difference(out, full) <= 1e-6
