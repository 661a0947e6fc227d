"""benchmarks/device_check.py end to end on the CPU: a tiny fp32 model, real MMLU files from ../shared.

One subprocess run of `--device cpu --quick`, as the device machine runs it (the repository on sys.path,
nothing of evalkit installed needed): every section printed, the JSON written, the engines agreeing
within fp32 rounding, and none of the packages that machine lacks imported. No timing assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what the device machine does not have (torch, transformers, accelerate and their dependencies only)
ABSENT_THERE = (
    "pandas",
    "tabulate",
    "matplotlib",
    "gguf",
    "wcwidth",
    "scipy",
    "datasets",
    "bitsandbytes",
    "sentencepiece",
    "vllm",
)
OURS = ("evalkit", "tasks", "__main__")  # the script (run as __main__) and the modules it reaches
# runs the script as the device machine would, recording which module imports any of ABSENT_THERE
# (transformers imports some where they are installed, scipy here, and they import themselves: not ours)
RUN = """
import builtins, json, runpy, sys
absent, importers, plain_import = set(json.loads(sys.argv[2])), set(), builtins.__import__
def record(name, globals=None, *args, **kwargs):
    if name.partition(".")[0] in absent:
        importers.add((name.partition(".")[0], (globals or {}).get("__name__", "?")))
    return plain_import(name, globals, *args, **kwargs)
builtins.__import__ = record
sys.argv = ["benchmarks/device_check.py", *json.loads(sys.argv[1])]
try:
    runpy.run_path("benchmarks/device_check.py", run_name="__main__")
except SystemExit as exit:
    assert not exit.code, exit.code
print("IMPORTERS " + json.dumps(sorted(importers)))
"""


@pytest.fixture(scope="module")
def quick_run(shared_data, tmp_path_factory):
    """(stdout, the JSON figures) of one quick CPU run."""
    out = tmp_path_factory.mktemp("device-check")
    argv = [
        "--device",
        "cpu",
        "--quick",
        "--per-subject",
        "8",
        "--data-dir",
        str(shared_data),
        "--out",
        str(out),
    ]
    done = subprocess.run(
        [sys.executable, "-c", RUN, json.dumps(argv), json.dumps(ABSENT_THERE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads((out / "device_check.json").read_text())


def test_every_section_is_printed_in_order(quick_run):
    stdout, _ = quick_run
    sections = ["== plan ==", "== scoring:", "== all of MMLU", "== tokens/s (evalkit.bench) =="]
    positions = [stdout.find(section) for section in sections]
    assert -1 not in positions, stdout
    assert positions == sorted(positions)
    assert "torch " in stdout and "transformers " in stdout


def test_engines_agree_with_one_forward_per_prompt_in_fp32(quick_run):
    _, figures = quick_run
    scoring = figures["scoring"]
    rows = {row["engine"]: row for row in scoring["rows"]}
    assert list(rows) == ["A", "C", "B@1024", "B@4096"]  # the quick packed-row sizes, today's 1024 among them
    assert scoring["modes"]["B"] == "prefix (packed)"  # B really reused prefixes in packed rows
    for row in rows.values():
        assert row["agree"] == f"{scoring['questions']}/{scoring['questions']}"
        assert row["max|d|"] < 1e-4
        assert len(row["rounds s"]) == figures["settings"]["repeats"]
        assert row["MMLU s"] > 0


def test_prompts_have_realistic_lengths(quick_run):
    """The trained tokenizer fits Llama's vocabulary and gives prompts of a real tokenizer's length."""
    _, figures = quick_run
    assert figures["tokenizer_entries"] <= 32000
    per_question = figures["scoring"]["prompt_tokens"] / figures["scoring"]["questions"]
    assert 300 < per_question < 2048  # abstract algebra ~370, European history ~1800 (cut at 2048)


def test_tokens_per_second_section_comes_from_the_bench(quick_run):
    _, figures = quick_run
    (row,) = figures["bench"]  # --quick: batch 1
    assert row["batch_size"] == 1 and row["new_tokens"] == 32
    assert row["bound_tok_s"] > 0 and row["bandwidth"]["gb_s"] > 0


def test_nothing_the_device_machine_lacks_is_imported(quick_run):
    stdout, _ = quick_run
    importers = json.loads(stdout.rsplit("IMPORTERS ", 1)[1])
    ours = [(package, module) for package, module in importers if module.partition(".")[0] in OURS]
    assert ours == []
