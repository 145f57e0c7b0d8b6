"""Plain functions several test files share; fixtures (and the tiny model builders they use) live in conftest.py.

Test files import both by their bare module names, as pytest puts tests/ on sys.path: ``from helpers import flags``,
``from conftest import REPO``. Never ``from tests.x import ...`` (pytest has already imported the module as ``x``; the
prefix imports a second copy) and never from another test module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM

from arguments import parse_args
from mlm_pretraining.trainer import build_trainer

# --- labelled text for the fine-tuning scripts ----------------------------------------------------------------------

POSITIVE = ["the band played the first song of the year", "he released a new album which became known"]
NEGATIVE = ["the war was in the south during the season", "the river and the park of the city"]
NEUTRAL = ["it was one of the national team", "she had been called early"]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    """``rows`` as JSON lines in ``path``; its path as a string, ready for a flag."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def labelled_rows(n: int) -> list[dict]:
    """``n`` rows of three classes (music, place, other) in turn, each text a sentence of its class and a digit."""
    groups = [("music", POSITIVE), ("place", NEGATIVE), ("other", NEUTRAL)]
    return [{"text": groups[i % 3][1][i % 2] + f" {i % 5}", "label": groups[i % 3][0], "metadata": []}
            for i in range(n)]


# --- run_mlm.py runs compared step for step -------------------------------------------------------------------------

MAX_STEPS = 14  # 10 steps per epoch: runs cross an epoch boundary, so the per-epoch masks are exercised too


def flags(model: Path, corpus: Path, out: Path, **extra) -> list[str]:
    """run_mlm.py flags for a tiny CPU run of MAX_STEPS steps logging every step and saving every 4, every
    checkpoint kept; ``extra`` adds or overrides flags (``name=value``)."""
    args = {"model_name_or_path": model, "train_file": corpus, "output_dir": out, "max_seq_length": 32,
            "per_device_train_batch_size": 8, "max_steps": MAX_STEPS, "save_steps": 4, "save_total_limit": 0,
            "logging_steps": 1,
            "do_eval": False, "report_to": "none", "use_cpu": True, "preprocessing_num_workers": 1,
            "disable_tqdm": True, **extra}
    return [item for key, value in args.items() for item in (f"--{key}", str(value))]


def losses(out: Path) -> list[float]:
    """The training losses a run in ``out`` logged, step by step."""
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def max_weight_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between the saved weights of two runs (same names required)."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` (relative path) with its bytes and modification time: equal snapshots mean nothing
    was written, not even the same bytes again."""
    return {str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def launch_run_mlm(argv: list[str], out_log: Path) -> subprocess.Popen:
    """run_mlm.py with ``argv`` in its own process (to be killed or signalled), its output in ``out_log``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(REPO / "run_mlm.py"), *argv], cwd=REPO, env=env,
                            stdout=open(out_log, "w"), stderr=subprocess.STDOUT)


# --- a trainer built as run_mlm.py builds it --------------------------------------------------------------------------

TEXTS = ["the city park was known for its music and the band played the first song",
         "he released a new album , which became known in the world during the war",
         "the band played", "music"] * 4


def blocks(tokenizer) -> list[dict[str, list[int]]]:
    """TEXTS tokenized, one example each."""
    return [{"input_ids": ids} for ids in tokenizer(TEXTS)["input_ids"]]


def make_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, *extra, callbacks=()):
    """build_trainer on the tiny model with run_mlm.py's flags plus ``extra``, training and evaluating on blocks()."""
    _, _, mask_args, speed_args, *_, training_args = parse_args([
        "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path), "--report_to", "none",
        "--per_device_eval_batch_size", "4", "--per_device_train_batch_size", "4", *extra])
    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir)
    data = Dataset.from_list(blocks(tiny_tokenizer))
    return build_trainer(model, tiny_tokenizer, speed_args, mask_args, training_args, train_dataset=data,
                         eval_dataset=data, callbacks=callbacks)
