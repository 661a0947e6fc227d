"""Data-parallel scaling: SmolLM2 on a real subset with 1 and with 2 processes (accelerate launch).

    python benchmarks/scale.py --subjects-per-task 2 --limit 10 --repeats 1

Runs `run_eval.py eval` A/B interleaved (1 process, then 2 under `accelerate launch --multi_gpu`,
gloo on CPU), each process with `--threads` torch threads (default 1), every repeat into a fresh
output folder. Prints questions/s of the scoring phase (from run.json: the slowest process's
scoring time), wall-clock seconds of the whole command (model loads included), the median ratio
2-proc/1-proc, and whether the two gave identical predictions. On a 2-core machine expect little
speedup: the point is the mechanism and identical results.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))

from tasks import get_task  # noqa: E402

TASKS = ("ceval", "mmlu", "cmmlu")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command(processes: int, eval_args: list[str]) -> list[str]:
    script = [str(REPO / "run_eval.py"), *eval_args]
    if processes == 1:
        return [sys.executable, *script]
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
        str(_port()),
        *script,
    ]


def run_once(processes: int, eval_args: list[str], threads: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"scale{processes}-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    subprocess.run(
        command(processes, [*eval_args, "--output-dir", str(out)]),
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    questions, scoring, preds = 0, 0.0, {}
    for run_json in out.glob("*/run.json"):
        run = json.loads(run_json.read_text(encoding="utf-8"))
        questions += run["timings"]["questions"]
        scoring += run["timings"]["scoring_seconds"]
        for line in (run_json.parent / "questions.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            preds[row["id"]] = row["pred"]
    return {"wall": wall, "qps": questions / scoring, "questions": questions, "preds": preds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--subjects-per-task", type=int, default=2, help="size flag: first N subjects of each task"
    )
    parser.add_argument("--limit", type=int, default=10, help="size flag: questions per subject")
    parser.add_argument("--repeats", type=int, default=1, help="A/B pairs (medians are quoted)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (fixed)")
    parser.add_argument("--model", default=str(SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--data-dir", default=str(SHARED / "data"))
    args = parser.parse_args()
    subjects = [f"{t}/{s.name}" for t in TASKS for s in get_task(t).subjects[: args.subjects_per_task]]
    eval_args = [
        "eval",
        "--model",
        args.model,
        "--data-dir",
        args.data_dir,
        "--tasks",
        ",".join(TASKS),
        "--subjects",
        ",".join(subjects),
        "--limit",
        str(args.limit),
        "--threads",
        str(args.threads),
        "--no-progress",
    ]
    print(
        f"threads per process: {args.threads}; subjects: {len(subjects)}; limit {args.limit}; "
        f"load average before: {os.getloadavg()[0]:.2f}"
    )
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for repeat in range(args.repeats):
        for processes in (1, 2):
            result = run_once(processes, eval_args, args.threads)
            runs[processes].append(result)
            print(
                f"repeat {repeat} processes {processes}: {result['questions']} questions, scoring "
                f"{result['qps']:.3f} q/s, wall {result['wall']:.1f} s",
                flush=True,
            )
    same = all(r["preds"] == runs[1][0]["preds"] for r in runs[1] + runs[2])
    qps = {p: statistics.median(r["qps"] for r in rs) for p, rs in runs.items()}
    wall = {p: statistics.median(r["wall"] for r in rs) for p, rs in runs.items()}
    print(
        f"median scoring q/s: 1 process {qps[1]:.3f}, 2 processes {qps[2]:.3f}, ratio {qps[2] / qps[1]:.2f}"
    )
    print(
        f"median wall s (loads included): 1 process {wall[1]:.1f}, 2 processes {wall[2]:.1f}, "
        f"ratio {wall[1] / wall[2]:.2f}"
    )
    print(f"identical predictions across all runs: {same}")


if __name__ == "__main__":
    main()
