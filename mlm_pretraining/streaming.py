"""--streaming: read a training corpus larger than memory as a stream of texts and pack it on the fly.

Files (or a hub dataset) are read by ``datasets`` in streaming mode (text.read_corpus); :class:`PackedStream` tokenizes texts in
batches and cuts the token stream into the same blocks ``data.pack`` makes from a whole corpus (a separator after
each text, the remainder carried across texts, only the final partial block dropped). Nothing is cached on disk.
Texts are read in file order (shuffle big corpora once beforehand). On resume the Trainer replays the stream up
to the checkpoint's step (skipping batches costs reading and tokenizing, not training); masks are seeded by
(seed, pass, content), so the resumed run sees the same blocks with the same masks.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

import torch

from mlm_pretraining.data import special_token_template, text_separator

logger = logging.getLogger(__name__)

TEXTS_PER_BATCH = 1000


class PackedStream(torch.utils.data.IterableDataset):
    """Blocks of ``max_seq_length`` token ids (or single truncated texts with ``line_by_line``) from a text stream.

    Iteration never ends (``--max_steps`` ends training): it reads the stream again and again, the same blocks in
    the same order each pass, each block tagged ``mask_epoch`` = its pass. With several dataloader workers, worker
    ``w`` tokenizes every ``w``-th batch of texts.
    """

    def __init__(self, texts, text_column: str, tokenizer, max_seq_length: int, line_by_line: bool = False,
                 max_samples: int | None = None):
        self.texts = texts
        self.text_column = text_column
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.line_by_line = line_by_line
        self.max_samples = max_samples
        self.prefix, self.suffix = special_token_template(tokenizer)
        sep = text_separator(tokenizer)
        self.separator = [] if sep is None else [sep]

    def _text_batches(self) -> Iterator[list[str]]:
        texts = (row[self.text_column] for row in self.texts)
        texts = (t for t in texts if t and t.strip())
        batches = iter(lambda: list(itertools.islice(texts, TEXTS_PER_BATCH)), [])
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.num_workers > 1:
            batches = itertools.islice(batches, worker.id, None, worker.num_workers)
        return batches

    def _blocks(self) -> Iterator[list[int]]:
        body = self.max_seq_length - len(self.prefix) - len(self.suffix)
        carry: list[int] = []
        for batch in self._text_batches():
            if self.line_by_line:
                yield from self.tokenizer(batch, truncation=True, max_length=self.max_seq_length,
                                          return_attention_mask=False, return_token_type_ids=False)["input_ids"]
                continue
            encoded = self.tokenizer(batch, add_special_tokens=False, return_attention_mask=False,
                                     return_token_type_ids=False)["input_ids"]
            # The remainder of one batch of texts starts the next block: no token is dropped but the last few.
            carry.extend(itertools.chain.from_iterable(ids + self.separator for ids in encoded))
            n_full = len(carry) // body
            for i in range(n_full):
                yield self.prefix + carry[i * body : (i + 1) * body] + self.suffix
            carry = carry[n_full * body :]

    def __iter__(self):
        # Endless: pass after pass over the stream, each block tagged with its pass so the collator gives it new
        # masks. The Trainer then sees one long epoch, and a resume replays to the exact position in any pass.
        for pass_index in itertools.count():
            empty = True
            for block in itertools.islice(self._blocks(), self.max_samples):
                empty = False
                yield {"input_ids": block, "mask_epoch": pass_index}
            if empty:
                logger.warning("The training stream yields no block of --max_seq_length %d tokens.",
                               self.max_seq_length)
                return
