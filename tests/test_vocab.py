"""Domain vocabulary: the token file, mean-of-pieces initialisation, run_mlm.py --add_tokens, suggest_vocab.py."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from arguments import ModelArguments
from mlm_pretraining.errors import InputError
from mlm_pretraining.flag_values import read_token_file
from mlm_pretraining.model.vocab import add_domain_tokens, count_words, suggest_tokens
from run_mlm import main as run_mlm
from scripts.suggest_vocab import main as suggest_vocab


def fresh(tiny_model_dir):
    """A tokenizer and model of their own: adding tokens changes both."""
    return AutoTokenizer.from_pretrained(tiny_model_dir), AutoModelForMaskedLM.from_pretrained(tiny_model_dir)


def test_token_file_is_read_and_checked(tmp_path):
    good = tmp_path / "tokens.txt"
    good.write_text("happily\n\n  believably \nhappily\n", encoding="utf-8")
    assert read_token_file(str(good)) == ["happily", "believably"]
    assert ModelArguments(add_tokens=str(good)).add_tokens == str(good)

    spaced = tmp_path / "spaced.txt"
    spaced.write_text("happily\ntwo words\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 2 holds 'two words', which has a space"):
        ModelArguments(add_tokens=str(spaced))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(InputError, match="holds no token"):
        read_token_file(str(empty))
    with pytest.raises(InputError, match="--add_tokens: no such file"):
        ModelArguments(add_tokens=str(tmp_path / "missing.txt"))


def test_new_rows_start_as_the_mean_of_the_old_pieces(tiny_model_dir):
    tokenizer, model = fresh(tiny_model_dir)
    torch.manual_seed(0)
    with torch.no_grad():  # a non-zero bias, so its mean is a real check
        model.cls.predictions.bias.copy_(torch.randn_like(model.cls.predictions.bias))
    pieces = {word: tokenizer(word, add_special_tokens=False)["input_ids"] for word in ("happily", "believably")}
    assert [len(p) for p in pieces.values()] == [2, 2]  # happ ##ily, believ ##ably
    old_rows = len(tokenizer)
    inputs = model.get_input_embeddings().weight.detach().clone()
    bias = model.cls.predictions.bias.detach().clone()

    added = add_domain_tokens(tokenizer, model, ["Happily", "believably", "the", "happily"])

    assert added == ["happily", "believably"]  # lower-cased like the corpus; 'the' is already a token
    assert len(tokenizer) == old_rows + 2 == model.get_input_embeddings().num_embeddings
    assert model.config.vocab_size == old_rows + 2
    new_inputs = model.get_input_embeddings().weight
    decoder = model.get_output_embeddings()
    for word, piece_ids in pieces.items():
        new_id = tokenizer.convert_tokens_to_ids(word)
        assert new_id >= old_rows
        assert torch.allclose(new_inputs[new_id], inputs[piece_ids].mean(0))
        assert torch.allclose(decoder.weight[new_id], inputs[piece_ids].mean(0))
        assert torch.allclose(decoder.bias[new_id], bias[piece_ids].mean(0))
        assert not torch.allclose(new_inputs[new_id], new_inputs[piece_ids[0]])
    assert torch.equal(new_inputs[:old_rows], inputs)  # old rows untouched
    # The new words are used whole, and only as whole words.
    assert tokenizer.tokenize("She HAPPILY played, believably.") == ["she", "happily", "played", ",", "believably",
                                                                      "."]
    assert "happily" not in tokenizer.tokenize("unhappily")


def test_run_mlm_with_add_tokens_saves_tokenizer_and_model_together(tmp_path, tiny_model_dir):
    corpus = tmp_path / "domain.txt"
    corpus.write_text("he played happily and believably in the band .\n" * 40, encoding="utf-8")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("happily\nbelievably\n", encoding="utf-8")
    out = tmp_path / "out"
    run_mlm(["--model_name_or_path", str(tiny_model_dir), "--train_file", str(corpus), "--add_tokens", str(tokens),
             "--output_dir", str(out), "--max_seq_length", "16", "--max_steps", "1", "--report_to", "none",
             "--save_strategy", "no", "--validation_split_percentage", "10", "--use_cpu", "true"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings == model.config.vocab_size
    ids = tokenizer(corpus.read_text().splitlines()[0], add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("happily") in ids and tokenizer.convert_tokens_to_ids("believably") in ids


def test_suggestions_are_frequent_words_split_into_many_pieces(tmp_path, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = ["Happily, the band played happily."] * 10 + ["believably"] * 3 + ["unable"] * 30
    counts = count_words(texts, tokenizer)
    assert counts["happily"] == 20 and counts[","] == 10
    suggestions = suggest_tokens(counts, tokenizer, min_frequency=5, min_pieces=2, top_n=10)
    assert suggestions == [("unable", 30, ["un", "##able"]), ("happily", 20, ["happ", "##ily"])]
    assert suggest_tokens(counts, tokenizer, min_frequency=5, min_pieces=3) == []
    assert suggest_tokens(counts, tokenizer, min_frequency=1, min_pieces=2, top_n=1) == [suggestions[0]]

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(f'{{"text": "{t}", "label": "x"}}\n' for t in texts), encoding="utf-8")
    output = tmp_path / "tokens.txt"
    suggest_vocab(["--train_file", str(corpus), "--model_name_or_path", str(tiny_model_dir), "--min_frequency", "5",
                   "--min_pieces", "2", "--output_file", str(output)])
    assert read_token_file(str(output)) == ["unable", "happily"]
