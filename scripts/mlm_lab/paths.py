"""Where the experiments, benchmarks and tests find the repository's shared data, named once."""

from __future__ import annotations

from pathlib import Path

from mlm_pretraining.errors import InputError

REPO = Path(__file__).resolve().parents[2]
"""The repository root (mlm_lab is installed editable, from scripts/mlm_lab): where run_mlm.py and scripts/ are."""
SHARED_DATA = REPO.parent / "shared" / "data"
"""The repository's test data (WikiText-2, citation_intent, ...), kept beside the clone in ../shared/data rather than
in it (found from this file: mlm_lab is installed editable, from scripts/mlm_lab). A user's clone has no such folder:
a script whose default file lies here then fails with :func:`check_file`'s message naming the flag to give instead,
a script with a fallback (benchmark_corpus.py's shipped sample, tapt_experiment.py's optional general text) uses it,
and the tests that read it are skipped."""


def check_file(path: str, flag: str, default: Path) -> None:
    """An InputError unless ``path`` (the value of ``flag``, whose default is ``default``) is a file; when it is the
    default, the message says it is the shared data a user's clone lacks and to give ``flag``."""
    if Path(path).is_file():
        return
    if Path(path) == default and not default.is_file():
        raise InputError(f"{flag} defaults to {default}, the repository's shared test data beside the clone, which is "
                         f"not here: give {flag} with a file of your own.")
    raise InputError(f"{flag}: no such file '{path}'.")
