"""Data-parallel evaluation under `accelerate launch` (two CPU processes, gloo) on the tiny real model."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from datafiles import write_data_dir
from support_cli import eval_args

from run_eval import main

RUN_EVAL = str(Path(__file__).resolve().parents[1] / "run_eval.py")
SUBJECTS = {"ceval": ("accountant", "law", "logic"), "mmlu": ("anatomy", "astronomy")}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(processes: int, args: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        RUN_EVAL,
        *args,
    ]


def results_by_task(out: Path) -> dict[str, dict[str, dict]]:
    found = {}
    for run_json in out.glob("*/run.json"):
        run = json.loads(run_json.read_text(encoding="utf-8"))
        lines = (run_json.parent / "questions.jsonl").read_text(encoding="utf-8").splitlines()
        rows = {row["id"]: row for row in map(json.loads, lines)}
        assert len(rows) == len(lines), f"a question was written twice in {run_json.parent}"
        assert not list(run_json.parent.glob("questions.shard-*")), "shard files left behind"
        found[run["config"]["task"]] = rows
    return found


def assert_same_results(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for task, rows in expected.items():
        assert got[task].keys() == rows.keys(), task
        for qid, row in rows.items():
            assert got[task][qid]["pred"] == row["pred"], qid
            assert got[task][qid]["logprobs"] == pytest.approx(row["logprobs"], abs=1e-5), qid


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dp_data")
    for task, names in SUBJECTS.items():
        write_data_dir(root, task, {name: 40 + 10 * i for i, name in enumerate(names)})
    return root


@pytest.fixture(scope="module")
def single_process(tiny_spm_model_dir, data_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("single")
    assert main(eval_args(tiny_spm_model_dir, data_dir, out, subjects=SUBJECTS)) == 0
    return results_by_task(out)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_two_processes_gather_the_single_process_results(
    tiny_spm_model_dir, data_dir, single_process, tmp_path
):
    done = subprocess.run(
        launch_command(2, eval_args(tiny_spm_model_dir, data_dir, tmp_path, subjects=SUBJECTS)),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_results(results_by_task(tmp_path), single_process)
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in tmp_path.glob("*/run.json")]
    assert {run["environment"]["processes"] for run in runs} == {2}
    assert done.stdout.count("## C-Eval") == 1, "only the main process prints the tables"


def test_a_killed_two_process_run_resumes_with_one_process(
    tiny_spm_model_dir, data_dir, single_process, tmp_path
):
    # small batches: many appends, so the kill lands mid-run
    args = eval_args(tiny_spm_model_dir, data_dir, tmp_path, "--batch-tokens", "64", subjects=SUBJECTS)
    job = subprocess.Popen(
        launch_command(2, args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        written = sum(len(p.read_bytes().splitlines()) for p in tmp_path.glob("*/questions*.jsonl"))
        if written >= 8:
            break
        time.sleep(0.02)
    # kill -9 every process of the launch, mid-write or not (torchrun starts its workers in sessions of
    # their own, so the launcher's process group does not hold them)
    launched = [job.pid, *(child.pid for child in psutil.Process(job.pid).children(recursive=True))]
    for pid in launched:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    job.wait()
    for pid in launched:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(timeout=30)
    assert written >= 8, "the launched run wrote no questions before the deadline"
    assert not list(tmp_path.glob("*/run.json")) or len(list(tmp_path.glob("*/run.json"))) < len(SUBJECTS), (
        "the run finished before it could be killed"
    )
    assert main(args) == 0  # resume with a different number of processes: one
    assert_same_results(results_by_task(tmp_path), single_process)
    resumed = [
        json.loads(p.read_text(encoding="utf-8"))["timings"]["resumed_questions"]
        for p in tmp_path.glob("*/run.json")
    ]
    assert sum(resumed) > 0
