"""The corpus report: numbers checked against a hand-made corpus, words against the pre-tokenizer's own count,
and scripts/corpus_report.py end to end."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, DatasetDict
from transformers import PreTrainedTokenizerFast

from arguments import DataArguments
from mlm_pretraining.data.sources import prepare_datasets, tokenize_corpus
from mlm_pretraining.data.text import read_corpus
from mlm_pretraining.errors import InputError
from mlm_pretraining.model.vocab import count_words
from mlm_pretraining.reporting.corpus_report import corpus_report, format_report

# With the conftest vocabulary: 'bandsly' is band ##s ##ly and 'songsly' song ##s ##ly (3 pieces each), 'zzz' is
# [UNK]. Tokens per text (+1 [SEP] separator when packing): 3, 8, 14, 3; characters 13, 21, 64, 7.
TEXTS = ["the city park", "bandsly bandsly zzz .",
         "he played music and the band played the first song of the year .", "songsly"]


@pytest.fixture
def hand_corpus(tmp_path):
    path = tmp_path / "hand.txt"
    path.write_text("\n".join([TEXTS[0], TEXTS[1], TEXTS[2], "", TEXTS[3]]) + "\n", encoding="utf-8")
    return path


def report_for(path, tokenizer, max_seq_length=8, whole_word_mask=False, **data):
    args = DataArguments(train_file=[str(path)], validation_split_percentage=0, preprocessing_num_workers=1, **data)
    raw = read_corpus(args)
    tokenized = tokenize_corpus(raw, tokenizer, args, max_seq_length, whole_word_mask=whole_word_mask)
    examples = prepare_datasets(raw, tokenizer, args, max_seq_length, whole_word_mask=whole_word_mask,
                                tokenized=tokenized)
    return corpus_report(raw, tokenized, examples, tokenizer, args, max_seq_length, model_name="tiny"), examples


def test_packed_numbers_match_the_hand_count(hand_corpus, tiny_tokenizer):
    report, examples = report_for(hand_corpus, tiny_tokenizer)
    train = report["splits"]["train"]
    # 4+9+15+4 = 32 tokens; blocks of 8 hold 6 text tokens between [CLS] and [SEP]: 5 blocks, 2 tokens dropped.
    assert (train["texts"], train["characters"], train["tokens"]) == (4, 105, 32)
    assert (train["blocks"], train["tokens_dropped"], train["examples"]) == (5, 2, 5) and len(examples["train"]) == 5
    # words: 3 + 4 (bandsly bandsly [UNK] .) + 14 + 1 = 22 over 3 + 8 + 14 + 3 = 28 pieces (separators excluded)
    assert (train["words"], train["word_pieces"], train["unk_tokens"]) == (22, 28, 1)
    assert train["unk_share"] == pytest.approx(1 / 28) and train["pieces_per_word"] == pytest.approx(28 / 22)
    assert train["split_words"] == [{"word": "bandsly", "count": 2, "pieces": ["band", "##s", "##ly"]},
                                    {"word": "songsly", "count": 1, "pieces": ["song", "##s", "##ly"]}]
    assert "texts_truncated" not in train
    assert report["suggest_vocab_command"] == (f"python scripts/suggest_vocab.py --model_name_or_path tiny "
                                               f"--train_file {hand_corpus} --min_pieces 3 --min_frequency 1 "
                                               "--top_n 2 --output_file domain_tokens.txt")


def test_line_by_line_counts_truncated_texts(hand_corpus, tiny_tokenizer):
    report, examples = report_for(hand_corpus, tiny_tokenizer, line_by_line=True)
    train = report["splits"]["train"]
    # [CLS] text [SEP]: 5, 10, 16 and 5 tokens; at 8 the second and third texts lose 2 and 8 tokens.
    assert (train["texts"], train["tokens"], train["examples"]) == (4, 36, 4)
    assert (train["texts_truncated"], train["tokens_truncated"]) == (2, 10)
    assert "blocks" not in train
    # words counted on the kept tokens: 3 + 4 (band ##s ##ly band ##s ##ly) -> 2 + 6 + 1
    assert (train["words"], train["word_pieces"], train["unk_tokens"]) == (12, 18, 0)
    assert examples["train"]["untruncated_length"] == [5, 10, 16, 5]


def test_whole_word_ids_give_the_same_words(hand_corpus, tiny_tokenizer):
    plain, _ = report_for(hand_corpus, tiny_tokenizer)
    whole, _ = report_for(hand_corpus, tiny_tokenizer, whole_word_mask=True)
    for key in ("words", "word_pieces", "split_words", "tokens", "blocks"):
        assert whole["splits"]["train"][key] == plain["splits"]["train"][key], key


def test_words_equal_the_pre_tokenizers_count(corpus, tiny_tokenizer):
    report, _ = report_for(corpus, tiny_tokenizer, max_seq_length=32)
    texts = [line for line in corpus.read_text().splitlines() if line.strip()]
    train = report["splits"]["train"]
    assert train["words"] == sum(count_words(texts, tiny_tokenizer).values())
    assert train["word_pieces"] == sum(len(tiny_tokenizer.tokenize(t)) for t in texts)
    assert train["characters"] == sum(len(t) for t in texts)


def test_every_evaluation_set_and_the_mix_are_reported(hand_corpus, tiny_tokenizer, tmp_path):
    general = tmp_path / "general.txt"
    general.write_text(f"{TEXTS[0]}\n{TEXTS[1]}\n", encoding="utf-8")
    args = DataArguments(train_file=[str(hand_corpus)], validation_file=[f"domain={hand_corpus}",
                                                                         f"general={general}"],
                         mix_train_file=[str(general)], preprocessing_num_workers=1, max_eval_samples=2)
    raw = read_corpus(args)
    tokenized = tokenize_corpus(raw, tiny_tokenizer, args, 8)
    examples = prepare_datasets(raw, tiny_tokenizer, args, 8, tokenized=tokenized)
    report = corpus_report(raw, tokenized, examples, tiny_tokenizer, args, 8)
    splits = report["splits"]
    assert sorted(splits) == ["mix", "train", "validation_domain", "validation_general"]
    domain, general_set, mix = splits["validation_domain"], splits["validation_general"], splits["mix"]
    assert (domain["tokens"], domain["blocks"], domain["examples"]) == (32, 5, 2)  # --max_eval_samples 2
    # 'the city park' [SEP] + 'bandsly bandsly zzz .' [SEP] = 13 tokens: 2 blocks of 6, 1 dropped
    assert (general_set["texts"], general_set["tokens"], general_set["blocks"], general_set["tokens_dropped"]) == (
        2, 13, 2, 1)
    assert (mix["tokens"], mix["examples"]) == (13, 2)  # its blocks, which run_mlm.py mixes into 'train'
    assert splits["train"]["examples"] == 5  # the domain text's own blocks


def test_streamed_training_is_named_not_read(hand_corpus, tiny_tokenizer):
    args = DataArguments(train_file=[str(hand_corpus)], validation_file=[str(hand_corpus)], streaming=True,
                         preprocessing_num_workers=1)
    raw = read_corpus(args)
    tokenized = tokenize_corpus(raw, tiny_tokenizer, args, 8)
    examples = prepare_datasets(raw, tiny_tokenizer, args, 8, tokenized=tokenized)
    report = corpus_report(raw, tokenized, examples, tiny_tokenizer, args, 8)
    assert report["splits"]["train"] == {"streamed": True}
    assert report["splits"]["validation"]["tokens"] == 32
    assert "train: streamed, not counted" in format_report(report)


SUBWORD_TEXTS = ["the river's banks, flooded in 1998 (twice)!", "hello world: rivers and riverbanks again.",
                 "3rd time's the charm; flooding-prone riverside towns."] * 20


def _byte_level_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SUBWORD_TEXTS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>", "<pad>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", mask_token="<mask>")


def _sentencepiece_unigram():
    from tokenizers import SentencePieceUnigramTokenizer

    tok = SentencePieceUnigramTokenizer()
    tok.train_from_iterator(SUBWORD_TEXTS, vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>", "<mask>"],
                            unk_token="<unk>")
    return PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>")


@pytest.mark.parametrize("build", [_byte_level_bpe, _sentencepiece_unigram], ids=["bpe-G", "sentencepiece"])
def test_word_starts_of_other_tokenizers_match_their_pre_tokenizer(build):
    tokenizer = build()
    args = DataArguments(preprocessing_num_workers=1)
    raw = DatasetDict(train=Dataset.from_dict({"text": SUBWORD_TEXTS}))
    tokenized = tokenize_corpus(raw, tokenizer, args, 16)
    examples = prepare_datasets(raw, tokenizer, args, 16, tokenized=tokenized)
    train = corpus_report(raw, tokenized, examples, tokenizer, args, 16)["splits"]["train"]
    assert train["words"] == sum(count_words(SUBWORD_TEXTS, tokenizer).values())
    assert train["word_pieces"] == sum(len(tokenizer.tokenize(t)) for t in SUBWORD_TEXTS)
    assert train["split_words"] and all(len(w["pieces"]) >= 3 for w in train["split_words"])
    assert all(w["count"] % 20 == 0 for w in train["split_words"])  # each text is there 20 times


def test_script_end_to_end(tiny_model_dir, hand_corpus, tmp_path, capsys):
    from scripts.corpus_report import main

    report = main(["--model_name_or_path", str(tiny_model_dir), "--train_file", str(hand_corpus),
                   "--validation_file", str(hand_corpus), "--max_seq_length", "8", "--line_by_line",
                   "--preprocessing_num_workers", "1", "--output_dir", str(tmp_path / "out")])
    written = json.loads((tmp_path / "out" / "corpus_report.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert list(written["splits"]) == ["train", "validation"]
    for split in written["splits"].values():
        assert (split["texts"], split["tokens"], split["texts_truncated"], split["tokens_truncated"]) == (4, 36, 2, 10)
    out = capsys.readouterr().out
    assert "2 (10 tokens)" in out and "bandsly (2: band ##s ##ly)" in out
    assert f"Wrote {tmp_path / 'out' / 'corpus_report.json'}" in out


def test_script_needs_somewhere_to_write(tiny_model_dir, hand_corpus):
    from scripts.corpus_report import main

    with pytest.raises(InputError, match="--output_dir .* or --output_file"):
        main(["--model_name_or_path", str(tiny_model_dir), "--train_file", str(hand_corpus)])


def test_streaming_run_names_the_stream_and_reads_it_once(tiny_model_dir, corpus, tmp_path):
    from run_mlm import main

    out = tmp_path / "out"
    main(["--model_name_or_path", str(tiny_model_dir), "--train_file", str(corpus), "--streaming",
          "--max_steps", "2", "--max_seq_length", "16", "--per_device_train_batch_size", "2",
          "--preprocessing_num_workers", "1", "--report_to", "none", "--dataloader_num_workers", "0",
          "--output_dir", str(out)])
    report = json.loads((out / "corpus_report.json").read_text())
    assert report["splits"] == {"train": {"streamed": True}}
    assert "The train text was streamed and not counted." in (out / "README.md").read_text()
