#!/usr/bin/env python
"""Corpora of any size, measured: preprocessing speed, time to the first training step from text in memory, from a
stream and from prepared shards, and the time a streamed run takes to resume deep into its corpus, replaying the
stream (the Trainer skips the batches it trained on) against seeking to the recorded position.

    python scripts/benchmarks/benchmark_corpus.py                                  # 1024 MB of WikiText-2 valid, repeated
    python scripts/benchmarks/benchmark_corpus.py --corpus_mb 5 --measure_mb 2 --in_memory_mb 2 --work_dir /tmp/bc

Steps (every MB is 2^20 bytes of UTF-8 text):
1. the corpus: --source repeated to --corpus_mb MB in --work_dir (a temporary folder by default);
2. preprocessing (mlm_pretraining.prepared.prepare_corpus: read, tokenize, pack, write shards) of its first
   --measure_mb MB with 1 and with 2 worker processes, then of the whole corpus with --workers processes (these
   shards serve step 5);
3-5. time to the first training step, each run_mlm.py in its own process from launch until it logs step 1 (then
   it is stopped): in memory, fresh caches, on the first --in_memory_mb MB (reading and tokenizing all of it comes
   before step 1; at 1 GB that takes long and a lot of memory); --streaming on the whole corpus; --tokenized_dataset
   on the shards of step 2;
6. resume deep in the stream: a real 2-step streamed run's checkpoint is relabelled as step D (the step whose
   blocks reach --resume_depth of the corpus; its stream position removed, as in checkpoints of older versions), so
   a rerun replays the stream to step D (the Trainer skips D x batch blocks, reading and tokenizing them) and
   trains step D + 1, where it saves a checkpoint with the true stream position; a rerun from that checkpoint
   seeks. Both are timed from launch to the first new step.

Prints a Markdown table and writes all figures as JSON (--output_json, default work_dir/benchmark_corpus.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlm_lab.paths import REPO, SHARED_DATA
from mlm_lab.tables import markdown_table

from mlm_pretraining.constants import EMBEDDED_MODEL

MB = 2**20
DEFAULT_SOURCE = SHARED_DATA / "wikitext-2" / "valid.txt"
SHIPPED_SOURCE = REPO / "examples" / "data" / "wikitext-2-sample" / "train.txt"
STEP_LOGGED = "{'loss': "  # a training step's log line (--logging_steps 1, --disable_tqdm); not the arguments' dump, which
# prints include_for_metrics=['loss'] before any step


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--corpus_mb", type=float, default=1024, help="Size of the corpus built (MB, 2^20 bytes).")
    parser.add_argument("--source", default=str(DEFAULT_SOURCE if DEFAULT_SOURCE.exists() else SHIPPED_SOURCE),
                        help="Text repeated into the corpus (default: WikiText-2 valid, else the shipped sample).")
    parser.add_argument("--work_dir", default=None,
                        help="Folder for the corpus, shards and runs (default: a temporary folder, removed after).")
    parser.add_argument("--model_name_or_path", default=EMBEDDED_MODEL, help="Model and tokenizer.")
    parser.add_argument("--max_seq_length", type=int, default=128, help="Tokens per block.")
    parser.add_argument("--batch_size", type=int, default=8, help="Training batch size of every run.")
    parser.add_argument("--measure_mb", type=float, default=64,
                        help="Preprocessing speed with 1 and 2 workers is measured on the corpus's first MB.")
    parser.add_argument("--in_memory_mb", type=float, default=64,
                        help="The in-memory run trains on the corpus's first MB (tokenized whole before step 1).")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="Worker processes for preparing the whole corpus (default: every core).")
    parser.add_argument("--resume_depth", type=float, default=0.8,
                        help="How far into the corpus (share of its blocks) the resumed runs stand.")
    parser.add_argument("--timeout", type=float, default=7200, help="Seconds any one run may take.")
    parser.add_argument("--output_json", default=None, help="Where to write the figures (default: in --work_dir).")
    args = parser.parse_args(argv)
    for name in ("corpus_mb", "measure_mb", "in_memory_mb", "batch_size", "workers", "timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    if not 0 < args.resume_depth < 1:
        parser.error(f"--resume_depth must be between 0 and 1, got {args.resume_depth}")
    if not Path(args.source).is_file():
        parser.error(f"--source {args.source} is not a file")
    return args


def repeated_text(source: str, megabytes: float, path: Path) -> Path:
    """``path``: copies of ``source`` (whole lines) until it holds ``megabytes`` MB, cut at a line end."""
    text = Path(source).read_bytes()
    if not text.endswith(b"\n"):
        text += b"\n"
    wanted = int(megabytes * MB)
    with open(path, "wb") as handle:
        while handle.tell() + len(text) <= wanted:
            handle.write(text)
        rest = text[: wanted - handle.tell()]
        handle.write(rest[: rest.rfind(b"\n") + 1])
    return path


def prefix_of(corpus: Path, megabytes: float, path: Path) -> Path:
    """The corpus's first ``megabytes`` MB, cut at a line end."""
    with open(corpus, "rb") as handle:
        head = handle.read(int(megabytes * MB))
    path.write_bytes(head[: head.rfind(b"\n") + 1])
    return path


def measure_preparation(args, corpus: Path, folder: Path, workers: int, tokenizer, max_seq_length: int) -> dict:
    """Time prepare_corpus (read, tokenize, pack, write shards) on ``corpus`` with ``workers`` processes."""
    from mlm_pretraining.data.prepared import prepare_corpus
    from mlm_pretraining.data.text import TextStream

    started = time.perf_counter()
    metadata = prepare_corpus(TextStream([str(corpus)], "text", "--train_file"), tokenizer, str(folder),
                              max_seq_length=max_seq_length, num_workers=workers)
    seconds = time.perf_counter() - started
    megabytes = corpus.stat().st_size / MB
    return {"corpus_mb": round(megabytes, 2), "workers": workers, "seconds": round(seconds, 2),
            "mb_per_s": round(megabytes / seconds, 3), "blocks": metadata["num_blocks"], "folder": str(folder)}


def run_flags(args, output_dir: Path, **extra) -> list[str]:
    values = {"model_name_or_path": args.model_name_or_path, "output_dir": output_dir,
              "per_device_train_batch_size": args.batch_size, "logging_steps": 1, "do_eval": False,
              "report_to": "none", "disable_tqdm": True, "dataloader_num_workers": 0, "max_steps": 1_000_000,
              "save_strategy": "no", **extra}
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def time_to_first_step(args, flags: list[str], log: Path, cache: Path, finish: bool = False) -> float:
    """Seconds from launching run_mlm.py until it logs a training step; then it is stopped (``finish``: it runs to
    its end, e.g. to save a checkpoint)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
               HF_DATASETS_CACHE=str(cache), PYTHONPATH=str(REPO))
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        process = subprocess.Popen([sys.executable, str(REPO / "run_mlm.py"), *flags], cwd=REPO, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        first = None
        for line in process.stdout:
            out.write(line)
            if first is None and STEP_LOGGED in line:
                first = time.perf_counter() - started
                if not finish:
                    process.send_signal(signal.SIGKILL)
                    break
            if time.perf_counter() - started > args.timeout:
                process.kill()
                break
        process.wait()
    if first is None or (finish and process.returncode != 0):
        raise RuntimeError(f"run_mlm.py did not train a step (exit {process.returncode}); see {log}")
    return round(first, 2)


def relabel(checkpoint: Path, folder: Path, step: int) -> Path:
    """A copy of ``checkpoint`` that says it is step ``step``, without its stream position (an older checkpoint)."""
    target = folder / f"checkpoint-{step}"
    shutil.copytree(checkpoint, target)
    state_path = target / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["global_step"] = step
    state_path.write_text(json.dumps(state))
    (target / "stream_state.json").unlink()
    return target


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # worker processes are the only parallelism measured
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="benchmark-corpus-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return measure(args, work)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def measure(args, work: Path) -> dict:
    from arguments import ModelArguments
    from mlm_pretraining.model.loading import load_tokenizer

    corpus = repeated_text(args.source, args.corpus_mb, work / "corpus.txt")
    corpus_mb = corpus.stat().st_size / MB
    print(f"Corpus: {corpus} ({corpus_mb:.1f} MB, {args.source} repeated)", flush=True)
    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=args.model_name_or_path))
    rows: list[dict] = []

    measure_mb = min(args.measure_mb, corpus_mb)
    head = prefix_of(corpus, measure_mb, work / "prefix-measure.txt")
    for workers in (1, 2):
        result = measure_preparation(args, head, work / f"prepared-{workers}", workers, tokenizer,
                                     args.max_seq_length)
        rows.append({"measurement": f"prepare_corpus, first {result['corpus_mb']:g} MB", **result})
        shutil.rmtree(result["folder"])
        print(rows[-1], flush=True)
    full = measure_preparation(args, corpus, work / "prepared", args.workers, tokenizer, args.max_seq_length)
    rows.append({"measurement": "prepare_corpus, whole corpus", **full})
    print(rows[-1], flush=True)

    in_memory_mb = min(args.in_memory_mb, corpus_mb)
    small = prefix_of(corpus, in_memory_mb, work / "prefix-in-memory.txt")
    firsts = [
        (f"first step: in memory, first {in_memory_mb:g} MB, fresh cache", small.stat().st_size / MB,
         {"train_file": small, "max_seq_length": args.max_seq_length, "validation_split_percentage": 0}),
        ("first step: --streaming", corpus_mb,
         {"train_file": corpus, "streaming": True, "max_seq_length": args.max_seq_length}),
        ("first step: --tokenized_dataset", corpus_mb, {"tokenized_dataset": work / "prepared"}),
    ]
    for index, (name, megabytes, data) in enumerate(firsts):
        seconds = time_to_first_step(args, run_flags(args, work / f"run-{index}", **data), work / f"run-{index}.log",
                                     work / f"cache-{index}")
        rows.append({"measurement": name, "corpus_mb": round(megabytes, 2), "seconds": seconds})
        print(rows[-1], flush=True)

    # Resume deep in the stream: a real checkpoint relabelled as step D, replayed, then its successor seeked.
    stream = {"train_file": corpus, "streaming": True, "max_seq_length": args.max_seq_length}
    blocks_per_step = args.batch_size
    depth_step = max(2, int(args.resume_depth * full["blocks"] / blocks_per_step))
    short = work / "resume-source"
    time_to_first_step(args, run_flags(args, short, max_steps=2, save_strategy="steps", save_steps=2, **stream),
                       work / "resume-source.log", work / "cache-resume", finish=True)
    replayed = work / "resume-replay"
    relabel(short / "checkpoint-2", replayed, depth_step)
    replay_seconds = time_to_first_step(
        args, run_flags(args, replayed, max_steps=depth_step + 1, save_strategy="steps", save_steps=depth_step + 1,
                        **stream), work / "resume-replay.log", work / "cache-resume", finish=True)
    position = json.loads((replayed / f"checkpoint-{depth_step + 1}" / "stream_state.json").read_text())
    depth_mb = position["positions"][0]["offset"] / MB
    rows.append({"measurement": f"resume at step {depth_step:,}: replay (Trainer skips the batches)",
                 "corpus_mb": round(corpus_mb, 2), "depth_mb": round(depth_mb, 2), "seconds": replay_seconds})
    print(rows[-1], flush=True)
    seeked = work / "resume-seek"
    shutil.copytree(replayed / f"checkpoint-{depth_step + 1}", seeked / f"checkpoint-{depth_step + 1}")
    seek_seconds = time_to_first_step(args, run_flags(args, seeked, max_steps=depth_step + 2, **stream),
                                      work / "resume-seek.log", work / "cache-resume")
    rows.append({"measurement": f"resume at step {depth_step + 1:,}: seek to the recorded position",
                 "corpus_mb": round(corpus_mb, 2), "depth_mb": round(depth_mb, 2), "seconds": seek_seconds})
    print(rows[-1], flush=True)

    table = markdown_table(rows, [("measurement", "measurement", "{}"), ("corpus MB", "corpus_mb", "{:,.1f}"),
                                  ("workers", "workers", "{}"), ("seconds", "seconds", "{:,.2f}"),
                                  ("MB/s", "mb_per_s", "{:,.2f}"), ("depth MB", "depth_mb", "{:,.1f}")])
    notes = (f"Model {args.model_name_or_path}, max_seq_length {args.max_seq_length}, batch {args.batch_size}, "
             f"{os.cpu_count()} CPU cores. Preprocessing with 1 and 2 workers is measured on the corpus's first "
             f"{measure_mb:g} MB; the in-memory run trains on its first {in_memory_mb:g} MB. Seconds of the runs: "
             "from launching run_mlm.py until it has trained its first (new) step, process start and model loading "
             "included. The resumed runs stand at the same place in the corpus (depth MB: the byte offset of the "
             "recorded position).")
    print(f"\n{table}\n\n{notes}")
    summary = {"corpus_mb": round(corpus_mb, 2), "source": args.source, "model": args.model_name_or_path,
               "max_seq_length": args.max_seq_length, "batch_size": args.batch_size, "cpu_count": os.cpu_count(),
               "results": rows, "notes": notes}
    output = Path(args.output_json or work / "benchmark_corpus.json")
    output.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(f"\nWrote {output}")
    return summary


if __name__ == "__main__":
    main()
