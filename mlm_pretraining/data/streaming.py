"""--streaming: read a training corpus larger than memory as a stream of texts, pack it on the fly, and resume by
position.

:class:`PackedStream` reads texts in order from a :class:`~mlm_pretraining.text.TextStream`, tokenizes them in
batches (``data.encode_texts``) and cuts them into the blocks in-memory packing makes (``data.Packer``: a separator
after each text, the remainder carried across texts, only the final partial block dropped), word ids included for
whole-word masking. Nothing is cached on disk. Texts are read in file order (shuffle big corpora once beforehand).

Every block carries its stream position: where the stream stands once that block is used, i.e. where the next
block starts (pass, blocks so far in the pass, text batch, text, file, byte offset or row, tokens of that text
already used). The dataloader, its prefetching and its workers run ahead of training, so the position is read
where training takes its batches (``trainer.MLMTrainer.get_batch_samples``), never where the stream is:
:class:`StreamPositionCallback` keeps the position after the last block a training step used (agreed over the
processes of a torchrun job) and writes it into every checkpoint as ``stream_state.json``. A resumed run seeks
there (a ``file.seek`` for .txt/.jsonl files) and re-tokenizes one text, so the time to the first new step does not
grow with how far into the corpus the run was; the Trainer is told not to skip batches as well. Masks are seeded by
(seed, pass, content): the resumed run sees the same blocks with the same masks as an uninterrupted one. A
checkpoint without the file (an older one) is resumed as before: the Trainer replays the stream to its step.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from collators import STREAM_POSITION
from mlm_pretraining.data.packing import (
    Packer,
    encode_flat,
    special_token_template,
    text_separator,
)
from mlm_pretraining.data.text import START, TextStream
from mlm_pretraining.errors import InputError
from mlm_pretraining.files import write_text_atomically
from mlm_pretraining.internals import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

TEXTS_PER_BATCH = 1000
STATE_FILE = "stream_state.json"
STATE_FORMAT = 1
# One stream position: the numbers each block carries (as a row of a batch tensor) and stream_state.json records.
POSITION_FIELDS = ("worker", "pass", "block_in_pass", "text_batch", "text_in_batch", "file", "offset", "part",
                   "token_offset")
_F = {name: i for i, name in enumerate(POSITION_FIELDS)}




def text_batches(source: TextStream, start=START, text_batch: int = 0, text_in_batch: int = 0):
    """``(batch index, index of its first text, [(place, text, next place), ...])``: the texts from ``start`` on,
    TEXTS_PER_BATCH a batch, counted from ``text_batch``/``text_in_batch`` (a batch resumed in its middle is
    shorter), so batches are the same whether reading began at the start or at a place."""
    texts = source.texts(start)
    while True:
        batch = list(itertools.islice(texts, TEXTS_PER_BATCH - text_in_batch))
        if not batch:
            return
        yield text_batch, text_in_batch, batch
        text_batch, text_in_batch = text_batch + 1, 0


class PackedStream(torch.utils.data.IterableDataset):
    """Blocks of ``max_seq_length`` token ids (or single truncated texts with ``line_by_line``) from a text stream.

    Iteration never ends (``--max_steps`` ends training): it reads the stream again and again, the same blocks in
    the same order each pass, each block tagged ``mask_epoch`` = its pass and its stream position (see the module
    docstring). With several dataloader workers, worker ``w`` tokenizes and packs every ``w``-th batch of texts
    (and has a position of its own). :meth:`seek` makes the next iteration start at recorded positions.
    """

    def __init__(self, source: TextStream, tokenizer, max_seq_length: int, line_by_line: bool = False,
                 max_samples: int | None = None, word_ids: bool = False, segment_chinese: bool = False):
        self.source = source
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.line_by_line = line_by_line
        self.max_samples = max_samples
        self.word_ids = word_ids
        self.prefix, self.suffix = special_token_template(tokenizer)
        self.encode_options = dict(max_seq_length=max_seq_length, line_by_line=line_by_line,
                                   separator=text_separator(tokenizer), word_ids=word_ids,
                                   segment_chinese=segment_chinese)
        self.start: dict[int, list[int]] = {}  # share -> position to start from (seek)
        self.rotation = 0

    def seek(self, positions: dict[int, list[int]], rotation: int = 0) -> None:
        """Start the next iteration of each share of the text at its position (a row of POSITION_FIELDS whose
        'worker' is the share). ``rotation``: the share dataloader worker 0 takes, because the dataloader takes its
        first batch from worker 0 while the interrupted run would have taken it from worker ``rotation``."""
        self.start = {int(share): list(position) for share, position in positions.items()}
        self.rotation = rotation

    def __iter__(self):
        # Endless: pass after pass over the stream, each block tagged with its pass so the collator gives it new
        # masks. The Trainer then sees one long epoch.
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        worker = (worker + self.rotation) % workers  # the share of the text this worker packs
        position = self.start.get(worker)
        pass_index = position[_F["pass"]] if position else 0
        while True:
            produced = False
            if position is None or self.max_samples is None or position[_F["block_in_pass"]] < self.max_samples:
                for row in self._pass(pass_index, position, worker, workers):
                    produced = True
                    yield row
            if not produced and position is None:  # a whole pass from its start gave nothing
                logger.warning("The training stream yields no block of --max_seq_length %d tokens.",
                               self.max_seq_length)
                return
            pass_index, position = pass_index + 1, None

    def _pass(self, pass_index: int, position: list[int] | None, worker: int, workers: int) -> Iterator[dict]:
        """One pass over the text, from its start or from ``position``."""
        if position is None:
            position = [worker, pass_index, 0, 0, 0, *START, 0]
        block = position[_F["block_in_pass"]]
        skip_tokens = position[_F["token_offset"]]
        start = (position[_F["file"]], position[_F["offset"]], position[_F["part"]])
        packer = Packer(self.max_seq_length, self.prefix, self.suffix, word_ids=self.word_ids)
        # The texts whose tokens are in the packer: flat start, (text batch, text, place), tokens already used.
        starts: list[int] = []
        texts: list[tuple[int, int, tuple]] = []
        skipped: list[int] = []
        following = None  # (text batch, text, place) of the text after the last one added
        for j, first, batch in text_batches(self.source, start, position[_F["text_batch"]],
                                            position[_F["text_in_batch"]]):
            if j % workers != worker:
                continue
            ids, lengths, words, _ = encode_flat(self.tokenizer, [text for _, text, _ in batch],
                                                 **self.encode_options)
            places = [(j, first + k, place) for k, (place, _, _) in enumerate(batch)]
            last = first + len(batch) - 1
            following = (j, last + 1, batch[-1][2]) if last + 1 < TEXTS_PER_BATCH else (j + 1, 0, batch[-1][2])
            if self.line_by_line:
                offsets = np.concatenate([[0], np.cumsum(lengths)])
                for k in range(len(batch)):
                    after = places[k + 1] if k + 1 < len(batch) else following
                    row = {"input_ids": ids[offsets[k]:offsets[k + 1]].tolist(), "mask_epoch": pass_index}
                    if words is not None:
                        row["word_ids"] = words[offsets[k]:offsets[k + 1]].tolist()
                    block += 1
                    row[STREAM_POSITION] = self._position(worker, pass_index, block, after, 0)
                    yield row
                    if self.max_samples is not None and block >= self.max_samples:
                        return
                continue
            if skip_tokens:  # resuming inside the first text: its first tokens were in earlier blocks
                ids, words = ids[skip_tokens:], None if words is None else words[skip_tokens:]
                lengths = lengths.copy()
                lengths[0] -= skip_tokens
            text_starts = packer.tokens_in + np.concatenate([[0], np.cumsum(lengths)[:-1]])
            starts.extend(text_starts.tolist())
            texts.extend(places)
            skipped.extend([skip_tokens] + [0] * (len(batch) - 1))
            skip_tokens = 0
            cut_before = packer.tokens_cut
            blocks, block_words = packer.add(ids, lengths, words)
            for k in range(len(blocks)):
                end = cut_before + (k + 1) * packer.body  # where the next block starts
                if end >= packer.tokens_in:
                    after, offset = following, 0
                else:
                    t = bisect.bisect_right(starts, end) - 1
                    after, offset = texts[t], end - starts[t] + skipped[t]
                row = {"input_ids": blocks[k].tolist(), "mask_epoch": pass_index}
                if block_words is not None:
                    row["word_ids"] = block_words[k].tolist()
                block += 1
                row[STREAM_POSITION] = self._position(worker, pass_index, block, after, offset)
                yield row
                if self.max_samples is not None and block >= self.max_samples:
                    return
            # Forget the texts wholly cut into blocks (the next block starts after them).
            keep = max(0, bisect.bisect_right(starts, packer.tokens_cut) - 1)
            del starts[:keep], texts[:keep], skipped[:keep]

    @staticmethod
    def _position(worker: int, pass_index: int, block: int, text: tuple, token_offset: int) -> list[int]:
        j, k, (file, offset, part) = text
        return [worker, pass_index, block, j, k, file, offset, part, token_offset]


class StreamPositionCallback(TrainerCallback):
    """Where a streamed run stands: the position after the last block training used, per dataloader worker; written
    into every checkpoint (``stream_state.json``, small, written atomically) and read back to seek on resume.

    :meth:`consume` is given the positions of the batches each training step takes (``MLMTrainer``
    ``.get_batch_samples``). Under torchrun each process sees only its slice of a step's blocks, so the positions
    are gathered from all processes when a checkpoint is saved and the furthest one per worker is kept.
    """

    def __init__(self, stream: PackedStream):
        self.stream = stream
        self.latest: dict[int, list[int]] = {}  # worker -> position after its last block used in training
        self.consumed_before = 0  # blocks used before this run (from the checkpoint resumed)
        self.consumed_here = 0  # blocks this process used in this run
        self.resumed = False

    def consume(self, positions: torch.Tensor | None) -> None:
        """Note the positions (one row per block, POSITION_FIELDS) of blocks a training step has taken."""
        if positions is None:
            return
        rows = positions.cpu().tolist()
        self.consumed_here += len(rows)
        for row in rows:
            self._keep(row)

    def _keep(self, row: list[int]) -> None:
        worker = row[_F["worker"]]
        seen = self.latest.get(worker)
        if seen is None or (row[_F["pass"]], row[_F["block_in_pass"]]) > (seen[_F["pass"]], seen[_F["block_in_pass"]]):
            self.latest[worker] = list(row)

    def on_step_end(self, args, state, control, **kwargs):
        if self.resumed:
            # The Trainer counts micro-steps from 0 again when it does not skip batches; an uninterrupted stream's
            # epoch after step g is g x accumulation / (max_steps x accumulation), the same float as this.
            state.epoch = state.global_step / state.max_steps
        return control

    def on_save(self, args, state, control, **kwargs):
        reports = [(self.consumed_here, self.latest)]
        if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            reports = [None] * args.world_size
            torch.distributed.all_gather_object(reports, (self.consumed_here, self.latest))
        for _, latest in reports:
            for row in latest.values():
                self._keep(row)
        if not args.should_save:
            return control
        consumed = self.consumed_before + sum(count for count, _ in reports)
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        write_state(folder, self._describe(args, state, consumed))
        return control

    def _describe(self, args, state, consumed: int) -> dict:
        return {
            "format": STATE_FORMAT,
            "global_step": state.global_step,
            "blocks_consumed": consumed,
            "blocks_per_step": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
            "workers": max(1, args.dataloader_num_workers),
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "corpus": corpus_description(self.stream),
            "positions": [dict(zip(POSITION_FIELDS, self.latest[w])) for w in sorted(self.latest)],
        }

    def resume(self, checkpoint: str, args) -> bool:
        """Make the stream start where ``checkpoint`` left it; False (after a warning) when the checkpoint has no
        stream position, so the Trainer replays the stream instead. Refuses a position recorded on other files or
        with another number of dataloader workers."""
        path = Path(checkpoint) / STATE_FILE
        if not path.is_file():
            logger.warning("%s has no %s (written before resume by position existed, or the run was stopped while "
                           "saving): the Trainer replays the stream up to the checkpoint, reading and tokenizing the "
                           "text before it again.", checkpoint, STATE_FILE)
            return False
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            positions = {p["worker"]: [int(p[name]) for name in POSITION_FIELDS] for p in saved["positions"]}
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"{path} is not a stream position file this version can read ({err}). Delete it to "
                             "resume by replaying the stream instead.") from None
        ours = corpus_description(self.stream)
        changed = [f"{key} {saved['corpus'].get(key)!r} then, {value!r} now" for key, value in ours.items()
                   if saved["corpus"].get(key) != value]
        if changed:
            raise InputError(f"{checkpoint} was written while streaming other text or settings ({'; '.join(changed)}): "
                             "its stream position would land elsewhere. Resume with the files and flags it was "
                             "written with, or start afresh with --overwrite_output_dir.")
        workers = max(1, args.dataloader_num_workers)
        if saved["workers"] != workers:
            raise InputError(f"{checkpoint} was written with --dataloader_num_workers {saved['workers']} (each worker "
                             f"packs its own share of the text, and has its own position), this run has {workers}. "
                             f"Resume with --dataloader_num_workers {saved['workers']}.")
        batch = saved.get("per_device_train_batch_size", args.per_device_train_batch_size)
        if workers > 1 and batch != args.per_device_train_batch_size:
            raise InputError(f"{checkpoint} was written with --per_device_train_batch_size {batch} and "
                             f"--dataloader_num_workers {workers}: the workers' turns follow the batches, so resume with "
                             f"--per_device_train_batch_size {batch}.")
        # The dataloader takes batches from its workers in turn; the next one is due from this worker. (Process 0
        # reads every batch of a torchrun job, accelerate's default for a stream, so batches are blocks / batch size.)
        rotation = int(saved["blocks_consumed"]) // batch % workers
        self.stream.seek(positions, rotation)
        self.latest = positions
        self.consumed_before = int(saved["blocks_consumed"])
        self.resumed = True
        logger.info("Resuming the stream by position: %s", "; ".join(
            f"pass {p[_F['pass']]}, block {p[_F['block_in_pass']]}, {describe_place(self.stream.source, p)}"
            for p in positions.values()))
        return True


def corpus_description(stream: PackedStream) -> dict:
    """What a stream position depends on: the files (names and sizes) or hub dataset, and how blocks are cut."""
    source = stream.source
    return {
        "files": [[os.path.basename(f), os.path.getsize(f)] for f in source.files] or source.where,
        "text_column": source.column,
        "max_seq_length": stream.max_seq_length,
        "line_by_line": stream.line_by_line,
        "max_samples": stream.max_samples,
        "word_ids": stream.word_ids,
        "texts_per_batch": TEXTS_PER_BATCH,  # dataloader workers share the text by batches of texts
    }


def describe_place(source: TextStream, position: list[int]) -> str:
    """A position's place in words, for the log."""
    if source.hub is not None:
        return f"row {position[_F['offset']]} of {source.where}"
    file = source.files[position[_F["file"]]] if position[_F["file"]] < len(source.files) else "the end"
    unit = "byte" if source.by_line else "row"
    return f"{file} {unit} {position[_F['offset']]}, token {position[_F['token_offset']]}"


def write_state(folder: Path, state: dict) -> Path:
    """Write ``state`` as ``folder/stream_state.json`` atomically (a reader sees the old file or the new one)."""
    return write_text_atomically(folder / STATE_FILE, json.dumps(state, indent=1))
