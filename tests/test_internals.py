"""Guards for every transformers internal named in mlm_pretraining/internals.py: each fails loudly, naming the
symbol, if a transformers release moves it or changes what we rely on."""

from __future__ import annotations

import inspect
import itertools
import json

import pytest
import torch
import transformers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    CamembertConfig,
    CamembertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    RobertaConfig,
    RobertaForMaskedLM,
    Trainer,
    TrainingArguments,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
)

from mlm_pretraining import internals

SMALL = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
MASKED_LM = {
    "BertForMaskedLM": lambda: BertForMaskedLM(BertConfig(**SMALL)),
    "RobertaForMaskedLM": lambda: RobertaForMaskedLM(RobertaConfig(**SMALL)),
    "XLMRobertaForMaskedLM": lambda: XLMRobertaForMaskedLM(XLMRobertaConfig(**SMALL)),
    "CamembertForMaskedLM": lambda: CamembertForMaskedLM(CamembertConfig(**SMALL)),
    "DistilBertForMaskedLM": lambda: DistilBertForMaskedLM(DistilBertConfig(vocab_size=64, dim=32, n_layers=1,
                                                                            n_heads=2, hidden_dim=64)),
}


def guard(condition: bool, symbol: str, what: str) -> None:
    assert condition, f"transformers {transformers.__version__}: {symbol} {what}; see mlm_pretraining/internals.py"


def test_sdpa_attention_forward_takes_and_returns_what_fast_dropout_passes():
    parameters = inspect.signature(internals.sdpa_attention_forward).parameters
    guard(list(parameters)[:5] == ["module", "query", "key", "value", "attention_mask"],
          "transformers.integrations.sdpa_attention.sdpa_attention_forward", f"has parameters {list(parameters)}")
    guard({"dropout", "scaling"} <= set(parameters), "sdpa_attention_forward", "lost its dropout/scaling arguments")
    query = torch.randn(2, 3, 5, 4)  # [batch, heads, length, head_dim]
    module = torch.nn.Module()
    module.is_causal = False
    output, _ = internals.sdpa_attention_forward(module, query, query, query, None, dropout=0.0, scaling=0.5)
    expected = torch.softmax(query @ query.transpose(-1, -2) * 0.5, dim=-1) @ query
    guard(output.shape == (2, 5, 3, 4), "sdpa_attention_forward", f"returns shape {tuple(output.shape)}, "
          "not [batch, length, heads, head_dim]")
    torch.testing.assert_close(output, expected.transpose(1, 2))


def test_sdpa_mask_is_a_mask_function_the_mask_interface_accepts():
    from transformers import AttentionMaskInterface

    guard(callable(internals.sdpa_mask), "transformers.masking_utils.sdpa_mask", "is not callable")
    guard(AttentionMaskInterface._global_mapping.get("sdpa") is internals.sdpa_mask,
          "transformers.masking_utils.sdpa_mask", "is no longer the mask builder registered for 'sdpa'")


def test_checkpoint_names_and_files_match_what_the_trainer_writes(tmp_path):
    guard(internals.PREFIX_CHECKPOINT_DIR == "checkpoint", "transformers.trainer_utils.PREFIX_CHECKPOINT_DIR",
          f"is '{internals.PREFIX_CHECKPOINT_DIR}'")
    model = BertForMaskedLM(BertConfig(**SMALL))
    ids = torch.randint(5, 60, (4, 8))
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, save_steps=1, report_to="none", use_cpu=True,
                             per_device_train_batch_size=4)
    Trainer(model=model, args=args, train_dataset=data).train()
    folder = tmp_path / f"{internals.PREFIX_CHECKPOINT_DIR}-1"
    guard(folder.is_dir(), "PREFIX_CHECKPOINT_DIR", f"checkpoint folder is not {folder.name}")
    for name in (internals.TRAINER_STATE_FILE, *internals.OPTIMIZER_FILES):
        guard((folder / name).is_file(), "Trainer._save_checkpoint", f"no longer writes {name}")
    guard(bool(list(folder.glob(internals.RNG_STATE_GLOB))), "Trainer._save_rng_state",
          f"writes no {internals.RNG_STATE_GLOB}")
    json.loads((folder / internals.TRAINER_STATE_FILE).read_text())


def test_attention_implementation_is_a_config_attribute_not_saved(tmp_path):
    model = BertForMaskedLM(BertConfig(**SMALL, attn_implementation="sdpa"))
    guard(getattr(model.config, internals.ATTENTION_IMPLEMENTATION, None) == "sdpa",
          f"PretrainedConfig.{internals.ATTENTION_IMPLEMENTATION}", "does not hold the attention implementation")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    guard(internals.ATTENTION_IMPLEMENTATION not in saved, f"PretrainedConfig.{internals.ATTENTION_IMPLEMENTATION}",
          "is now saved in config.json")


def tiny_trainer(tmp_path, trainer: dict | None = None, **args) -> Trainer:
    """A Trainer (``trainer``: its other arguments) around a tiny BertForMaskedLM without dropout, so two forward
    passes give the same loss; ``args``: TrainingArguments."""
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(**SMALL, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    return Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                                       save_strategy="no", **args), **(trainer or {}))


def masked_batch() -> dict[str, torch.Tensor]:
    """Two sequences, 4 labelled tokens."""
    ids = torch.randint(5, 60, (2, 6))
    labels = torch.full_like(ids, -100)
    labels[0, :3] = ids[0, :3]
    labels[1, 0] = ids[1, 0]
    return {"input_ids": ids, "labels": labels}


def test_private_trainer_methods_take_the_arguments_we_pass():
    """The private methods we call or override, with the arguments we call them with (trainer.py, classification.py)."""
    for method, parameters in ((internals.TRAINER_COUNT_ITEMS, ["self", "batch_samples", "device"]),
                               (internals.TRAINER_LOAD_RNG_STATE, ["self", "checkpoint"]),
                               (internals.TRAINER_EVAL_SAMPLER, ["self", "eval_dataset"]),
                               (internals.TRAINER_COUNT_TOKENS, ["self", "inputs"]),
                               ("get_batch_samples", ["self", "epoch_iterator", "num_batches", "device"])):
        function = getattr(Trainer, method, None)
        guard(callable(function), f"Trainer.{method}", "is gone")
        found = list(inspect.signature(function).parameters)
        guard(found == parameters, f"Trainer.{method}", f"takes {found}, not {parameters}")
    guard("num_items_in_batch" in inspect.signature(Trainer.compute_loss).parameters, "Trainer.compute_loss",
          "no longer takes num_items_in_batch")


def test_trainer_counts_the_labelled_tokens_of_a_step(tmp_path):
    trainer = tiny_trainer(tmp_path)
    guard(getattr(trainer, internals.TRAINER_LOSS_KWARGS, None) is True, f"Trainer.{internals.TRAINER_LOSS_KWARGS}",
          "is not True for BertForMaskedLM (its forward takes **kwargs)")
    labels = masked_batch()["labels"]
    count = getattr(trainer, internals.TRAINER_COUNT_ITEMS)([{"labels": labels}, {"labels": labels}],
                                                            torch.device("cpu"))
    guard(int(count) == 8, f"Trainer.{internals.TRAINER_COUNT_ITEMS}", f"counted {count} labelled tokens, not 8")
    batches, count = Trainer.get_batch_samples(trainer, iter([{"labels": labels}]), 1, torch.device("cpu"))
    guard(len(batches) == 1 and int(count) == 4, "Trainer.get_batch_samples",
          f"no longer returns (batches, labelled tokens): ({len(batches)} batches, {count})")


def test_trainer_counts_the_real_tokens_of_a_micro_batch_into_its_state(tmp_path):
    """MLMTrainer.training_step (under DeepSpeed) counts the step's last micro-batch with this method and takes the
    count back: it adds the micro-batch's real tokens (--max_train_tokens turns non_padding on) to the state and
    nothing else."""
    trainer = tiny_trainer(tmp_path, include_num_input_tokens_seen="non_padding")
    batch = masked_batch()
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["attention_mask"][1, 4:] = 0
    trainer.state.num_input_tokens_seen = 100
    getattr(trainer, internals.TRAINER_COUNT_TOKENS)(batch)
    found = trainer.state.num_input_tokens_seen
    guard(found == 110, f"Trainer.{internals.TRAINER_COUNT_TOKENS}",
          f"took the state's count from 100 to {found} for a micro-batch of 10 real tokens, not to 110")


def test_a_loss_normalised_by_the_step_count_is_not_divided_by_accumulation_but_scaled_by_processes(tmp_path,
                                                                                                  monkeypatch):
    """What MLMTrainer.compute_loss relies on to normalise the loss exactly once: with num_items_in_batch given,
    training_step does not divide by the accumulation steps (it does without), and compute_loss multiplies by the
    process count under average_tokens_across_devices."""
    trainer = tiny_trainer(tmp_path, gradient_accumulation_steps=2)
    model, batch = trainer.model, masked_batch()
    trainer.current_gradient_accumulation_steps = 2  # as the training loop sets it
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=4).item()
    with_count = trainer.training_step(model, dict(batch), num_items_in_batch=4).item()
    without_count = trainer.training_step(model, dict(batch)).item()
    guard(with_count == pytest.approx(loss), "Trainer.training_step",
          f"divides a loss normalised by num_items_in_batch by the accumulation steps ({with_count} vs {loss})")
    guard(without_count == pytest.approx(loss / 2), "Trainer.training_step",
          f"no longer divides a batch-mean loss by the accumulation steps ({without_count} vs {loss / 2})")
    guard(trainer.args.average_tokens_across_devices, "TrainingArguments.average_tokens_across_devices",
          "is no longer on by default")
    monkeypatch.setattr(type(trainer.accelerator), "num_processes", property(lambda self: 3))
    scaled = trainer.compute_loss(model, dict(batch), num_items_in_batch=4).item()
    guard(scaled == pytest.approx(3 * loss), "Trainer.compute_loss",
          f"no longer multiplies the loss by the process count ({scaled} with 3 processes, {loss} with 1)")


def test_a_scheduler_the_trainer_made_is_made_again_by_the_next_train(tmp_path):
    """MLMTrainer.create_scheduler sets the flag as create_scheduler does, so a later train() replaces a budget's
    schedule as it replaces its own: the flag, not anything else, decides."""
    rows = [{"input_ids": row, "labels": row} for row in torch.randint(5, 60, (4, 8))]
    trainer = tiny_trainer(tmp_path, max_steps=1, per_device_train_batch_size=4, disable_tqdm=True,
                           trainer={"train_dataset": rows})
    flag = internals.TRAINER_CREATED_SCHEDULER
    guard(getattr(trainer, flag, None) is False, f"Trainer.{flag}", "is not False before a scheduler exists")
    trainer.create_optimizer()
    trainer.create_scheduler(num_training_steps=1)
    guard(getattr(trainer, flag) is True, f"Trainer.{flag}", "is no longer set by create_scheduler")
    trainer.train()
    first = trainer.lr_scheduler
    trainer.train()
    guard(trainer.lr_scheduler is not first, f"Trainer.{flag}", "no longer makes train() replace the scheduler it made")
    setattr(trainer, flag, False)
    kept = trainer.lr_scheduler
    trainer.train()
    guard(trainer.lr_scheduler is kept, f"Trainer.{flag}", "is not what decides whether train() replaces a scheduler")


def test_evaluation_takes_its_sampler_and_its_collator_from_the_trainer(tmp_path, monkeypatch):
    """ClassificationTrainer overrides the eval sampler; MLMTrainer swaps the collator attribute for evaluation."""
    trainer = tiny_trainer(tmp_path)
    rows = [{"input_ids": torch.tensor([i])} for i in range(3)]
    monkeypatch.setattr(trainer, internals.TRAINER_EVAL_SAMPLER, lambda eval_dataset: [2, 0, 1])
    setattr(trainer, internals.TRAINER_COLLATOR, lambda batch: {"ours": torch.cat([r["input_ids"] for r in batch])})
    batches = list(trainer.get_eval_dataloader(rows))
    guard(len(batches) == 1 and "ours" in batches[0], "Trainer.get_eval_dataloader",
          f"does not collate with self.{internals.TRAINER_COLLATOR}")
    order = batches[0]["ours"].tolist()
    guard(order == [2, 0, 1], f"Trainer.{internals.TRAINER_EVAL_SAMPLER}",
          f"is no longer where evaluation takes its order from (read {order})")


@pytest.mark.parametrize("name", sorted(internals.MLM_HEAD_ATTRIBUTES))
def test_mlm_heads_are_where_sparse_prediction_looks(name):
    torch.manual_seed(0)
    model = MASKED_LM[name]()
    guard(type(model).__name__ == name, name, "changed class name")
    modules = [getattr(model, attribute, None) for attribute in internals.MLM_HEAD_ATTRIBUTES[name]]
    guard(all(isinstance(m, torch.nn.Module) for m in modules), name,
          f"has no head modules {internals.MLM_HEAD_ATTRIBUTES[name]}")
    model.eval()
    ids = torch.randint(5, 60, (2, 7))
    hidden = model.base_model(input_ids=ids)[0]
    for module in modules:
        hidden = module(hidden)
    torch.testing.assert_close(hidden, model(input_ids=ids).logits, msg=f"{name}: head modules in order are not "
                               "the model's own head")


def test_modernbert_forward_reads_its_sparse_prediction_switch():
    model = ModernBertForMaskedLM(ModernBertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=64, pad_token_id=0))
    guard(hasattr(model, internals.MODERNBERT_SPARSE_SWITCH), "ModernBertForMaskedLM",
          f"has no {internals.MODERNBERT_SPARSE_SWITCH} attribute")
    ids = torch.randint(5, 60, (2, 8))
    labels = torch.full_like(ids, -100)
    labels[0, 2] = labels[1, 5] = 7
    setattr(model, internals.MODERNBERT_SPARSE_SWITCH, True)
    logits = model(input_ids=ids, labels=labels).logits
    guard(logits.shape[0] == 2, "ModernBertForMaskedLM.forward",
          f"ignores self.{internals.MODERNBERT_SPARSE_SWITCH} (logits {tuple(logits.shape)})")


class _Counting(torch.utils.data.IterableDataset):
    """An endless stream of distinct tiny examples that records which it has handed out."""

    def __init__(self):
        self.fetched = []

    def __iter__(self):
        for i in itertools.count():
            self.fetched.append(i)
            ids = torch.tensor([5 + i % 50, 6 + i % 40, 7])
            yield {"input_ids": ids, "labels": ids}


def test_a_stream_resumed_with_ignore_data_skip_is_not_skipped_and_its_epoch_restarts(tmp_path, monkeypatch):
    """What resume by position (streaming.py) relies on: with TrainingArguments.ignore_data_skip the Trainer starts
    the stream where it stands (no batch skipped) and restores the RNG states with
    Trainer._load_rng_state (internals.TRAINER_LOAD_RNG_STATE); for a stream, epoch = micro-steps / (max_steps x
    accumulation), counted from 0 again after such a resume; checkpoints are complete when on_save runs."""
    from transformers import TrainerCallback

    saved = []

    class SeesCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            saved.append((tmp_path / f"{internals.PREFIX_CHECKPOINT_DIR}-{state.global_step}" /
                          internals.TRAINER_STATE_FILE).is_file())

    def trainer(**extra):
        torch.manual_seed(0)
        args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, save_steps=2, logging_steps=1,
                                 per_device_train_batch_size=2, gradient_accumulation_steps=2, report_to="none",
                                 use_cpu=True, **extra)
        return Trainer(model=BertForMaskedLM(BertConfig(**SMALL)), args=args, train_dataset=_Counting(),
                       callbacks=[SeesCheckpoint()])

    full = trainer()
    full.train()
    guard(saved == [True, True], "Trainer._save_checkpoint", "has not finished the checkpoint when on_save runs")
    epochs = [e["epoch"] for e in full.state.log_history if "loss" in e]
    guard(epochs == [g / 4 for g in (1, 2, 3, 4)], "Trainer._run_epoch",
          f"no longer gives a stream the epoch steps / max_steps ({epochs})")
    loads = []
    monkeypatch.setattr(Trainer, internals.TRAINER_LOAD_RNG_STATE,
                        lambda self, checkpoint: loads.append(checkpoint))
    resumed = trainer(ignore_data_skip=True)
    resumed.train(resume_from_checkpoint=str(tmp_path / f"{internals.PREFIX_CHECKPOINT_DIR}-2"))
    guard(resumed.train_dataset.fetched[:4] == [0, 1, 2, 3] and len(resumed.train_dataset.fetched) <= 14,
          "TrainingArguments.ignore_data_skip", "no longer starts a stream where it stands")
    guard(loads and loads[0].endswith("-2"), f"Trainer.{internals.TRAINER_LOAD_RNG_STATE}",
          "is no longer how a resume restores the RNG states")
    epochs = [e["epoch"] for e in resumed.state.log_history if "loss" in e][-2:]
    guard(epochs == [1 / 4, 2 / 4], "Trainer._run_epoch", f"counts a resumed stream's epoch otherwise ({epochs}); "
          "see streaming.StreamPositionCallback.on_step_end")


def test_the_trainer_counts_a_trainings_steps_last(tmp_path):
    """MLMTrainer.end_of_training takes this run's step count from internals.TRAINER_TRAINING_VALUES, its last value:
    --max_steps, or the epochs times the optimizer steps per epoch (10 batches, 3 a step: 4 steps an epoch)."""
    method = getattr(Trainer, internals.TRAINER_TRAINING_VALUES, None)
    guard(callable(method), f"Trainer.{internals.TRAINER_TRAINING_VALUES}", "is gone")
    found = list(inspect.signature(method).parameters)
    guard(found == ["self", "args", "dataloader"], f"Trainer.{internals.TRAINER_TRAINING_VALUES}",
          f"takes {found}, not ['self', 'args', 'dataloader']")
    rows = [{"input_ids": row, "labels": row} for row in torch.randint(5, 60, (20, 8))]
    for length, steps in (({"num_train_epochs": 1.5}, 6), ({"num_train_epochs": 2}, 8), ({"max_steps": 7}, 7)):
        trainer = tiny_trainer(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=3,
                               trainer={"train_dataset": rows}, **length)
        values = getattr(trainer, internals.TRAINER_TRAINING_VALUES)(trainer.args, trainer.get_train_dataloader())
        guard(values[-1] == steps, f"Trainer.{internals.TRAINER_TRAINING_VALUES}",
              f"gives {values} for {length}: max_steps {steps} is no longer its last value")


def test_accelerate_reads_a_stream_on_process_zero_and_dispatches_it(tmp_path):
    """A stream's batches are read by process 0 and sliced for the others (accelerate's default for an
    IterableDataset): blocks used = steps x batch x accumulation x processes, in stream order, and the dataloader
    batches of process 0 are blocks / batch size (streaming.StreamPositionCallback.resume)."""
    from accelerate.data_loader import DataLoaderDispatcher

    stream = tiny_trainer(tmp_path, max_steps=1, trainer={"train_dataset": _Counting()}).get_train_dataloader()
    guard(isinstance(stream, DataLoaderDispatcher), "accelerate.data_loader.prepare_data_loader",
          f"no longer dispatches an IterableDataset's batches by default (the Trainer got a {type(stream).__name__})")
    rows = [{"input_ids": torch.tensor([5, 6])}] * 4
    listed = tiny_trainer(tmp_path, max_steps=1, trainer={"train_dataset": rows}).get_train_dataloader()
    guard(not isinstance(listed, DataLoaderDispatcher), "accelerate.data_loader.prepare_data_loader",
          "now dispatches a map-style dataset's batches too")
    from transformers.trainer_pt_utils import AcceleratorConfig

    guard(AcceleratorConfig().dispatch_batches is None and AcceleratorConfig().split_batches is False,
          "transformers AcceleratorConfig", "changed the dispatch_batches/split_batches defaults")


@pytest.mark.parametrize("name", sorted(internals.MLM_DECODER_ATTRIBUTES))
def test_mlm_heads_end_with_the_decoder_the_fused_loss_takes_over(name):
    from mlm_pretraining.speed.sparse_head import _head, _without_decoder

    torch.manual_seed(0)
    model = MASKED_LM[name]()
    path = internals.MLM_DECODER_ATTRIBUTES[name]
    decoder = model.get_submodule(path)
    guard(isinstance(decoder, torch.nn.Linear), f"{name}.{path}", f"is a {type(decoder).__name__}, not nn.Linear")
    guard(decoder.weight is model.get_input_embeddings().weight, f"{name}.{path}.weight",
          "is not tied to the input embeddings")
    model.eval()
    hidden = model.base_model(input_ids=torch.randint(5, 60, (2, 7)))[0]
    head = _head(model)
    with _without_decoder(model):
        features = head(hidden)
    guard(model.get_submodule(path) is decoder, f"{name}.{path}", "was not put back")
    torch.testing.assert_close(torch.nn.functional.linear(features, decoder.weight, decoder.bias), head(hidden),
                               msg=f"{name}: the head is not decoder(features) with {path} as the decoder")


def test_accelerate_marks_a_model_prepared_for_evaluation_and_returns_it_as_is():
    """ACCELERATE_PREPARED / ACCELERATE_MODELS: prepare_model(evaluation_mode=True) marks the model and lists it, and a
    marked model comes back from prepare_model unwrapped, which is why MLMTrainer.train unmarks it."""
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 2)
    assert accelerator.prepare_model(model, evaluation_mode=True) is model
    assert getattr(model, internals.ACCELERATE_PREPARED), internals.ACCELERATE_PREPARED
    assert model in getattr(accelerator, internals.ACCELERATE_MODELS), internals.ACCELERATE_MODELS
    assert accelerator.prepare_model(model) is model  # marked: returned as it is


def test_tensorboard_callback_opens_its_writer_in_the_folder_attribute(tmp_path, monkeypatch):
    """TENSORBOARD_LOGGING_DIR / default_logdir: the callback leaves its folder unset until on_train_begin, so a log
    before training opens the writer elsewhere (./runs) unless the attribute is set; set, the first log writes there."""
    import os

    from transformers import TrainerControl, TrainerState
    from transformers.integrations import TensorBoardCallback

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    callback = TensorBoardCallback()
    guard(getattr(callback, internals.TENSORBOARD_LOGGING_DIR, "missing") is None, internals.TENSORBOARD_LOGGING_DIR,
          "is not an attribute left None until training begins")
    guard(os.path.dirname(internals.default_logdir()) == "runs", "default_logdir", "is not runs/<date>_<host>")
    setattr(callback, internals.TENSORBOARD_LOGGING_DIR, str(tmp_path / "tb"))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    callback.on_log(args, TrainerState(), TrainerControl(), logs={"eval_loss": 1.0})
    callback.on_train_end(args, TrainerState(), TrainerControl())
    guard(any((tmp_path / "tb").glob("events.out.tfevents.*")), internals.TENSORBOARD_LOGGING_DIR,
          "is not where the writer of a log before training goes")


def test_fsdp_engaged_on_cpu_processes_is_an_fsdp2_run_for_the_trainer_and_accelerate(tmp_path, cpu_process):
    """ACCELERATE_DISTRIBUTED_TYPE / ACCELERATE_FSDP_PLUGIN: on CPU processes accelerate leaves --fsdp off (a plain
    Trainer trains DDP), and with the fields set as MLMTrainer's accelerator is set the run is FSDP2 throughout: the
    Trainer's own checks of an FSDP run apply (save_only_model with sharded checkpoints refused, and not without the
    fields: the negative control), and accelerate prepares and saves a sharded model as FSDP shards."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    from mlm_pretraining.model.sharding import shard_by_layers
    from mlm_pretraining.trainer import MLMTrainer

    fsdp = dict(fsdp=True, fsdp_config={"version": 2, "state_dict_type": "SHARDED_STATE_DICT"})
    plain = tiny_trainer(tmp_path, **fsdp)
    state = plain.accelerator.state
    guard(state.distributed_type == DistributedType.MULTI_CPU and not plain.is_fsdp_enabled,
          "accelerate.state.AcceleratorState", f"now engages FSDP on CPU processes itself ({state.distributed_type}): "
          "trainer.engage_fsdp_on_cpu can go")
    tiny_trainer(tmp_path, save_only_model=True, **fsdp)  # FSDP off: the Trainer's FSDP checks do not apply

    def ours(**args) -> MLMTrainer:
        torch.manual_seed(0)
        return MLMTrainer(model=BertForMaskedLM(BertConfig(**SMALL)), args=TrainingArguments(
            output_dir=str(tmp_path), report_to="none", use_cpu=True, **fsdp, **args))

    trainer = ours()
    guard(trainer.is_fsdp_enabled and trainer.accelerator.is_fsdp2, "Trainer.create_accelerator_and_postprocess",
          "no longer reads whether FSDP is on from the accelerator's state after setting self.accelerator")
    for shared in (PartialState(), trainer.args.distributed_state):
        guard(getattr(shared, internals.ACCELERATE_DISTRIBUTED_TYPE) == DistributedType.FSDP,
              f"PartialState.{internals.ACCELERATE_DISTRIBUTED_TYPE}", "is not shared by every PartialState")
    with pytest.raises(ValueError, match="save_only_model option is not compatible with FSDP"):
        ours(save_only_model=True)

    trainer = ours()
    shard_by_layers(trainer.model, ["BertLayer"])
    trainer.accelerator.prepare(trainer.model, torch.optim.AdamW(trainer.model.parameters()))
    trainer.accelerator.save_state(str(tmp_path / "state"))
    saved = sorted(p.name for p in (tmp_path / "state").iterdir())
    guard({"pytorch_model_fsdp_0", "optimizer_0"} <= set(saved), "accelerate.Accelerator.save_state",
          f"saves {saved}, not FSDP shards, with {internals.ACCELERATE_FSDP_PLUGIN} set")
