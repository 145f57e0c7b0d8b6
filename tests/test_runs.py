"""scripts/mlm_lab/runs.py: child runs recorded only once finished, reused, refused under other settings, and failing
as one ChildRunFailed that run_cli reports without a traceback (on tiny Python children, no model)."""

from __future__ import annotations

import json
import re
import signal
import sys

import pytest
from mlm_lab import runs

from mlm_pretraining.errors import InputError, run_cli


def child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


WRITES_MODEL = child("import pathlib; pathlib.Path('model.safetensors').write_text('w'); print('RESULT {\"f1\": 0.5}')")


def read_result(output: str) -> dict:
    return json.loads(output.split("RESULT ", 1)[1])


def test_a_run_is_recorded_once_finished_and_reused_under_its_settings(tmp_path):
    folder = tmp_path / "run"
    settings = {"learning_rate": 1e-3, "files": ("a", "b")}
    assert runs.finished(folder, settings) is None
    record = runs.run_and_record(WRITES_MODEL, folder, settings, read_result, outputs=("*.safetensors",), cwd=folder)
    assert record["result"] == {"f1": 0.5} and record["seconds"] > 0
    assert runs.finished(folder, settings) == json.loads((folder / runs.FINISHED_FILE).read_text()) == \
        json.loads(json.dumps(record))  # the tuple is a list once read back, and still the same settings
    assert 'RESULT {"f1": 0.5}' in (folder / runs.LOG_FILE).read_text()
    with pytest.raises(InputError, match=re.escape(f"{folder} holds a finished stock run with other settings "
                                                   "(--learning_rate); give another --output_dir")):
        runs.finished(folder, {**settings, "learning_rate": 2e-3}, "stock")


def test_a_run_without_its_outputs_is_not_finished_and_another_settings_rerun_is_refused(tmp_path):
    folder = tmp_path / "run"
    flags = ["--output_dir", str(folder), "--learning_rate", "1e-3"]
    # Exit 0, a result, but no model: as a run_mlm.py stopped before saving one would leave its all_results.json.
    with pytest.raises(runs.ChildRunFailed, match=r"exited 0 but left no \*\.safetensors"):
        runs.run_and_record(child("print('RESULT {}')"), folder, flags, read_result, outputs=("*.safetensors",))
    assert not (folder / runs.FINISHED_FILE).exists()
    assert runs.finished(folder, flags) is None  # same settings: rerun it (run_mlm.py resumes its checkpoint)
    with pytest.raises(InputError, match=r"holds a stopped run with other settings \(--learning_rate\)"):
        runs.finished(folder, ["--output_dir", str(folder), "--learning_rate", "5e-4"])


def test_a_failed_child_raises_one_error_naming_command_folder_log_and_its_last_lines(tmp_path):
    folder = tmp_path / "run"
    command = child("import sys; print('\\n'.join(f'line {i}' for i in range(30))); "
                    "sys.exit('train.py: error: --train_file: no such file')")
    with pytest.raises(runs.ChildRunFailed) as info:
        runs.run_and_record(command, folder, {}, read_result)
    message = str(info.value)
    assert isinstance(info.value, InputError)  # what run_cli reports as a message
    assert message.startswith(f"-c failed (exit status 1), running in {folder}.")
    assert f"log: {folder / runs.LOG_FILE}" in message and "import sys" in message  # the command, quoted
    assert message.endswith("    line 29\n    train.py: error: --train_file: no such file")
    assert "line 18" not in message and "    line 19" in message  # the last 12 lines, not the whole output
    assert not (folder / runs.FINISHED_FILE).exists()


@pytest.mark.parametrize("code, status", [("import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
                                           "exit status -15, SIGTERM"),
                                          ("import sys; sys.exit(128 + 15)", "exit status 143, SIGTERM"),
                                          ("import sys; sys.exit(2)", "exit status 2)")])
def test_the_exit_status_names_the_signal(tmp_path, code, status):
    with pytest.raises(runs.ChildRunFailed, match=re.escape(status)):
        runs.run_child(child(code), tmp_path)


def test_run_cli_reports_a_failed_child_as_one_message_without_a_traceback(tmp_path, capsys):
    command = child("import sys; sys.exit('child.py: error: the child says why')")
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: runs.run_child(command, tmp_path), "parent.py")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("parent.py: error: -c failed (exit status 1)")
    assert err.rstrip().endswith("child.py: error: the child says why") and "Traceback" not in err


def test_the_log_keeps_every_attempt_and_echo_shows_the_output(tmp_path, capsys):
    runs.run_child(child("print('first attempt')"), tmp_path)
    assert capsys.readouterr().out == ""
    output, _ = runs.run_child(child("print('second attempt')"), tmp_path, echo=True)
    assert output == "second attempt\n" and capsys.readouterr().out == "second attempt\n"
    log = (tmp_path / runs.LOG_FILE).read_text()
    assert log.count("=== ") == 2 and log.index("first attempt") < log.index("second attempt")


def test_a_missing_result_line_is_a_failure(tmp_path):
    command = child("print('no result here')")
    output, _ = runs.run_child(command, tmp_path)
    with pytest.raises(runs.ChildRunFailed, match=r"exited 0 without its result line \(RESULT\)(.|\n)*no result here"):
        runs.result_line(output, "RESULT ", command, tmp_path)
    assert runs.result_line("x\nRESULT {\"a\": 1}\n", "RESULT ", command, tmp_path) == {"a": 1}


def test_differences_name_the_changed_flags():
    assert runs.differences(["--a", "1", "--b", "x", "y"], ["--a", "2", "--b", "x", "y"]) == ["--a"]
    assert runs.differences(["--a", "1"], ["--a", "1", "--c", "z"]) == ["--c"]
    assert runs.differences({"lr": 1, "seed": 2}, {"lr": 1, "seed": 3}) == ["--seed"]
    assert runs.differences(["--a", "1", "--b", "x", "y"], ["--b", "x", "y", "--a", "1"]) == []  # order: no matter
    assert runs.differences(["--b", "x", "y"], ["--b", "y", "x"]) == ["--b"]  # a flag's own values: in order


def test_a_signal_name_is_given_only_for_signal_statuses():
    assert runs.exit_status(-signal.SIGKILL) == "exit status -9, SIGKILL"
    assert runs.exit_status(130) == "exit status 130, SIGINT"
    assert runs.exit_status(1) == "exit status 1"
