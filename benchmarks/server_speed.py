"""Questions/s of `--backend server` (one local vLLM server over HTTP) vs the in-process vLLM backend.

    python benchmarks/server_speed.py --subjects abstract_algebra,astronomy --limit 20 --repeats 3

Needs the vLLM environment (.ci/vllm builds one). Dequantizes ../shared's SmolLM2-135M GGUF once into a
model directory both engines read, builds evalkit's own 5-shot prompts (official scheme), starts a vLLM
OpenAI-compatible server on 127.0.0.1 (a subprocess, tests/support_server.VllmServer) and an in-process
engine (evalkit.backends.vllm.scorer.VllmScorer), both with `--threads` CPU threads, then scores the same
questions A/B interleaved `--repeats` times, each engine's prefix cache emptied before its repeat. The
server backend scores all subjects at once (ServerScorer.score_subjects, subject-affine), the in-process
one subject by subject as the runner does. Prints questions/s of each, their medians and ratio, the
agreement, and the client's own share of the server run's wall time: the CPU seconds this process
spent (HTTP, JSON, threads, renormalisation) over the wall seconds (target: under 5%).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # support_server: the tests' server launcher

from shared_scoring import agreement, prompts  # noqa: E402  (beside this script)


def run_server(scorer, subjects) -> tuple[float, float, dict]:
    """(wall seconds, this process's CPU seconds, {(subject, index): scores}) of one server run."""
    wall, cpu = time.perf_counter(), time.process_time()
    got = {}
    for batch in scorer.score_subjects(subjects, [range(len(s)) for s in subjects]):
        got.update({(item.subject, item.index): item.scores for item in batch})
    return time.perf_counter() - wall, time.process_time() - cpu, got


def run_in_process(scorer, subjects) -> tuple[float, dict]:
    started, got = time.perf_counter(), {}
    for s, seqs in enumerate(subjects):
        got.update({(s, i): scores for i, scores in scorer.score(seqs)})
    return time.perf_counter() - started, got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, default=SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--data-dir", type=Path, default=SHARED / "data")
    parser.add_argument("--task", default="mmlu")
    parser.add_argument("--subjects", default="abstract_algebra,astronomy")
    parser.add_argument("--limit", type=int, default=20, help="questions per subject (the size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each engine")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight to the server")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    key_env = "EVALKIT_BENCH_SERVER_KEY"
    os.environ[key_env] = "bench-" + os.urandom(8).hex()  # a throwaway key: the server runs as in production

    import http.client

    import torch
    from support_server import START_TIMEOUT_S, VllmServer
    from transformers import AutoTokenizer

    from evalkit.backends.server.loader import load_for_run
    from evalkit.backends.server.scorer import ServerScorer
    from evalkit.backends.vllm.engine import VllmSettings, dequantize_gguf, load_vllm
    from evalkit.backends.vllm.scorer import VllmScorer
    from evalkit.types import ServerSettings

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="server-speed-"))
    model_dir = dequantize_gguf(args.gguf, work / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    named, letters = prompts(tokenizer, args.task, args.data_dir, args.subjects.split(","), args.limit)
    subjects = [seqs for _, seqs in named]
    questions = sum(map(len, subjects))
    tokens = sum(len(p) for seqs in subjects for p in seqs)

    started = time.perf_counter()
    server = VllmServer(
        model_dir, work / "server.log", api_key=os.environ[key_env], max_model_len=4096, threads=args.threads,
        dev_mode=True,
    )  # fmt: skip
    try:
        server.wait_ready(time.monotonic() + START_TIMEOUT_S)
        server_start = time.perf_counter() - started
        settings = ServerSettings(base_urls=(server.url,), api_key_env=key_env, concurrency=args.concurrency)
        served = load_for_run(str(model_dir), settings, "fp32").model
        started = time.perf_counter()
        engine_settings = VllmSettings(
            precision="fp32", max_model_len=4096, enforce_eager=True, kv_cache_memory_bytes=1 << 30
        )
        llm = load_vllm(model_dir, engine_settings)
        engine_start = time.perf_counter() - started
        print(
            f"{args.task} {args.subjects}: {questions} questions, {tokens} prompt tokens; {args.threads} "
            f"thread(s) per engine, {os.cpu_count()} CPUs here, server concurrency {args.concurrency}; "
            f"start: server {server_start:.1f} s, in-process vLLM {engine_start:.1f} s"
        )

        def reset_server_cache() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            conn.request("POST", "/reset_prefix_cache", headers={"Authorization": f"Bearer {server.api_key}"})
            status = conn.getresponse().status
            conn.close()
            if status != 200:
                raise RuntimeError(f"/reset_prefix_cache answered {status}")

        rates: dict[str, list[float]] = {"server": [], "vllm": []}
        shares, results = [], {}
        for repeat in range(args.repeats):
            reset_server_cache()
            scorer = ServerScorer(served, letters)
            wall, cpu, results["server"] = run_server(scorer, subjects)
            rates["server"].append(questions / wall)
            shares.append(cpu / wall)
            llm.reset_prefix_cache()
            seconds, results["vllm"] = run_in_process(
                VllmScorer(llm, letters, settings=engine_settings), subjects
            )
            rates["vllm"].append(questions / seconds)
            print(
                f"repeat {repeat + 1}: server {rates['server'][-1]:.2f} q/s (client CPU {cpu:.2f} s of "
                f"{wall:.2f} s wall: {100 * cpu / wall:.1f}%), in-process vLLM {rates['vllm'][-1]:.2f} q/s"
            )
    finally:
        server.kill()

    ratios = [a / b for a, b in zip(rates["server"], rates["vllm"], strict=True)]
    print(
        f"median q/s: server {statistics.median(rates['server']):.2f}, in-process vLLM "
        f"{statistics.median(rates['vllm']):.2f}; median ratio server/in-process "
        f"{statistics.median(ratios):.2f}; "
        f"client share of the server run's wall time: median {100 * statistics.median(shares):.1f}%"
    )
    print(agreement(results["server"], results["vllm"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
