"""Ctrl-C outside a run's scoring: a real SIGINT sent to this process at a chosen point of `sweep` (between
precisions) and of `bench` (between variants), one line and exit 130, and the sweep's rerun resumes.

(Ctrl-C mid-scoring is sent to a real `eval` process in test_faults.py.)
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from datafiles import write_data_dir

import evalkit.bench.hf_bench
import evalkit.bench.runs
import evalkit.models.loading
from evalkit.bench.schema import BenchSettings
from evalkit.store.interrupt import Interrupted
from run_eval import main


@pytest.fixture(autouse=True)
def sigint_handler_restored() -> Iterator[None]:
    """A Ctrl-C makes evalkit ignore the next one (the process is ending); pytest's own handler comes back."""
    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)


def ctrl_c_on_call(real: Callable, call: int) -> Callable:
    """`real`, except that its `call`-th call sends this process a real SIGINT first."""
    calls = []

    def wrapper(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGINT)  # Python raises KeyboardInterrupt at its next instruction
        return real(*args, **kwargs)

    return wrapper


def test_ctrl_c_between_precisions_names_the_finished_runs_and_the_rerun_resumes(
    tiny_spm_model_dir, tmp_path, capsys, monkeypatch
):
    data = write_data_dir(tmp_path / "data", "mmlu", {"anatomy": 4})
    out = tmp_path / "out"
    args = [
        "sweep",
        "--model",
        str(tiny_spm_model_dir),
        "--data-dir",
        str(data),
        "--subjects",
        "mmlu/anatomy",
    ]
    args += ["--precision", "fp32,bf16", "--output-dir", str(out), "--no-progress"]
    real = evalkit.models.loading.load_model
    monkeypatch.setattr(evalkit.models.loading, "load_model", ctrl_c_on_call(real, 2))
    assert main(args) == 130
    err = capsys.readouterr().err
    (fp32,) = [p.parent for p in out.glob("*_fp32_*/run.json")]
    assert err.strip().splitlines()[-1] == (
        f"interrupted while loading the model at bf16: 1 of 2 runs are finished (the last in {fp32}); "
        "rerun the same command to resume"
    )
    assert "Traceback" not in err
    monkeypatch.setattr(evalkit.models.loading, "load_model", real)
    assert main(args) == 0
    finished = sorted(p.parent for p in out.glob("*/run.json"))
    assert len(finished) == 2 and fp32 in finished
    timings = json.loads((fp32 / "run.json").read_text(encoding="utf-8"))["timings"]
    assert timings["resumed_questions"] == 4  # nothing of fp32 was scored twice


def test_ctrl_c_in_bench_says_nothing_was_written(tiny_spm_model_dir, tmp_path, monkeypatch):
    settings = BenchSettings(
        new_tokens=4, prompt_tokens=4, batch_sizes=(1,), repeats=1, warmup=0, threads=1, probe_bytes=2**20
    )
    real = evalkit.bench.hf_bench.load_model
    monkeypatch.setattr(evalkit.bench.hf_bench, "load_model", ctrl_c_on_call(real, 2))
    with pytest.raises(Interrupted) as caught:
        evalkit.bench.runs.run_bench([str(tiny_spm_model_dir)], ["fp32", "bf16"], settings)
    assert str(caught.value) == (
        "interrupted: bench stopped after 1 of 2 model x precision variants; its table and files are "
        "written only once every variant is measured, so nothing was written: rerun the same command to "
        "measure again"
    )


def test_ctrl_c_elsewhere_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import evalkit.store.saved_runs

    real = evalkit.store.saved_runs.find_runs
    monkeypatch.setattr(evalkit.store.saved_runs, "find_runs", ctrl_c_on_call(real, 1))
    assert main(["report", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "interrupted; rerun the same command to start again"


def test_the_run_directory_line_counts_valid_saved_questions(tmp_path):
    from builders import question

    from evalkit.store.interrupt import interrupted_message

    lines = [question(i).to_json() for i in range(3)] + ['{"id": 7}', question(0).to_json()]
    (tmp_path / "questions.jsonl").write_text("\n".join(lines) + "\n" + '{"id": "to', encoding="utf-8")
    (tmp_path / "questions.shard-1.jsonl").write_text(question(5).to_json() + "\n", encoding="utf-8")
    assert interrupted_message(Path(tmp_path), 9) == (
        f"interrupted: 4 of 9 questions are saved in {tmp_path}; rerun the same command to resume"
    )
