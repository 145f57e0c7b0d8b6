"""Beyond DDP on 2 CPU processes: FSDP2 (sharded, killed and resumed), accelerate launch and DeepSpeed ZeRO-2, each
against torchrun's DDP run of the same global batch (2 processes x 4 sequences), and the shipped configs.

Every run trains the same tiny BERT (a pretraining checkpoint: MLM head plus the pooler run_mlm.py keeps; no dropout,
so runs that split work differently still draw nothing differently) for a budget of 3,072 tokens: 12 steps of 8 x 32,
with our budget schedule and a checkpoint every 2 steps. The DDP reference does not evaluate before training (the
plain path); test_ddp_after_an_evaluation_before_training_synchronises_gradients checks the path that does.

Tolerances: DDP averages each gradient with one all-reduce, FSDP2 with a reduce-scatter per shard (and the full
prediction head, run under FSDP against the sparse one, projects every position and takes a plain cross-entropy where
the sparse head fuses the projection with a chunked loss), so the runs sum the same float32 numbers in different
orders: about 1e-7 relative per step, and Adam's normalised updates do not amplify it over 12 steps (measured: 4.8e-7,
one float32 step at 4.7, on losses; 3.7e-9 on weights against DDP, 5.2e-8 against the full head). 1e-5 on losses near
4.7 (2e-6 relative) and on weights (of order 0.02-1) holds that with room, and a wrong normalisation (a loss averaged
per process instead of per step, a shard missing from the save) moves them by 1e-2 or more. Runs with the same code
path (accelerate launch, torchrun) are compared at 1e-7.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import build_tokenizer, write_season_corpus

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-5
SAME_PATH_TOLERANCE = 1e-7
TIMEOUT = 600  # seconds for one multi-process run; on 2 busy cores a run takes 15-40 s


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A tiny BertForPreTraining checkpoint without dropout (MLM head, NSP head, pooler), training and evaluation
    text, and a datasets cache shared by the runs."""
    from transformers import BertConfig, BertForPreTraining

    root = tmp_path_factory.mktemp("scaling")
    tokenizer = build_tokenizer(root / "model")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertForPreTraining(config).save_pretrained(root / "model")
    (root / "valid").mkdir()
    return {"root": root, "model": root / "model", "train": write_season_corpus(root),
            "valid": write_season_corpus(root / "valid", first="the band played a new song in the park .")}


STEPS = 12


def flags(setup: dict[str, Path], out: Path, **extra) -> list[str]:
    args = {"model_name_or_path": setup["model"], "train_file": setup["train"], "validation_file": setup["valid"],
            "do_eval": False, "output_dir": out,
            "max_seq_length": 32, "per_device_train_batch_size": 4, "max_train_tokens": STEPS * 8 * 32,
            "save_steps": 2, "logging_steps": 1, "report_to": "none", "use_cpu": True, "preprocessing_num_workers": 1,
            "disable_tqdm": True, **extra}
    return [item for key, value in args.items() for item in (f"--{key}", str(value))]


# Evaluation before, during (every 4 steps) and after training, on the held-out text every run is given.
EVALUATING = dict(do_eval=True, eval_strategy="steps", eval_steps=4)


def environment(setup: dict[str, Path]) -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                HF_DATASETS_CACHE=str(setup["root"] / "cache"), HF_HOME=str(setup["root"] / "hf_home"))


def launch(command: list, setup: dict[str, Path], expect_success: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], cwd=REPO, env=environment(setup), capture_output=True,
                          text=True, timeout=TIMEOUT)
    if expect_success:
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def without_budget(arguments: list[str]) -> list[str]:
    """``arguments`` without the flags whose value is None (``--max_train_tokens None``)."""
    pairs = list(zip(arguments[::2], arguments[1::2]))
    return [item for flag, value in pairs if value != "None" for item in (flag, value)]


def history(out: Path, key: str) -> list[float]:
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [entry[key] for entry in log if key in entry and "eval_loss" not in entry]


def results(out: Path) -> dict:
    return json.loads((out / "all_results.json").read_text())


def assert_same_weights(a: Path, b: Path, tolerance: float) -> None:
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert set(first) == set(second)
    assert max((first[k] - second[k]).abs().max().item() for k in first) <= tolerance


def kill_with_workers(process: subprocess.Popen) -> None:
    """SIGKILL a launcher and the workers it started (torchrun puts them in sessions of their own), workers first."""
    import psutil

    try:
        workers = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:  # the launcher has ended: the caller's status check says how
        workers = []
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
    process.kill()
    process.wait()
    psutil.wait_procs(workers, timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp(setup) -> Path:
    """The reference: torchrun, 2 processes, DDP (the sparse prediction head, our default)."""
    out = setup["root"] / "ddp"
    launch([*TORCHRUN, "run_mlm.py", *flags(setup, out)], setup)
    assert len(history(out, "loss")) == STEPS
    return out


def fsdp_flags(setup: dict[str, Path], out: Path, **extra) -> list[str]:
    """The shipped examples/fsdp.yaml on CPU processes (bf16 off), with the reference's flags (its budget, not the
    config's --max_steps)."""
    return [REPO / "examples" / "fsdp.yaml", *flags(setup, out, bf16=False, max_steps=-1, **extra)]


@pytest.fixture(scope="module")
def fsdp_full_head(setup) -> Path:
    """FSDP2 with the full prediction head (--sparse_prediction False), otherwise the DDP reference's run."""
    out = setup["root"] / "fsdp-full-head"
    done = launch([*TORCHRUN, "run_mlm.py", *fsdp_flags(setup, out, sparse_prediction=False)], setup)
    assert "Sparse prediction head on" not in done.stdout + done.stderr
    assert len(history(out, "loss")) == STEPS
    return out


@pytest.mark.slow
def test_fsdp_shards_resumes_after_a_kill_and_matches_ddp(setup, ddp, fsdp_full_head):
    """The shipped examples/fsdp.yaml on 2 CPU processes (run_mlm.py engages FSDP2 there itself), with evaluations
    before, during and after training: each process holds half the parameters, checkpoints are FSDP shards, a SIGKILL
    after a checkpoint is resumed by rerunning the command, and the run ends with the losses and weights of the DDP
    run, both with the sparse prediction head (our default, on under FSDP2), and those of FSDP with the full head, in
    a folder AutoModelForMaskedLM loads, with the base's pooler and our card."""
    out = setup["root"] / "fsdp"
    command = [*TORCHRUN, "run_mlm.py", *fsdp_flags(setup, out, **EVALUATING)]
    log_file = setup["root"] / "fsdp-killed.log"
    with open(log_file, "w") as output:
        first = subprocess.Popen([str(c) for c in command], cwd=REPO, env=environment(setup), stdout=output,
                                 stderr=subprocess.STDOUT)
        marker, deadline = out / "checkpoint-2" / "trainer_state.json", time.time() + TIMEOUT
        while first.poll() is None and not marker.exists():
            assert time.time() < deadline, "no checkpoint-2"
            time.sleep(0.01)
        kill_with_workers(first)
    log = log_file.read_text()
    assert first.returncode == -signal.SIGKILL, log[-3000:]
    assert not (out / "model.safetensors").exists(), "the run finished before it was killed"
    assert "this process holds 13,163 of the 26,293 parameters" in log  # half each (2 x 13,163: padded shards)
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and (checkpoint / "optimizer_0").is_dir()
    assert not (checkpoint / "model.safetensors").exists() and not (checkpoint / "optimizer.pt").exists()

    resumed = launch(command, setup)
    step = int(re.search(r"Resuming from \S*checkpoint-(\d+)", resumed.stdout + resumed.stderr)[1])
    assert step < STEPS, f"killed too late: resumed at checkpoint-{step}"
    assert "Sparse prediction head on: the vocabulary projection runs only at masked positions" in log
    assert "Sparse prediction head on" in resumed.stdout + resumed.stderr
    assert history(out, "loss") == pytest.approx(history(ddp, "loss"), abs=LOSS_TOLERANCE)
    assert history(out, "learning_rate") == pytest.approx(history(ddp, "learning_rate"), abs=1e-12)
    assert_same_weights(out, ddp, WEIGHT_TOLERANCE)
    assert history(out, "loss") == pytest.approx(history(fsdp_full_head, "loss"), abs=LOSS_TOLERANCE)
    assert_same_weights(out, fsdp_full_head, WEIGHT_TOLERANCE)
    evaluated = results(out)
    assert evaluated["eval_before_loss"] > evaluated["eval_loss"] > 0
    assert evaluated["eval_perplexity"] == pytest.approx(math.exp(evaluated["eval_loss"]), rel=1e-4)

    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(out)
    saved = load_file(out / "model.safetensors")
    base = load_file(setup["model"] / "model.safetensors")
    assert torch.equal(saved["bert.pooler.dense.weight"], base["bert.pooler.dense.weight"])  # kept from the base
    assert torch.equal(model.cls.predictions.decoder.weight, model.bert.embeddings.word_embeddings.weight)
    assert "## How to use" in (out / "README.md").read_text()


@pytest.mark.slow
def test_the_shipped_fsdp_config_on_cpu_processes_ends_with_a_loadable_model_and_its_card(setup, headless_model_dir):
    """The issue's acceptance check on a tiny BERT saved without a masked-LM head, like the shipped MiniLM: torchrun, 2
    CPU processes, examples/fsdp.yaml with the model and precision overridden and nothing else (--use_cpu --bf16 False
    --max_steps 2). FSDP2 is engaged (each process holds half the parameters; the checkpoints are FSDP shards, one
    file per process, no whole model in them), the new head trains with the encoder from the start (no warm-up under
    FSDP), and the final folder is one whole model that AutoModelForMaskedLM loads, with our card."""
    out = setup["root"] / "fsdp-issue"
    done = launch([*TORCHRUN, "run_mlm.py", REPO / "examples" / "fsdp.yaml", "--model_name_or_path",
                   headless_model_dir, "--train_file", setup["train"], "--validation_file", setup["valid"],
                   "--use_cpu", "--bf16", "False", "--max_steps", "2", "--output_dir", out], setup)
    log = done.stdout + done.stderr
    assert "FSDP2 on 2 processes: 2 units of BertLayer" in log
    assert "this process holds 13,163 of the 26,293 parameters" in log
    assert "not engaged" not in log and "did not engage" not in log
    assert "--fsdp: no head warm-up (--head_warmup_steps 0)" in log
    assert "Newly initialised: cls.predictions.bias, cls.predictions.transform.* (5 tensors); --head_warmup_steps 0" \
        in log
    checkpoint = out / "checkpoint-2"
    shards = sorted(p.name for p in (checkpoint / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"], shards
    assert sorted(p.name for p in (checkpoint / "optimizer_0").glob("*.distcp")) == shards
    assert not (checkpoint / "model.safetensors").exists() and not (checkpoint / "optimizer.pt").exists()

    from transformers import AutoModel, AutoModelForMaskedLM

    model, loading = AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["mismatched_keys"], loading  # the head included, whole
    assert torch.equal(model.cls.predictions.decoder.weight, model.bert.embeddings.word_embeddings.weight)
    base = AutoModel.from_pretrained(headless_model_dir)
    assert not torch.equal(model.bert.encoder.layer[1].output.dense.weight,
                           base.encoder.layer[1].output.dense.weight)  # trained, the last layer's shard too
    assert torch.equal(load_file(out / "model.safetensors")["bert.pooler.dense.weight"], base.pooler.dense.weight)
    card = (out / "README.md").read_text()
    assert "## How to use" in card and f"run_mlm.py {REPO / 'examples' / 'fsdp.yaml'} --model_name_or_path" in card


@pytest.mark.slow
def test_accelerate_launch_equals_torchrun(setup, ddp):
    """accelerate launch with the shipped config (examples/accelerate.yaml, multi-GPU type: on a machine without
    GPUs run_mlm.py's --use_cpu makes it 2 CPU processes with gloo) trains exactly as torchrun does."""
    out = setup["root"] / "accelerate"
    launch([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   REPO / "examples" / "accelerate.yaml", "--num_processes", "2", "--main_process_port", free_port(),
                   "run_mlm.py", *flags(setup, out)], setup)
    assert history(out, "loss") == pytest.approx(history(ddp, "loss"), abs=SAME_PATH_TOLERANCE)
    assert_same_weights(out, ddp, SAME_PATH_TOLERANCE)  # one process of 4 would have trained on other batches


@pytest.mark.slow
def test_ddp_after_an_evaluation_before_training_synchronises_gradients(setup, ddp):
    """run_mlm.py evaluates before training when it has evaluation text; DDP must still average the gradients, as
    in the reference run that does not evaluate first (Trainer.evaluate before train() prepares the model for
    evaluation only and marks it prepared; MLMTrainer.train unmarks it, see internals.ACCELERATE_PREPARED)."""
    out = setup["root"] / "ddp-evaluated-first"
    launch([*TORCHRUN, "run_mlm.py", *flags(setup, out, do_eval=True, eval_strategy="no")], setup)
    assert history(out, "grad_norm")[0] == pytest.approx(history(ddp, "grad_norm")[0], rel=1e-5)


@pytest.mark.slow
def test_deepspeed_zero2_uses_the_trainers_schedule_and_matches_ddp(setup):
    """examples/ds_zero2.json on 2 CPU processes (DeepSpeed's CPU accelerator, gloo): ZeRO-2 engaged (its checkpoint
    folders), the learning rates of --lr_scheduler_type cosine (DeepSpeed's own WarmupDecayLR, in the earlier config,
    would decay linearly), the DDP run's losses and weights, and a normal model folder with the base's pooler. Needs
    deepspeed, which requirements.txt does not install (it compiles a CPU op on first use: about 3 minutes on 2
    cores); run where it is installed."""
    pytest.importorskip("deepspeed")
    schedule = dict(max_train_tokens=None, max_steps=STEPS, lr_scheduler_type="cosine")
    runs = {name: setup["root"] / f"{name}-cosine" for name in ("ddp", "deepspeed")}
    launch([*TORCHRUN, "run_mlm.py", *without_budget(flags(setup, runs["ddp"], **schedule))], setup)
    launch([*TORCHRUN, "run_mlm.py", "--deepspeed", REPO / "examples" / "ds_zero2.json",
            *without_budget(flags(setup, runs["deepspeed"], **schedule))], setup)
    assert list(runs["deepspeed"].glob("checkpoint-*/global_step*"))  # DeepSpeed's own checkpoint format: it ran
    assert history(runs["deepspeed"], "learning_rate") == pytest.approx(history(runs["ddp"], "learning_rate"),
                                                                        abs=1e-12)
    assert history(runs["deepspeed"], "loss") == pytest.approx(history(runs["ddp"], "loss"), abs=LOSS_TOLERANCE)
    assert_same_weights(runs["deepspeed"], runs["ddp"], WEIGHT_TOLERANCE)
    saved = load_file(runs["deepspeed"] / "model.safetensors")
    assert torch.equal(saved["bert.pooler.dense.weight"],
                       load_file(setup["model"] / "model.safetensors")["bert.pooler.dense.weight"])


@pytest.mark.slow
def test_deepspeed_applies_the_budget_schedule_on_time(setup, ddp):
    """The same DeepSpeed run under --max_train_tokens, against the DDP reference: the same learning rates, applied
    on the same steps, so the same losses and weights. DeepSpeed steps the optimizer inside accelerator.backward(),
    before the Trainer's on_pre_optimizer_step where budget.BudgetCallback sets the step's rate on the other paths;
    MLMTrainer.training_step sets it before that backward (without it every rate landed a step late: the logged
    rates equal, the losses 8.4e-3 apart from step 2, the weights 3.2e-4)."""
    pytest.importorskip("deepspeed")
    out = setup["root"] / "deepspeed-budget"
    launch([*TORCHRUN, "run_mlm.py", "--deepspeed", REPO / "examples" / "ds_zero2.json", *flags(setup, out)], setup)
    assert history(out, "learning_rate") == pytest.approx(history(ddp, "learning_rate"), abs=1e-12)
    assert history(out, "num_input_tokens_seen") == history(ddp, "num_input_tokens_seen")  # counted once
    assert history(out, "loss") == pytest.approx(history(ddp, "loss"), abs=LOSS_TOLERANCE)
    assert_same_weights(out, ddp, WEIGHT_TOLERANCE)


@pytest.mark.slow
def test_deepspeed_applies_a_token_budget_over_lines_on_time(setup):
    """Lines of varying length (--line_by_line), 2 micro-batches a step: the budget follows the real tokens seen, and
    the step's rate, set before DeepSpeed's backward of the last micro-batch, counts that micro-batch's tokens (of
    both processes) first. The same rates, token counts, losses and weights as DDP's."""
    pytest.importorskip("deepspeed")
    lines = dict(line_by_line=True, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_train_tokens=1500)
    runs = {name: setup["root"] / f"{name}-lines" for name in ("ddp", "deepspeed")}
    launch([*TORCHRUN, "run_mlm.py", *flags(setup, runs["ddp"], **lines)], setup)
    launch([*TORCHRUN, "run_mlm.py", "--deepspeed", REPO / "examples" / "ds_zero2.json",
            *flags(setup, runs["deepspeed"], **lines)], setup)
    seen = history(runs["ddp"], "num_input_tokens_seen")
    assert len({b - a for a, b in zip(seen, seen[1:])}) > 1  # real token counts, not padded batch sizes
    assert history(runs["deepspeed"], "num_input_tokens_seen") == seen
    assert history(runs["deepspeed"], "learning_rate") == pytest.approx(history(runs["ddp"], "learning_rate"),
                                                                        abs=1e-12)
    assert history(runs["deepspeed"], "loss") == pytest.approx(history(runs["ddp"], "loss"), abs=LOSS_TOLERANCE)
    assert_same_weights(runs["deepspeed"], runs["ddp"], WEIGHT_TOLERANCE)


def test_shipped_deepspeed_config_leaves_optimizer_and_scheduler_to_the_trainer(tiny_model_dir, tmp_path):
    """With examples/ds_zero2.json transformers' DeepSpeed set-up returns the Trainer's own AdamW and no scheduler, so
    the Trainer's create_scheduler (ours: --lr_scheduler_type, and the budget schedules) makes it; a config with
    DeepSpeed's own scheduler block (the earlier one) gets DeepSpeed's scheduler instead: the negative control."""
    import accelerate.utils
    from accelerate.utils.deepspeed import DummyOptim, DummyScheduler, HfDeepSpeedConfig
    from transformers.integrations.deepspeed import deepspeed_optim_sched

    import run_mlm
    from mlm_pretraining import trainer as trainer_module

    config = json.loads((REPO / "examples" / "ds_zero2.json").read_text())
    assert "scheduler" not in config and "optimizer" not in config

    class Built(Exception):
        """The Trainer run_mlm.py built, at the start of training."""

    def stop(self, *args, **kwargs):
        raise Built(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer_module.MLMTrainer, "train", stop)
        with pytest.raises(Built) as built:
            run_mlm.main(["--model_name_or_path", str(tiny_model_dir), "--train_file",
                          str(write_season_corpus(tmp_path)), "--output_dir", str(tmp_path / "out"),
                          "--max_train_tokens", "4096", "--report_to", "none", "--do_eval", "False",
                          "--preprocessing_num_workers", "1"])
        # accelerate exports its DeepSpeed placeholders only where deepspeed is installed (not here); the set-up
        # imports them from there.
        patch.setattr(accelerate.utils, "DummyOptim", DummyOptim, raising=False)
        patch.setattr(accelerate.utils, "DummyScheduler", DummyScheduler, raising=False)
        trainer = built.value.args[0]
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        optimizer, scheduler = deepspeed_optim_sched(trainer, HfDeepSpeedConfig(config), trainer.args, 16, params)
        assert isinstance(optimizer, torch.optim.AdamW) and scheduler is None
        assert type(trainer.create_scheduler(16, optimizer)).__name__ == "ProgressScheduler"  # the budget's
        trainer.lr_scheduler = None
        with_its_own = dict(config, scheduler={"type": "WarmupDecayLR", "params": {}})
        _, scheduler = deepspeed_optim_sched(trainer, HfDeepSpeedConfig(with_its_own), trainer.args, 16, params)
        assert isinstance(scheduler, DummyScheduler)


def test_shipped_fsdp_config_is_fsdp2_sharded_by_the_model():
    """examples/fsdp.yaml: FSDP2, no layer class named (any BERT-family model shards by its own layers), sharded
    checkpoints, and a model large enough for sharding to pay, not the 22 M MiniLM."""
    config = yaml.safe_load((REPO / "examples" / "fsdp.yaml").read_text())
    assert config["fsdp"] is True and config["fsdp_config"]["version"] == 2
    assert "transformer_layer_cls_to_wrap" not in config["fsdp_config"]
    assert config["fsdp_config"]["state_dict_type"] == "SHARDED_STATE_DICT"
    assert "minilm" not in config["model_name_or_path"].lower()


def test_fsdp_in_one_process_is_refused_before_anything_loads(run):
    run(["--fsdp", "--bf16", "False", "--use_cpu"], "--fsdp shards the model across processes, one per GPU: launch "
        "them with torchrun or accelerate launch")


def test_fsdp1_on_cpu_processes_is_refused_before_anything_loads(run):
    run(["--fsdp", "--fsdp_config", '{"version": 1}', "--use_cpu"], r"--fsdp_config version 1 on CPU processes: FSDP "
        r"runs on CPUs as FSDP2 only \(version 2, the default\)")


def test_fsdp_on_cpu_processes_trains_in_fp32_and_a_new_head_with_the_encoder(run, headless_model_dir, tmp_path,
                                                                               cpu_process):
    """--fsdp on CPU processes (examples/fsdp.yaml's bf16 included) trains in fp32, and under --fsdp the default is no
    head warm-up (FSDP shards the weights it would freeze), each said when the flags are read; a warm-up asked for with
    a base that lacks the head is refused, in a process where FSDP is engaged."""
    from arguments import parse_args

    *_, args = parse_args([str(REPO / "examples" / "fsdp.yaml"), "--output_dir", str(tmp_path / "out"), "--use_cpu",
                           "--report_to", "none"])
    assert args.fsdp and not args.bf16 and args.mixed_precision == "no"
    assert args.head_warmup_steps == "0"
    assert "--fsdp on CPU processes: fp32 (--bf16 False); FSDP's bf16 mixed precision (bf16 weights and gradient " \
        "reductions) is for GPUs." in args.notices
    assert any(notice.startswith("--fsdp: no head warm-up (--head_warmup_steps 0)") for notice in args.notices)
    run(["--fsdp", "--use_cpu", "--head_warmup_steps", "5", "--train_file", str(write_season_corpus(tmp_path))],
        r"--fsdp with weights the checkpoint lacks \(cls.predictions.bias, cls.predictions.transform.\* "
        r"\(5 tensors\)\): the head warm-up cannot freeze weights FSDP has sharded", before_model=False,
        model=headless_model_dir)


def test_fsdp_that_cannot_engage_on_cpu_processes_is_refused_naming_why(tmp_path):
    """FSDP is engaged on CPU processes for FSDP2 over gloo only (the tested path): FSDP1 and another backend are left
    as accelerate leaves them, unused, and the run stops naming why rather than train as plain DDP."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType
    from transformers import TrainingArguments

    from mlm_pretraining.errors import InputError
    from mlm_pretraining.trainer import check_engaged, engage_fsdp_on_cpu

    def args(version: int):
        return TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", fsdp=True,
                                 fsdp_config={"version": version})

    for version, backend in ((1, "gloo"), (2, "mpi")):
        state = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, backend=backend)
        assert not engage_fsdp_on_cpu(state, args(version))
        assert state.distributed_type == DistributedType.MULTI_CPU and not hasattr(state, "fsdp_plugin")
        trainer = SimpleNamespace(args=SimpleNamespace(fsdp=True, deepspeed=None, world_size=2,
                                                       device=torch.device("cpu")),
                                  is_fsdp_enabled=False, accelerator=SimpleNamespace(state=state))
        with pytest.raises(InputError, match=rf"--fsdp: FSDP was not engaged on these 2 processes \(distributed type "
                           rf"MULTI_CPU, backend {backend}, device cpu\): .* on CPU processes as FSDP2 \(fsdp_config "
                           r"version 2\) with gloo only"):
            check_engaged(trainer)


@pytest.mark.parametrize("setting, pattern", [
    ({"activation_checkpointing": True}, "activation_checkpointing is not applied .* use --gradient_checkpointing"),
    ({"cpu_ram_efficient_loading": True}, "cpu_ram_efficient_loading is not supported"),
    ({"auto_wrap_policy": "SIZE_BASED_WRAP"}, "auto_wrap_policy SIZE_BASED_WRAP: the model is sharded by its layers"),
])
def test_fsdp_settings_we_do_not_apply_are_refused(run, setting, pattern):
    run(["--fsdp", "--fsdp_config", json.dumps(setting), "--use_cpu"], pattern)


def test_the_sparse_head_stays_on_under_fsdp2(tmp_path, cpu_process):
    """FSDP2 (our sharding) keeps the sparse prediction head, by default and asked for, with no notice."""
    from arguments import SpeedArguments, parse_args

    for given in ([], ["--sparse_prediction", "True"]):
        parsed = parse_args([str(REPO / "examples" / "fsdp.yaml"), "--output_dir", str(tmp_path / "out"), "--use_cpu",
                             "--report_to", "none", *given])
        assert parsed[-1].fsdp and next(a for a in parsed if isinstance(a, SpeedArguments)).sparse_prediction
        assert not any("prediction head" in notice for notice in parsed[-1].notices), parsed[-1].notices


def test_the_sparse_head_asked_for_under_fsdp1_is_refused(run):
    """FSDP1 (accelerate's wrapping, on GPUs only) is untested with the sparse head: asked for, it is refused (by
    default it is turned off, with a notice)."""
    run(["--fsdp", "--fsdp_config", '{"version": 1}', "--sparse_prediction", "True"], r"--sparse_prediction with "
        r"--fsdp_config version 1: the sparse head is tested under FSDP2 \(version 2, the default\) only")
