"""The installed package: the `evalkit` console command is the CLI of `python run_eval.py`."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_console_command_is_declared_for_the_cli() -> None:
    """The console command is the CLI package's main, the same that run_eval.py (a shim) calls."""
    import run_eval
    from evalkit.cli import main

    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts.get("evalkit") == "evalkit.cli:main"
    assert run_eval.main is main


def test_console_command_runs_like_the_script(tmp_path: Path) -> None:
    command = Path(sys.executable).parent / "evalkit"
    if not command.is_file():
        pytest.skip(f"evalkit is not installed in this environment ({command}): pip install -e .")
    installed = subprocess.run(
        [str(command), "list", "--tasks", "mmlu"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    script = subprocess.run(
        [sys.executable, str(ROOT / "run_eval.py"), "list", "--tasks", "mmlu"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert installed.returncode == script.returncode == 0, installed.stderr
    assert installed.stdout == script.stdout and "abstract_algebra" in installed.stdout
