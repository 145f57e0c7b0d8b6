"""Guards for every transformers internal named in mlm_pretraining/internals.py: each fails loudly, naming the
symbol, if a transformers release moves it or changes what we rely on."""

from __future__ import annotations

import inspect
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


def test_trainer_counts_step_tokens_scales_by_processes_and_collates_eval_with_its_attribute(tmp_path):
    model = BertForMaskedLM(BertConfig(**SMALL))
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True))
    guard(getattr(trainer, internals.TRAINER_LOSS_KWARGS, None) is True, f"Trainer.{internals.TRAINER_LOSS_KWARGS}",
          "is not True for BertForMaskedLM (its forward takes **kwargs)")
    labels = torch.full((2, 6), -100)
    labels[0, :3] = 7
    labels[1, 0] = 9
    count = getattr(trainer, internals.TRAINER_COUNT_ITEMS)([{"labels": labels}, {"labels": labels}],
                                                            torch.device("cpu"))
    guard(int(count) == 8, f"Trainer.{internals.TRAINER_COUNT_ITEMS}", f"counted {count} labelled tokens, not 8")
    guard(f"self.{internals.TRAINER_CREATED_SCHEDULER} = True" in inspect.getsource(Trainer.create_scheduler),
          f"Trainer.{internals.TRAINER_CREATED_SCHEDULER}", "is no longer set by create_scheduler")
    guard(f"if self.{internals.TRAINER_CREATED_SCHEDULER}:" in inspect.getsource(Trainer._prepare_for_training),
          f"Trainer.{internals.TRAINER_CREATED_SCHEDULER}", "no longer makes train() replace the scheduler it made")
    batches, _ = Trainer.get_batch_samples(trainer, iter([{"labels": labels}]), 1, torch.device("cpu"))
    guard(len(batches) == 1, "Trainer.get_batch_samples", "no longer returns (batches, count)")
    guard("num_items_in_batch" in inspect.signature(Trainer.compute_loss).parameters, "Trainer.compute_loss",
          "no longer takes num_items_in_batch")
    source = inspect.getsource(Trainer.training_step)
    guard("loss_is_scaled_for_ga" in source and "num_items_in_batch is not None" in source, "Trainer.training_step",
          "no longer skips the division by accumulation steps for a loss normalised by num_items_in_batch")
    guard("num_processes" in inspect.getsource(Trainer.compute_loss), "Trainer.compute_loss",
          "no longer multiplies the loss by the process count under average_tokens_across_devices")
    guard(f"self.{internals.TRAINER_EVAL_SAMPLER}" in inspect.getsource(Trainer.get_eval_dataloader),
          f"Trainer.{internals.TRAINER_EVAL_SAMPLER}", "is no longer where evaluation takes its sampler from")
    marker = object()
    setattr(trainer, internals.TRAINER_COLLATOR, lambda rows: marker)
    loader = trainer.get_eval_dataloader([{"input_ids": torch.tensor([1, 2])}])
    guard(loader.collate_fn([]) is marker or getattr(loader, "collate_fn", None) is not None and
          _collates_with(loader, marker), "Trainer.get_eval_dataloader", f"does not collate with "
          f"self.{internals.TRAINER_COLLATOR}")


def _collates_with(loader, marker) -> bool:
    try:
        return next(iter(loader)) is marker
    except Exception:
        return False


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


@pytest.mark.parametrize("name", sorted(internals.MLM_DECODER_ATTRIBUTES))
def test_mlm_heads_end_with_the_decoder_the_fused_loss_takes_over(name):
    from mlm_pretraining.sparse_head import _head, _without_decoder

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
