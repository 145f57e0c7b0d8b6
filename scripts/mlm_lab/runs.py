"""Child runs of the experiments and benchmarks: a command in its own process (fresh memory, its own logging), its
output kept in a log, its result reused once it has finished, its record written atomically.

A run's folder holds:
  run.log        the child's output (stdout and stderr), each attempt appended after a header line;
  started.json   the settings the run was launched with, written before the child starts;
  finished.json  its settings, result and wall-clock seconds, written only after the child exited 0 with its expected
                 outputs in place. A run counts as finished when, and only when, this file exists: a child's own
                 files may be written early (run_mlm.py writes all_results.json at its before-training evaluation) or
                 half (a run stopped by a signal), so none of them can tell.

A folder launched with other settings is refused, finished or not: its results would be mislabelled, and rerunning an
unfinished one would continue the other settings' training (run_mlm.py resumes from the checkpoint in its folder).
"""

from __future__ import annotations

import codecs
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mlm_lab.paths import REPO

from mlm_pretraining.errors import InputError
from mlm_pretraining.files import write_text_atomically

LOG_FILE = "run.log"
STARTED_FILE = "started.json"
FINISHED_FILE = "finished.json"
RESULTS_FILE = "all_results.json"  # what run_mlm.py and run_classification.py write last: their scores
ERROR_LINES = 12  # the child's last lines quoted when it fails: a traceback's tail, or run_cli's one-line error


class ChildRunFailed(InputError):
    """A child run exited non-zero, or without its expected outputs. An InputError, so that a script's run_cli reports
    it as one message: the child has reported its own error (quoted here from its log), and the parent's traceback
    stacked under it would only bury it."""

    def __init__(self, command: list[str], folder: Path, why: str, output: str):
        self.command, self.folder, self.log = command, Path(folder), Path(folder) / LOG_FILE
        last = "\n".join(f"    {line}" for line in last_lines(output))
        super().__init__(f"{Path(command[1]).name if len(command) > 1 else command[0]} {why}, running in {folder}.\n"
                         f"  command: {shlex.join(command)}\n  log: {self.log}\n  its last lines:\n{last}")


def last_lines(output: str, count: int = ERROR_LINES) -> list[str]:
    """The last ``count`` non-blank lines of ``output``, each as a terminal shows it (the text after its last
    carriage return: progress bars redraw their line)."""
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in output.splitlines()]
    return [line for line in lines if line.strip()][-count:]


def _normalised(settings):
    return json.loads(json.dumps(settings))  # as read back from a record: tuples become lists


def _as_flags(settings) -> dict:
    """Settings as {flag: value}: a dict's keys, or a command line's --flags with the values that follow each (their
    order does not change a run)."""
    if isinstance(settings, dict):
        return {f"--{key}": value for key, value in settings.items()}
    flags, current = {}, None
    for item in settings:
        if item.startswith("--"):
            current = item
            flags[current] = []
        else:
            flags.setdefault(current, []).append(item)
    return flags


def differences(recorded, settings) -> list[str]:
    """The flags whose values differ between two settings (dicts, or flag lists as run_mlm.py takes them); none when
    they are the same settings."""
    old, new = _as_flags(_normalised(recorded)), _as_flags(_normalised(settings))
    return sorted(str(flag) for flag in old.keys() | new.keys() if old.get(flag) != new.get(flag))


def finished(folder: Path, settings, what: str = "") -> dict | None:
    """The record ({'settings', 'result', 'seconds'}) of the run that finished in ``folder`` with these ``settings``,
    or None when none has; an InputError when the folder holds a run, finished or not, launched with others."""
    folder = Path(folder)
    started, done = folder / STARTED_FILE, folder / FINISHED_FILE
    recorded = json.loads(done.read_text()) if done.is_file() else None
    launched = recorded["settings"] if recorded else json.loads(started.read_text()) if started.is_file() else None
    changed = differences(launched, settings) if launched is not None else []
    if changed:
        state = "finished" if recorded else "stopped"
        raise InputError(f"{folder} holds a {state} {what + ' ' if what else ''}run with other settings "
                         f"({', '.join(changed)}); give another --output_dir for these settings, or delete that "
                         "folder to rerun it.")
    return recorded


def run_child(command: list[str], folder: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None,
              echo: bool = False) -> tuple[str, float]:
    """Run ``command`` with its output appended to folder/run.log (and copied to stdout as it comes, with ``echo``);
    its output and wall-clock seconds. A ChildRunFailed, quoting its last lines, when it exits non-zero."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / LOG_FILE
    # The child writes to the file itself, not through a pipe: if this process is killed (a scheduler's SIGTERM
    # reaches both), the child still finishes its step and saves its checkpoint instead of failing on a broken pipe.
    with open(log, "ab") as sink:
        sink.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n".encode())
        sink.flush()
        begin = sink.tell()
        start = time.time()
        # Unbuffered, so the log (and the echo) follow the child as it runs, not in blocks of 8 kB.
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=cwd,
                                   env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"})
    try:
        if echo:
            _follow(log, begin, process)
        process.wait()
    except KeyboardInterrupt:  # the child got the same Ctrl-C: let it save its checkpoint and stop first
        process.wait()
        raise
    seconds = time.time() - start
    output = log.read_bytes()[begin:].decode("utf-8", errors="replace")
    if process.returncode != 0:
        raise ChildRunFailed(command, folder, f"failed ({exit_status(process.returncode)})", output)
    return output, seconds


def _follow(log: Path, begin: int, process: subprocess.Popen) -> None:
    """Copy what the child writes to ``log`` from ``begin`` on to stdout, until it exits."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open(log, "rb") as source:
        source.seek(begin)
        while process.poll() is None:
            sys.stdout.write(decoder.decode(source.read()))
            sys.stdout.flush()
            time.sleep(0.2)
        sys.stdout.write(decoder.decode(source.read(), final=True))


def exit_status(code: int) -> str:
    """A child's exit status in words, naming the signal that ended it: -N (killed by N) or 128 + N (a shell's, and
    run_mlm.py's after its graceful stop)."""
    number = -code if code < 0 else code - 128 if code > 128 else 0
    try:
        return f"exit status {code}, {signal.Signals(number).name}"
    except ValueError:
        return f"exit status {code}"


def result_line(output: str, prefix: str, command: list[str], folder: Path) -> dict:
    """The JSON object on the output's line starting with ``prefix`` (how a child hands its result back)."""
    for line in output.splitlines():
        if line.startswith(prefix):
            return json.loads(line[len(prefix):])
    raise ChildRunFailed(command, folder, f"exited 0 without its result line ({prefix.strip()})", output)


def run_and_record(command: list[str], folder: Path, settings, read_result: Callable[[str], dict], *,
                   outputs: tuple[str, ...] = (), env: dict[str, str] | None = None, cwd: Path | None = None,
                   echo: bool = False) -> dict:
    """Run ``command`` (:func:`run_child`) for a run of ``settings`` in ``folder``; once it has exited 0 and every
    pattern of ``outputs`` (globs in ``folder``, e.g. '*.safetensors') matches a file, record {'settings', 'result':
    read_result(output), 'seconds'} atomically in folder/finished.json and return it. The seconds are those of this
    attempt: an earlier, stopped one's are not known."""
    folder = Path(folder)
    record_start(folder, settings)
    output, seconds = run_child(command, folder, env=env, cwd=cwd, echo=echo)
    missing = [pattern for pattern in outputs if not any(folder.glob(pattern))]
    if missing:
        raise ChildRunFailed(command, folder, f"exited 0 but left no {', '.join(missing)}", output)
    return record(folder, settings, read_result(output), seconds)


def run_entry_point(script: str, flags: list[str], folder: Path, settings, *, echo: bool = False,
                    cwd: Path | None = None) -> dict:
    """Run one of the repository's entry points (``script`` relative to its root: run_mlm.py,
    scripts/run_classification.py) with ``flags`` and record it (:func:`run_and_record`) once it has exited 0 leaving
    a model (*.safetensors) and its all_results.json in ``folder``, which is its result."""
    folder = Path(folder)
    return run_and_record([sys.executable, str(REPO / script), *flags], folder, settings,
                          lambda output: json.loads((folder / RESULTS_FILE).read_text()),
                          outputs=("*.safetensors", RESULTS_FILE), echo=echo, cwd=cwd)


def record_start(folder: Path, settings) -> None:
    """Record the settings a run in ``folder`` is launched with (:func:`finished` checks them before any rerun)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_text_atomically(Path(folder) / STARTED_FILE, json.dumps(settings))


def record(folder: Path, settings, result: dict, seconds: float | None) -> dict:
    """Record the run in ``folder`` as finished (atomically: a reader sees no record or a whole one); the record."""
    finished_run = {"settings": settings, "result": result, "seconds": seconds}
    write_text_atomically(Path(folder) / FINISHED_FILE, json.dumps(finished_run))
    return finished_run
