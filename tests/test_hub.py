"""--push_to_hub, offline: huggingface_hub's repository creation and folder upload are intercepted, and the test checks
what would have been uploaded: one upload, at the end, of the folder the user has (the model with the base's pooler,
our card with its model-index, the results and the training-curve PNG), file for file."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
from huggingface_hub.utils import filter_repo_objects
from safetensors import safe_open

import run_mlm
from conftest import write_season_corpus

REPO_ID = "someone/tiny-mlm"


@pytest.fixture
def hub(monkeypatch) -> list[dict]:
    """The uploads a run makes, each as {path in the repository: what the file held at upload time}; no network.
    HfApi.upload_folder is the public call both our push and the Trainer's use; the files it sends are those of
    folder_path its allow/ignore patterns select (huggingface_hub.utils.filter_repo_objects, its own filter)."""
    uploads: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kwargs):
        folder = Path(folder_path)
        paths = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
        files = {}
        for path in filter_repo_objects(paths, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            if path.endswith(".safetensors"):
                with safe_open(folder / path, framework="pt") as handle:
                    files[path] = sorted(handle.keys())
            elif path == "README.md":
                files[path] = (folder / path).read_text(encoding="utf-8")
            else:
                files[path] = (folder / path).stat().st_size
        uploads.append({"repo_id": repo_id, "files": files, "message": kwargs.get("commit_message")})
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/0", commit_message="",
                          commit_description="", oid="0" * 40)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return uploads


def local_files(folder: Path) -> set[str]:
    """What the user has in ``folder``: every file but the checkpoints (resuming state, not the model)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and not p.relative_to(folder).parts[0].startswith(("checkpoint-", "_"))}


def test_push_uploads_the_finished_folder_once_with_pooler_card_and_results(hub, headless_model_dir, tmp_path):
    """A head-less base (a pooler, no MLM head) trained with two named evaluation sets and --push_to_hub: one
    commit, made after everything was written, holding exactly the local folder; its model has the base's pooler, its
    card parses with huggingface_hub.ModelCard and lists perplexity and accuracy for each set."""
    corpus = write_season_corpus(tmp_path)
    (tmp_path / "general").mkdir()
    general = write_season_corpus(tmp_path / "general", first="the river ran through the city park .")
    out = tmp_path / "out"
    run_mlm.main(["--model_name_or_path", str(headless_model_dir), "--train_file", str(corpus),
                  "--validation_file", f"domain={corpus}", f"general={general}", "--output_dir", str(out),
                  "--max_steps", "4", "--save_steps", "2", "--max_seq_length", "32", "--report_to", "none",
                  "--preprocessing_num_workers", "1", "--push_to_hub", "--hub_model_id", REPO_ID])

    assert len(hub) == 1, "one push, at the end (hub_strategy end: no push per checkpoint)"
    files = hub[0]["files"]
    assert hub[0]["repo_id"] == REPO_ID
    assert set(files) == local_files(out)
    assert {"model.safetensors", "README.md", "all_results.json", "training_curves.png", "config.json",
            "tokenizer.json"} <= set(files)
    assert "bert.pooler.dense.weight" in files["model.safetensors"]  # added before the push
    card = files["README.md"]
    assert card == (out / "README.md").read_text(encoding="utf-8")  # ours, not transformers' automatic card
    assert "## How to use" in card and "generated_from_trainer" in card

    results = ModelCard(card).data.eval_results
    found = {(r.dataset_name, r.metric_type): r for r in results}
    assert set(found) == {(name, metric) for name in ("domain", "general") for metric in ("perplexity", "accuracy")}
    measured = run_mlm_results(out)
    for name in ("domain", "general"):
        assert found[(name, "perplexity")].metric_value == pytest.approx(measured[f"eval_{name}_perplexity"],
                                                                         abs=1e-4)
        assert found[(name, "accuracy")].metric_value == pytest.approx(measured[f"eval_{name}_accuracy"], abs=1e-4)
        assert found[(name, "perplexity")].task_type == "fill-mask"
        assert found[(name, "perplexity")].dataset_type == "train.txt"  # the set's file


def run_mlm_results(out: Path) -> dict:
    import json

    return json.loads((out / "all_results.json").read_text())


def test_without_push_to_hub_nothing_is_uploaded(hub, tiny_model_dir, tmp_path):
    """The negative control: the same interception sees no commit when --push_to_hub is not given."""
    run_mlm.main(["--model_name_or_path", str(tiny_model_dir), "--train_file", str(write_season_corpus(tmp_path)),
                  "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--max_seq_length", "32",
                  "--report_to", "none", "--do_eval", "False", "--preprocessing_num_workers", "1"])
    assert hub == []


def test_a_failed_push_is_retried_by_rerunning_the_command_without_training_again(hub, tiny_model_dir, tmp_path,
                                                                                   monkeypatch, caplog):
    """The upload fails (no network): the run ends with one message naming the flag, the saved model and the fix, no
    traceback. The same command then pushes the finished folder once without training, and once pushed a further
    rerun uploads nothing."""
    from helpers import snapshot

    from mlm_pretraining.errors import InputError

    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(tiny_model_dir), "--train_file", str(write_season_corpus(tmp_path)),
            "--output_dir", str(out), "--max_steps", "2", "--max_seq_length", "32", "--report_to", "none",
            "--do_eval", "False", "--preprocessing_num_workers", "1", "--push_to_hub", "--hub_model_id", REPO_ID]
    working_upload = HfApi.upload_folder

    def no_network(self, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(HfApi, "upload_folder", no_network)
    with pytest.raises(InputError, match=rf"--push_to_hub: uploading {out} to {REPO_ID} failed \(ConnectionError: "
                                         r"Name or service not known\)\. The trained model is saved there; rerun the "
                                         r"same command to push it"):
        run_mlm.main(argv)
    assert (out / "model.safetensors").is_file() and hub == []
    trained = snapshot(out)

    monkeypatch.setattr(HfApi, "upload_folder", working_upload)
    with caplog.at_level("INFO", logger="mlm_pretraining.run_mlm"):
        run_mlm.main(argv)
    assert len(hub) == 1 and set(hub[0]["files"]) == local_files(out)
    assert "Nothing to do" in caplog.text and f"It was not pushed to {REPO_ID} yet" in caplog.text
    assert {path: v for path, v in snapshot(out).items() if path != "_hub_push.json"} == trained  # not trained again

    run_mlm.main(argv)
    assert len(hub) == 1  # pushed already: nothing to upload
