"""Every test that starts an `nlicot` subprocess (a training run, or a CLI run that loads the model) is marked
`slow`, so `pytest -m "not slow"` (README) stays the quick subset. Read from the test sources, not from a list."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
#: A string literal that names the nlicot CLI as a subprocess module (`-m nlicot`, `module="nlicot"`).
CLI_NAMES = ("nlicot", "nlicot.export")


def _names_nlicot(fn: ast.FunctionDef) -> bool:
    """The function spells the nlicot module (an argv list or a default argument)."""
    return any(isinstance(n, ast.Constant) and n.value in CLI_NAMES for n in ast.walk(fn))


def _uses(fn: ast.FunctionDef) -> set[str]:
    """Names a function calls, refers to, or takes as fixtures."""
    names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
    return names | {a.arg for a in fn.args.args}


def _marked_slow(node: ast.AST) -> bool:
    return any("slow" in ast.unparse(d) for d in getattr(node, "decorator_list", []))


def _starting(tree: ast.Module, imported: set[str] = frozenset()) -> tuple[dict[str, ast.FunctionDef], set[str]]:
    """A module's functions, and the names of those that start nlicot (directly, or through a helper, a fixture
    or an ``imported`` helper of another module)."""
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    builders = {name for name, fn in functions.items() if _names_nlicot(fn)}
    starting = {name for name, fn in functions.items() if "subprocess." in ast.unparse(fn)
                and (name in builders or _uses(fn) & builders)} | set(imported)
    while True:  # helpers and fixtures that reach a starting function start it too
        more = {name for name, fn in functions.items() if name not in starting and _uses(fn) & starting}
        if not more:
            return functions, starting
        starting |= more


def unmarked_tests_starting_nlicot() -> list[str]:
    helpers = {path.stem: _starting(ast.parse(path.read_text()))[1] for path in TESTS.rglob("*.py")
               if not path.name.startswith(("test_", "conftest"))}  # shared helper modules (heldout_fit.py, …)
    found = []
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        module_slow = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                          and "slow" in ast.unparse(n.value) for n in tree.body)
        imported = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) and n.module in helpers
                    for a in n.names if a.name in helpers[n.module]}
        functions, starting = _starting(tree, imported)
        for name in sorted(starting & set(functions)):
            if name.startswith("test_") and not (module_slow or _marked_slow(functions[name])):
                found.append(f"{path.relative_to(TESTS)}::{name}")
    return found


def test_every_test_that_starts_nlicot_is_marked_slow() -> None:
    assert unmarked_tests_starting_nlicot() == []


def test_the_detector_sees_a_subprocess_behind_a_helper_and_a_fixture(tmp_path, monkeypatch) -> None:
    (tmp_path / "test_probe.py").write_text(
        "import subprocess, sys, pytest\n"
        "def cli(*a, module='nlicot'):\n    return subprocess.run([sys.executable, '-m', module, *a])\n"
        "@pytest.fixture\ndef trained():\n    cli('fit')\n"
        "def test_uses_fixture(trained):\n    pass\n"
        "@pytest.mark.slow\ndef test_marked():\n    cli('fit')\n"
        "def test_plain():\n    assert 1\n"
    )
    monkeypatch.setattr(__import__(__name__, fromlist=["TESTS"]), "TESTS", tmp_path)
    assert unmarked_tests_starting_nlicot() == ["test_probe.py::test_uses_fixture"]


def test_the_detector_follows_a_helper_imported_from_another_module(tmp_path, monkeypatch) -> None:
    (tmp_path / "runner.py").write_text(
        "import subprocess, sys\n"
        "def fit(*a):\n    return subprocess.run([sys.executable, '-m', 'nlicot', 'fit', *a])\n"
    )
    (tmp_path / "test_probe.py").write_text(
        "from runner import fit\n"
        "def test_unmarked():\n    fit()\n"
        "def test_plain():\n    assert 1\n"
    )
    monkeypatch.setattr(__import__(__name__, fromlist=["TESTS"]), "TESTS", tmp_path)
    assert unmarked_tests_starting_nlicot() == ["test_probe.py::test_unmarked"]
