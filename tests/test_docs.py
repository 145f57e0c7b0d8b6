"""Every command in README.md and docs/*.md parses with its program's own parser, so the docs cannot rot.

The fenced shell blocks (```bash, ```sh, ```shell, ```console) are read, ``\\`` continuations joined, and commands
split at newlines, ``&&``, ``||``, ``;`` and ``|``. A command that runs run_mlm.py or one of our scripts (directly,
or through ``torchrun``, ``python -m torch.distributed.run`` or ``accelerate launch``) has its flags parsed exactly
as its ``main`` parses them: ``main(argv)`` is called with the script's ``parse_args`` wrapped to stop right after
parsing, so nothing is read, loaded or trained. The parse runs in a fresh temporary folder, where the paths the
parse itself checks (``--add_tokens``, ``--task_dir``, ...) are created as placeholders and the repository's own
files (``examples/...``) are given by absolute path. Unknown flags, abbreviated flags, bad values and scripts that
do not exist fail, naming the file, the line and the error.

Beside that: the README's test command is the one CI runs, no README command reads the repository's test data
(``../shared``, which a clone lacks), and every link between the README and the docs pages resolves.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
from transformers import TrainingArguments
from transformers.training_args import ParallelMode

import arguments
from mlm_pretraining.errors import InputError

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_FENCES = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
LAUNCHERS = {"python", "python3", "torchrun", "accelerate", "deepspeed"}
SEPARATORS = {"&&", "||", ";", "|", "&", ";;"}
# Flags whose paths the parse itself looks at (a file read, a folder listed), whatever the program; a relative one is
# created as a placeholder before parsing (a folder when it has no extension, else a file holding one token).
CHECKED_PATH_FLAGS = {"--add_tokens", "--task_dir", "--general_text", "--mix_train_file", "--source", "--train_file",
                      "--validation_file", "--test_file", "--probe_task"}
GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Command:
    """One command of a fenced shell block: where it stands and its words, as the shell splits them."""

    page: Path
    line: int
    words: tuple[str, ...]
    syntax_error: str | None = None  # the shell could not split it (an unclosed quote)

    def where(self) -> str:
        try:
            return f"{self.page.relative_to(REPO)}:{self.line}"
        except ValueError:
            return f"{self.page}:{self.line}"


def shell_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(fence language, number of the block's first line, its lines) for every fenced shell block."""
    blocks, open_fence, lines, start, language = [], None, [], 0, ""
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if open_fence is None:
            if match:
                open_fence, language, lines, start = match.group(1), match.group(2).lower(), [], number + 1
        elif match and match.group(1).startswith(open_fence) and not match.group(2):
            if language in SHELL_FENCES:
                blocks.append((language, start, lines))
            open_fence = None
        else:
            lines.append(line)
    return blocks


def commands(page: Path, text: str | None = None) -> list[Command]:
    """The commands of ``page``'s fenced shell blocks, continuations joined; in ```console blocks only the lines
    after a ``$`` prompt."""
    text = page.read_text(encoding="utf-8") if text is None else text
    found = []
    for language, start, lines in shell_blocks(text):
        logical: list[tuple[int, str]] = []
        pending: tuple[int, str] | None = None
        for offset, line in enumerate(lines):
            number = start + offset
            if pending is None:
                stripped = line.strip()
                if language == "console":
                    if not stripped.startswith("$ "):
                        continue
                    stripped = stripped[2:]
                if not stripped or stripped.startswith("#"):
                    continue
                pending = (number, "")
                line = stripped
            if line.rstrip().endswith("\\"):
                pending = (pending[0], pending[1] + line.rstrip()[:-1] + " ")
                continue
            logical.append((pending[0], pending[1] + line))
            pending = None
        if pending is not None:
            logical.append(pending)
        for number, line in logical:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            try:
                split = [*lexer, ";"]
            except ValueError as err:
                found.append(Command(page, number, (line,), syntax_error=f"the shell cannot split it: {err}"))
                continue
            words: list[str] = []
            for word in split:
                if word in SEPARATORS:
                    if words:
                        found.append(Command(page, number, tuple(words)))
                    words = []
                else:
                    words.append(word)
    return found


def program(words: tuple[str, ...]) -> tuple[Path, list[str]] | None:
    """The .py file of ours a command runs and its arguments, or None for a command that runs none (pip, pytest,
    tensorboard, ...)."""
    words = list(words)
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # VAR=value before the command
        words.pop(0)
    if not words or Path(words[0]).name not in LAUNCHERS:
        return None
    if words[1:2] == ["-m"] and words[2:3] != ["torch.distributed.run"]:  # python -m pytest tests/test_x.py: not ours
        return None
    for index, word in enumerate(words[1:], 1):
        if word.endswith(".py") and not word.startswith("-"):
            return Path(word), words[index + 1:]
    return None


def launched_as_several_processes(words: tuple[str, ...]) -> bool:
    """Whether the command starts our program through a launcher of several processes (torchrun, accelerate launch,
    python -m torch.distributed.run, deepspeed)."""
    words = [word for word in words if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", word)]
    return bool(words) and (Path(words[0]).name in ("torchrun", "accelerate", "deepspeed")
                            or "torch.distributed.run" in words[:3])


class _Parsed(BaseException):
    """Raised by the wrapped parse_args with what it returned, so that main() stops there (a BaseException, so that
    no ``except Exception`` in a script catches it and runs on)."""

    def __init__(self, value):
        super().__init__("parsed")
        self.value = value


_MODULES: dict[Path, object] = {}


def load(script: Path):
    """The script as a module, imported once (run_mlm by its name; scripts by their path)."""
    if script not in _MODULES:
        if script == REPO / "run_mlm.py":
            _MODULES[script] = importlib.import_module("run_mlm")
        else:
            name = "docs_" + "_".join(script.relative_to(REPO).with_suffix("").parts)
            spec = importlib.util.spec_from_file_location(name, script)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses look their module up while the script is executed
            spec.loader.exec_module(module)
            _MODULES[script] = module
    return _MODULES[script]


def _placeholders(argv: list[str], folder: Path) -> list[str]:
    """``argv`` ready to parse in ``folder``: the repository's files by absolute path, and a placeholder for each
    relative path the parse itself checks (a glob, a name=path set or an absolute path is left as it is)."""
    ready, flag = [], None
    for word in argv:
        if word.startswith("--"):
            flag = word.partition("=")[0]
            ready.append(word)
            continue
        if word.startswith("examples/") and (REPO / word).exists():
            word = str(REPO / word)
        elif flag in CHECKED_PATH_FLAGS and not Path(word).is_absolute() and not GLOB.search(word) \
                and not re.match(r"^[A-Za-z_]\w*=", word):
            path = folder / word
            if not path.exists():
                if path.suffix:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("placeholder\n", encoding="utf-8")
                else:
                    path.mkdir(parents=True, exist_ok=True)
        ready.append(word)
    return ready


def _without_deepspeed(argv: list[str]) -> list[str]:
    """Without the deepspeed package TrainingArguments cannot take --deepspeed (it imports the package): the config
    is checked to be a JSON file here and the rest of the command parsed (tests/test_distributed.py parses it whole
    where deepspeed is installed)."""
    if "--deepspeed" not in argv:
        return argv
    try:
        import deepspeed  # noqa: F401
        return argv
    except ImportError:
        index = argv.index("--deepspeed")
        config = Path(argv[index + 1])
        if not config.is_file():
            raise InputError(f"--deepspeed {config}: no such file.")
        json.loads(config.read_text(encoding="utf-8"))
        return argv[:index] + argv[index + 2:]


_ARGPARSE_INIT = argparse.ArgumentParser.__init__


def _without_abbreviations(self, *args, **kwargs):
    kwargs["allow_abbrev"] = False
    _ARGPARSE_INIT(self, *args, **kwargs)


def parse_error(command: Command, folder: Path) -> str | None:
    """None when ``command`` parses with its program's own parser (or runs no program of ours), else the error."""
    if command.syntax_error:
        return command.syntax_error
    found = program(command.words)
    if found is None:
        if command.words and command.words[0].startswith("-"):
            return f"a line starting with {command.words[0]}: the line before it does not end with ' \\'"
        if len(command.words) > 1 and command.words[0] == "bash" and command.words[1].startswith("scripts/") \
                and not (REPO / command.words[1]).is_file():
            return f"no such script: {command.words[1]}"
        return None
    script, argv = found
    if script.is_absolute() or not (REPO / script).is_file():
        return f"no such script in the repository: {script}"
    module = load(REPO / script)
    if "parse_args" not in module.main.__code__.co_names:
        return f"{script}: main() does not call parse_args; this test does not know how it parses"
    folder = folder / "clone"  # so that ../ paths (the repository's test data) land inside the temporary folder
    folder.mkdir(parents=True)
    real = module.parse_args

    def parse_and_stop(*args, **kwargs):
        raise _Parsed(real(*args, **kwargs))

    def check_file(path, flag, default):  # the repository's test data may be absent where this test runs
        if Path(path) == default and not Path(default).is_file():
            return None
        return real_check_file(path, flag, default)

    real_check_file = getattr(module, "check_file", None)
    stderr = io.StringIO()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        argv = _without_deepspeed(_placeholders(argv, folder))
        with contextlib.ExitStack() as stack:
            stack.enter_context(mock.patch.object(module, "parse_args", parse_and_stop))
            if real_check_file is not None:
                stack.enter_context(mock.patch.object(module, "check_file", check_file))
            # Flags spelled in full: argparse would take a unique prefix (--gradient_accumulation), which breaks as
            # soon as another flag shares it.
            stack.enter_context(mock.patch.object(argparse.ArgumentParser, "__init__", _without_abbreviations))
            if launched_as_several_processes(command.words):  # what torchrun gives each process it starts
                stack.enter_context(mock.patch.object(TrainingArguments, "parallel_mode",
                                                      property(lambda self: ParallelMode.DISTRIBUTED)))
            if "--fp16" in argv:  # fp16 is refused without a GPU: parse as the GPU machine the command is for
                stack.enter_context(mock.patch.object(arguments, "has_gpu", lambda: True))
            stack.enter_context(contextlib.redirect_stderr(stderr))
            module.main(argv)
    except _Parsed:
        return None
    except SystemExit as exit_:  # argparse: usage and the error on stderr
        lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
        return lines[-1] if lines else f"exit status {exit_.code}"
    except (InputError, ValueError) as err:
        return str(err)
    finally:
        os.chdir(cwd)
    return f"{script}: main() returned without parsing"


ALL_COMMANDS = [command for page in PAGES for command in commands(page)]
OURS = [command for command in ALL_COMMANDS if command.syntax_error or program(command.words)
        or command.words[0].startswith("-") or command.words[0] == "bash"]


@pytest.mark.parametrize("command", OURS, ids=[command.where() for command in OURS])
def test_command_parses_with_its_programs_parser(command, tmp_path):
    error = parse_error(command, tmp_path)
    assert error is None, f"{command.where()}: {shlex.join(command.words)}\n  -> {error}"


def test_commands_are_found_in_readme_and_docs():
    """The test sees the commands it is meant to check: many run_mlm.py commands in the README, launchers and every
    script family among all of them (a parser that found none would pass every page)."""
    readme = [c for c in OURS if c.page.name == "README.md"]
    ran = {str(program(c.words)[0]) for c in OURS if program(c.words)}
    assert sum(str(program(c.words)[0]) == "run_mlm.py" for c in readme if program(c.words)) >= 8
    assert {"run_mlm.py", "scripts/prepare_corpus.py", "scripts/run_classification.py",
            "scripts/experiments/tapt_experiment.py", "scripts/benchmarks/benchmark.py"} <= ran
    assert any(c.words[0] == "torchrun" for c in readme) and any(c.words[:2] == ("accelerate", "launch")
                                                                 for c in readme)


NEGATIVE = """\
Some text.

```bash
python run_mlm.py \\
    --train_file corpus.txt \\
    --output_dir out \\
    --no_such_flag 3
```

```console
$ python run_mlm.py --output_dir out --mlm_probability 2
```

```bash
python run_mlm.py --output_dir out && python scripts/no_such_script.py --x 1
python run_mlm.py
    --output_dir out
torchrun --nproc_per_node 2 run_mlm.py --output_dir out --per_device_train_batch_size many
python run_mlm.py --output_dir out --gradient_accumulation 4
python run_mlm.py --output_dir 'out
```

```python
python run_mlm.py --not_shell 1
```
"""


def test_negative_control_reports_file_line_and_error(tmp_path):
    """A made-up page: an unknown flag, a bad value, a script that does not exist, a flag line without the ``\\``
    before it, a bad value through torchrun, an abbreviated flag and an unclosed quote are each reported with the
    file, the line and the error; the well-formed command beside them and the python block are not."""
    page = tmp_path / "made_up.md"
    found = commands(page, NEGATIVE)
    assert [(c.line, c.words[:2]) for c in found] == [
        (4, ("python", "run_mlm.py")), (11, ("python", "run_mlm.py")), (15, ("python", "run_mlm.py")),
        (15, ("python", "scripts/no_such_script.py")), (16, ("python", "run_mlm.py")), (17, ("--output_dir", "out")),
        (18, ("torchrun", "--nproc_per_node")), (19, ("python", "run_mlm.py")),
        (20, ("python run_mlm.py --output_dir 'out",))]
    assert found[0].words[-2:] == ("--no_such_flag", "3")  # the continuations were joined
    errors = {}
    for number, command in enumerate(found):
        errors[command.where(), command.words[:2]] = parse_error(command, tmp_path / str(number))
    where = str(page)
    assert "--no_such_flag" in errors[f"{where}:4", ("python", "run_mlm.py")]
    assert "mlm_probability" in errors[f"{where}:11", ("python", "run_mlm.py")]
    assert errors[f"{where}:15", ("python", "run_mlm.py")] is None
    assert "no such script" in errors[f"{where}:15", ("python", "scripts/no_such_script.py")]
    assert errors[f"{where}:16", ("python", "run_mlm.py")] is not None  # --output_dir missing: on the next line
    assert "does not end with ' \\'" in errors[f"{where}:17", ("--output_dir", "out")]
    assert "many" in errors[f"{where}:18", ("torchrun", "--nproc_per_node")]
    assert "--gradient_accumulation" in errors[f"{where}:19", ("python", "run_mlm.py")]  # a prefix, not a flag
    assert "cannot split" in errors[f"{where}:20", ("python run_mlm.py --output_dir 'out",)]
    # and the test's own message names the file and the line
    with pytest.raises(AssertionError, match=re.escape(f"{where}:4") + r".*\n.*--no_such_flag"):
        test_command_parses_with_its_programs_parser(found[0], tmp_path / "message")


def test_paths_the_parse_checks_get_placeholders(tmp_path):
    """--add_tokens is read at parse time and --task_dir listed: placeholders let a documented command parse, and the
    same command with an absolute path that does not exist is still refused (the placeholders do not hide errors)."""
    page = tmp_path / "page.md"
    text = ("```bash\npython run_mlm.py --add_tokens domain_tokens.txt --output_dir out\n"
            "python scripts/experiments/tapt_experiment.py --task_dir ../shared/data/chemprot --output_dir out\n"
            "python run_mlm.py --add_tokens /no/such/tokens.txt --output_dir out\n"
            "python run_mlm.py examples/quickstart.yaml --max_steps 5\n"
            "python -m pytest -q tests/test_docs.py\n```\n")
    first, second, third, fourth, fifth = commands(page, text)
    assert parse_error(first, tmp_path / "1") is None
    assert parse_error(second, tmp_path / "2") is None
    assert "/no/such/tokens.txt" in parse_error(third, tmp_path / "3")
    assert parse_error(fourth, tmp_path / "4") is None
    assert program(fifth.words) is None  # a module's own arguments are not a program of ours


def test_readme_setup_commands_are_the_ones_ci_runs():
    """The README's test command is exactly what CI runs (.ci/run), and its quickstart installs the same way."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("python3 -m venv")]
    assert len(ci) == 1 and ci[0] in readme.splitlines()
    quickstart = ci[0].replace("python -m pytest -q", "HF_HUB_OFFLINE=1 python run_mlm.py examples/quickstart.yaml")
    assert quickstart in readme.splitlines()


def test_readme_commands_need_nothing_a_clone_lacks():
    """No README command reads the repository's test data (../shared), which a user's clone does not have; a docs
    page whose commands do says so before its first command."""
    readme = [c for c in ALL_COMMANDS if c.page.name == "README.md"]
    assert readme and not [c.where() for c in readme if any("../shared" in word for word in c.words)]
    for page in PAGES[1:]:
        if any("../shared" in word for c in commands(page) for word in c.words):
            text = page.read_text(encoding="utf-8")
            assert "../shared/data" in text[:text.index("```")], f"{page.name}: say at the top that its commands " \
                "need the repository's test data (../shared/data), which a clone does not have"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


CODE_BLOCK = re.compile(r"^```.*?^```", flags=re.DOTALL | re.MULTILINE)
HEADING = re.compile(r"^#+ (.+)$", flags=re.MULTILINE)


def _prose(page: Path) -> str:
    """The page without its fenced blocks (a ``#`` comment in a shell block is no heading)."""
    return CODE_BLOCK.sub("", page.read_text(encoding="utf-8"))


def _anchors(page: Path) -> set[str]:
    return {_slug(match) for match in HEADING.findall(_prose(page))}


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` whose file does not exist, or whose #anchor is no heading of that file."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page)):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{page.name}: {target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{page.name}: {target} (no such heading)")
    return broken


def test_links_between_readme_and_docs_resolve():
    """Every relative link of README.md and docs/*.md names a file that exists, and its #anchor a heading there (the
    README points into the docs pages by section)."""
    broken = [link for page in PAGES for link in broken_links(page)]
    assert not broken, "\n".join(broken)


def test_broken_links_are_found(tmp_path):
    """Negative control: a missing file and a missing heading are reported; a good anchor and a web link are not."""
    page = tmp_path / "page.md"
    page.write_text("# Speed: ours, measured\n\n[a](#speed-ours-measured) [b](#nope) [c](missing.md) "
                    "[d](https://example.org/x#y)\n```bash\n# not a heading\n```\n", encoding="utf-8")
    assert broken_links(page) == ["page.md: #nope (no such heading)", "page.md: missing.md (no such file)"]
