"""The import graph, drawn from the code: no circle, and every import points down the layers (docs/design.md).

Every ``import`` counts, at the top of a module, inside a function or under ``TYPE_CHECKING``: a lazy import that
climbs back up is still a circle in the design, only hidden from Python.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "mlm_pretraining"

# Lowest first. A module may import modules of lower layers, and modules of its own sub-package (acyclically).
LAYERS = (
    ("errors", (f"{PACKAGE}.errors",)),
    ("leaves", ("collators", f"{PACKAGE}.constants", f"{PACKAGE}.files", f"{PACKAGE}.logs",
                f"{PACKAGE}.internals", f"{PACKAGE}.flag_values", f"{PACKAGE}.hardware")),
    ("arguments", ("arguments",)),
    ("data, model, speed", (f"{PACKAGE}.data", f"{PACKAGE}.model", f"{PACKAGE}.speed")),
    ("training parts, reporting", (f"{PACKAGE}.budget", f"{PACKAGE}.callbacks", f"{PACKAGE}.metrics",
                                   f"{PACKAGE}.checkpoints", f"{PACKAGE}.probe", f"{PACKAGE}.reporting")),
    ("trainers", (f"{PACKAGE}.trainer", f"{PACKAGE}.classification")),
    ("entry points", ("run_mlm", "scripts")),
    ("lab", ("mlm_lab",)),
    ("experiments and benchmarks", ("scripts.experiments", "scripts.benchmarks")),
)


def module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    parts = relative.parts
    if parts[:2] == ("scripts", "mlm_lab"):
        parts = parts[1:]  # installed as mlm_lab
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    files = [REPO / "run_mlm.py", REPO / "arguments.py", REPO / "collators.py", *REPO.glob(f"{PACKAGE}/**/*.py"),
             *REPO.glob("scripts/**/*.py")]
    return {module_name(path): path for path in files}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Our modules that ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    found.discard(module_name(path))
    return found


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the prefix that placed it): the longest matching prefix wins."""
    if module == PACKAGE:  # its __init__ holds a docstring only
        return 0, PACKAGE
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (index, prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to docs/design.md)")
    return best


def graph() -> dict[str, set[str]]:
    modules = our_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in sorted(edges.items()):
        here, home = layer_of(module)
        for target in sorted(targets):
            there, target_home = layer_of(target)
            if there > here or (there == here and target_home != home):
                wrong.append(f"{module} ({LAYERS[here][0]}) imports {target} ({LAYERS[there][0]})")
    return wrong


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_circle():
    assert circles(graph()) == []


def test_every_import_points_down_the_layers():
    assert upward_imports(graph()) == []


def test_the_library_holds_no_experiment_or_benchmark_code():
    edges = graph()
    library = [m for m in edges if m.startswith(PACKAGE)]
    assert not [m for m in library if any(t.startswith(("mlm_lab", "scripts")) for t in edges[m])]
    assert not any((REPO / PACKAGE).rglob("*profil*")) and not any((REPO / PACKAGE).rglob("*interval*"))


@pytest.mark.parametrize("edges, wrong", [
    ({"arguments": {"mlm_pretraining.data.sources"}, "mlm_pretraining.data.sources": set()},
     "arguments (arguments) imports mlm_pretraining.data.sources (data, model, speed)"),
    ({"mlm_pretraining.data.text": {"mlm_pretraining.model.loading"}, "mlm_pretraining.model.loading": set()},
     "mlm_pretraining.data.text (data, model, speed) imports mlm_pretraining.model.loading (data, model, speed)"),
])
def test_the_checks_see_an_upward_import_and_a_circle(edges, wrong):
    """Negative controls: the rules fire on a graph that breaks them."""
    assert upward_imports(edges) == [wrong]
    assert circles({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}}) == [["a.x", "a.y", "a.z", "a.x"]]
