"""Domain vocabulary: find corpus words the tokenizer shatters, and add them with embeddings that start informed."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

import torch
from tokenizers import AddedToken

from mlm_pretraining.errors import InputError

logger = logging.getLogger(__name__)



def normalize(tokenizer, text: str) -> str:
    """``text`` as the tokenizer sees it before splitting (lower-cased and accent-stripped for uncased BERT)."""
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    return normalizer.normalize_str(text) if normalizer is not None else text


def add_domain_tokens(tokenizer, model, tokens: Iterable[str]) -> list[str]:
    """Add ``tokens`` as whole words to ``tokenizer`` and rows for them to ``model``; return the tokens added.

    Each new row (input embedding, and the output decoder's weight and bias when the model has one) starts as the
    mean of the rows of the pieces the tokenizer split the word into before, so the model begins from what it
    already knew about the word instead of from noise. Tokens the tokenizer already has as one piece are skipped.
    """
    vocab = tokenizer.get_vocab()
    new_tokens: list[str] = []
    pieces: list[list[int]] = []
    for token in tokens:
        word = normalize(tokenizer, token)
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if word in vocab or word in new_tokens or len(ids) < 2:
            logger.info("--add_tokens: '%s' is already one token; skipped.", token)
            continue
        new_tokens.append(word)
        pieces.append(ids)
    if not new_tokens:
        logger.warning("--add_tokens: every token is already in the vocabulary; nothing added.")
        return []
    # single_word: a new word is matched only as a whole word, never inside a longer one.
    tokenizer.add_tokens([AddedToken(word, single_word=True, normalized=True) for word in new_tokens])
    new_ids = tokenizer.convert_tokens_to_ids(new_tokens)
    rows = model.get_input_embeddings().num_embeddings
    # A model may have spare rows beyond the tokenizer (padded vocabularies); never shrink it.
    model.resize_token_embeddings(max(rows, len(tokenizer)), mean_resizing=False)
    inputs = model.get_input_embeddings().weight
    outputs = model.get_output_embeddings()
    with torch.no_grad():
        for new_id, piece_ids in zip(new_ids, pieces):
            inputs[new_id] = inputs[piece_ids].mean(dim=0)
            if outputs is not None:
                if outputs.weight is not inputs:  # untied output layer: its own rows
                    outputs.weight[new_id] = outputs.weight[piece_ids].mean(dim=0)
                if getattr(outputs, "bias", None) is not None:
                    outputs.bias[new_id] = outputs.bias[piece_ids].mean(dim=0)
    logger.info("--add_tokens: added %d token(s) (ids %d-%d), e.g. %s.", len(new_tokens), min(new_ids),
                max(new_ids), ", ".join(new_tokens[:5]))
    return new_tokens


def count_words(texts: Iterable[str], tokenizer) -> Counter:
    """How often each word occurs, where words are what the tokenizer's pre-tokenizer cuts normalized text into."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None:
        raise InputError("suggest_vocab.py needs a fast tokenizer with a pre-tokenizer (such as BERT's WordPiece).")
    counts: Counter = Counter()
    for text in texts:
        if text:
            counts.update(word for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalize(tokenizer, text)))
    return counts


def suggest_tokens(counts: Counter, tokenizer, *, min_frequency: int = 20, min_pieces: int = 3,
                   top_n: int = 100) -> list[tuple[str, int, list[str]]]:
    """Words seen at least ``min_frequency`` times that split into at least ``min_pieces`` pieces, most frequent
    first: ``(word, frequency, pieces)``. Words without a letter (numbers, punctuation) are left out."""
    candidates = [word for word, n in counts.items() if n >= min_frequency and any(c.isalpha() for c in word)]
    suggestions = []
    for word in candidates:
        pieces = tokenizer.tokenize(word)
        if len(pieces) >= min_pieces and tokenizer.unk_token not in pieces:
            suggestions.append((word, counts[word], pieces))
    suggestions.sort(key=lambda item: (-item[1], item[0]))
    return suggestions[:top_n]
