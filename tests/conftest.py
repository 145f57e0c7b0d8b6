"""Shared fixtures: a tiny BERT and tokenizer built in tmp_path, offline, in well under a second."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

REPO = Path(__file__).resolve().parents[1]
from mlm_lab.paths import SHARED_DATA

WORDS = (
    "the of and to in a is was for on as with by he at from his an were are which it that this be or has had "
    "first new two after one who have its they their her she been but also not all more time during most up "
    "city film game season year years world war state school music team album song river park house band "
    "played released called known made used became later including national american south north early "
    "un ##able ##ing ##ed ##s ##ly ##er believ ##ably happ ##ily 1 2 3 4 5 @ - , . ' \" ( ) : ; = < > k"
).split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


SEASON_FIRST = "the city park was known for its music and the band played the first song of the year ."
SEASON_SECOND = "he released {i} new album , which became known in the world during the war ."


def write_season_corpus(folder: Path, first: str = SEASON_FIRST, second: str = SEASON_SECOND) -> Path:
    """train.txt of 60 short sections (a heading, a blank line, two sentences; ``{i}`` in ``second`` numbers them):
    enough text for several checkpoints of a tiny run."""
    lines = []
    for i in range(60):
        lines += [f" = season {i % 5} = ", "", first.format(i=i % 5), second.format(i=i % 5)]
    path = folder / "train.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_tokenizer(folder: Path):
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIALS + sorted(set(WORDS), key=WORDS.index)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True,
                              model_max_length=128)
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_model(folder: Path, tokenizer, seed: int = 0):
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    model = BertForMaskedLM(config)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A folder holding a tiny BertForMaskedLM and its WordPiece tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    build_model(folder, build_tokenizer(folder))
    return folder


@pytest.fixture(scope="session")
def headless_model_dir(tmp_path_factory) -> Path:
    """A tiny BERT saved as a bare encoder (BertModel) with a pooler and no masked-LM head, like the shipped MiniLM."""
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("headless-bert")
    tokenizer = build_tokenizer(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A small training text: wikitext-style lines with headings and blank lines."""
    lines = []
    for i in range(60):
        lines.append(f" = season {i % 5} = ")
        lines.append("")
        lines.append("the city park was known for its music and the band played the first song of the year .")
        lines.append(f"he released {i % 5} new album , which became known in the world during the war .")
    path = tmp_path / "train.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def task_dir(tmp_path) -> Path:
    """A labelled task folder as scripts/run_classification.py and --probe_task read it: train, dev and test .jsonl
    (text and label; helpers.labelled_rows)."""
    from helpers import labelled_rows, write_jsonl

    folder = tmp_path / "task"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", labelled_rows(60))
    write_jsonl(folder / "dev.jsonl", labelled_rows(9))
    write_jsonl(folder / "test.jsonl", labelled_rows(12))
    return folder


@pytest.fixture
def run(tiny_model_dir, tmp_path, monkeypatch):
    """Run run_mlm.main() with the tiny model plus ``flags``; expect an InputError matching ``pattern``; return it.

    With ``before_model`` (the default) loading the model fails the test: the error must come earlier.
    """

    import run_mlm
    from mlm_pretraining.errors import InputError

    def _run(flags: list[str], pattern: str, before_model: bool = True, model=None) -> Exception:
        if before_model:
            def no_model(*args, **kwargs):
                raise AssertionError("the model was loaded before the bad input was reported")
            monkeypatch.setattr(run_mlm, "load_model_with_info", no_model)
        argv = ["--model_name_or_path", str(model or tiny_model_dir), "--output_dir", str(tmp_path / "out"),
                "--report_to", "none", "--max_steps", "2", "--preprocessing_num_workers", "1", *flags]
        with pytest.raises(InputError, match=pattern) as info:
            run_mlm.main(argv)
        return info.value

    return _run


@pytest.fixture
def cpu_process():
    """This test process as the one process of ``torchrun --nproc_per_node 1`` on CPUs: the TrainingArguments made
    here set up accelerate's CPU processes (distributed type MULTI_CPU, a one-process gloo group). Afterwards the
    group is destroyed and accelerate's state and the environment variables it and this fixture set are put back."""
    import socket

    import torch
    import torch.distributed as dist
    from accelerate.state import AcceleratorState

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    environment = dict(LOCAL_RANK="0", RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), OMP_NUM_THREADS=str(torch.get_num_threads()))
    # Put back by hand, not by monkeypatch: datasets' map with num_proc replaces os.environ by a copy, and monkeypatch
    # would restore the replaced object.
    written = ("ACCELERATE_USE_FSDP", "FSDP_CPU_RAM_EFFICIENT_LOADING")  # by accelerate and transformers under FSDP
    saved = {name: os.environ.get(name) for name in (*environment, *written)}
    os.environ.update(environment)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def kill_when_saved(process, marker: Path, timeout: float = 300) -> None:
    """SIGKILL ``process`` as soon as ``marker`` (e.g. a checkpoint's trainer_state.json) exists; fail if the run
    ends before that or the marker never appears."""
    import signal
    import time

    deadline = time.time() + timeout
    while process.poll() is None and not marker.exists():
        assert time.time() < deadline, f"{marker} did not appear within {timeout} s"
        time.sleep(0.01)
    process.kill()
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
