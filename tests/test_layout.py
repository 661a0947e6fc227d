"""The package's shape, read from its import graph (no timing): arrows point down the data flow.

- `report/` and `stats/` never import torch (they read saved runs);
- `run/` imports nothing from `report/`; nothing in the library imports the CLI (`evalkit.cli`);
- no import cycle among evalkit's modules or among tasks/;
- outside `evalkit/backends/`, no module compares a backend's name (the registry dispatches);
- `--help` of every subcommand and an argument error import none of torch, transformers, scipy, pandas,
  matplotlib (checked on sys.modules in a fresh interpreter).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "scipy", "pandas", "matplotlib")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside functions (a lazy import is still an arrow)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _graph(package: str) -> dict[str, set[str]]:
    files = sorted((ROOT / package).rglob("*.py"))
    modules = {_module_name(f): f for f in files}
    return {name: {m for m in _imports(path) if m in modules} for name, path in modules.items()}


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported when the file is imported (module level, not inside functions or TYPE_CHECKING)."""
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among module-level imports, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _module_level_graph(package: str) -> dict[str, set[str]]:
    files = sorted((ROOT / package).rglob("*.py"))
    modules = {_module_name(f): f for f in files}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _top_level_imports(path):
            # `from evalkit.x import y` imports evalkit.x (and its parents' __init__ are not edges here)
            if imported in modules and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


@pytest.mark.parametrize("layer", ["evalkit/report", "evalkit/stats"])
def test_report_and_stats_never_import_torch(layer):
    for path in sorted((ROOT / layer).rglob("*.py")):
        torch_imports = {m for m in _imports(path) if m.split(".")[0] in ("torch", "transformers")}
        assert not torch_imports, f"{path.relative_to(ROOT)} imports {torch_imports}"


def test_arrows_point_down_the_data_flow():
    graph = _graph("evalkit")
    for module, targets in graph.items():
        if module.startswith("evalkit.run"):
            assert not {t for t in targets if t.startswith("evalkit.report")}, f"{module} imports report/"
        if not module.startswith("evalkit.cli"):
            assert not {t for t in targets if t.startswith("evalkit.cli")}, f"{module} imports the CLI"
        if module.startswith(("evalkit.stats", "evalkit.store", "evalkit.questions")):
            upward = {t for t in targets if t.startswith(("evalkit.report", "evalkit.run", "evalkit.cli"))}
            assert not upward, f"{module} imports {upward}"


@pytest.mark.parametrize("package", ["evalkit", "tasks"])
def test_no_import_cycle(package):
    assert _cycle(_module_level_graph(package)) is None


def test_no_backend_name_compared_outside_the_registry():
    """`backend == "vllm"`-style branches live only in evalkit/backends/ (the plugins and their code)."""
    names = set(
        json.loads(_run("from evalkit.backends import BACKENDS; import json; print(json.dumps(BACKENDS))"))
    )
    offenders = []
    for path in sorted((ROOT / "evalkit").rglob("*.py")):
        if "backends" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                literal = any(isinstance(s, ast.Constant) and s.value in names for s in sides)
                backend = any("backend" in ast.unparse(s) and "quant" not in ast.unparse(s) for s in sides)
                if literal and backend:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, offenders


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["eval", "--help"],
        ["sweep", "--help"],
        ["report", "--help"],
        ["compare", "--help"],
        ["bench", "--help"],
        ["list", "--help"],
        ["eval", "--model", "m", "--shots", "-1"],
    ],
)
def test_help_and_argument_errors_import_nothing_heavy(argv):
    code = (
        "import contextlib, io, json, sys\n"
        "from evalkit.cli import build_parser\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "    try:\n"
        f"        build_parser().parse_args({argv!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    assert json.loads(_run(code)) == []


def test_run_eval_is_a_shim():
    assert len((ROOT / "run_eval.py").read_text(encoding="utf-8").splitlines()) <= 40
