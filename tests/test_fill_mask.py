"""scripts/fill_mask.py: top-k predictions per mask, from several checkpoints side by side."""

from __future__ import annotations

import pytest
import torch
from conftest import build_model
from transformers import AutoModelForMaskedLM, AutoTokenizer

from mlm_pretraining.errors import InputError
from scripts.fill_mask import main, predict


def test_predictions_are_the_models_top_k_probabilities(tiny_model_dir, tiny_tokenizer):
    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).eval()
    result = predict(model, tiny_tokenizer, "the [MASK] played a [MASK] song .", top_k=3)
    assert len(result) == 2 and all(len(row) == 3 for row in result)
    encoded = tiny_tokenizer("the [MASK] played a [MASK] song .", return_tensors="pt")
    with torch.no_grad():
        probabilities = model(**encoded).logits[0, 2].softmax(-1)  # [CLS] the [MASK]
    best = probabilities.topk(3)
    assert [token for token, _ in result[0]] == tiny_tokenizer.convert_ids_to_tokens(best.indices.tolist())
    assert [p for _, p in result[0]] == pytest.approx(best.values.tolist())


def test_models_side_by_side_in_one_table(tmp_path, tiny_model_dir, capsys):
    other = tmp_path / "other"
    build_model(other, AutoTokenizer.from_pretrained(tiny_model_dir), seed=1)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(other)
    output = main(["--model_name_or_path", str(tiny_model_dir), str(other), "--text", "the band [MASK] .",
                   "--top_k", "4"])
    lines = output.splitlines()
    assert lines[0] == "the band [MASK] ."
    assert lines[2] == f"| rank | {tiny_model_dir} | {other} |"
    assert [line.split(" | ")[0] for line in lines[4:]] == ["| 1", "| 2", "| 3", "| 4"]
    assert lines[4].split(" | ")[1] != lines[4].split(" | ")[2]  # different weights, different guesses
    assert output in capsys.readouterr().out


def test_a_text_without_mask_is_an_error(tiny_model_dir):
    with pytest.raises(InputError, match="holds no \\[MASK\\]"):
        main(["--model_name_or_path", str(tiny_model_dir), "--text", "no mask here"])
    with pytest.raises(InputError, match="--text is required"):
        main(["--model_name_or_path", str(tiny_model_dir)])
