"""The cost of `--permute cyclic` against a plain run, under the `official` scheme, on real prompts.

    python benchmarks/permute_cost.py --tasks mmlu --subjects-per-task 5

SmolLM2-135M (CPU, fp32), the first --per-subject questions of each subject. Per subject, interleaved (the
order alternates from subject to subject): the runner's engine (Scorer, engine "auto") on the plain prompts
(P) and on the four cyclic rotations of every question (R: 4x the questions, the same header and shots, so
the shared prefix is still run once and only the suffixes are multiplied). Prints R/P wall and CPU time
and the token ratios (all tokens, and tokens the packed engine runs: a question's text once for its four
rotations, since packed rows are tries). Target: R/P under 2.5x.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evalkit.backends.hf.batching import prefix_groups
from evalkit.backends.hf.forward import shared_start
from evalkit.backends.hf.scorer import Scorer
from evalkit.models.loading import load_model
from evalkit.questions.data import load_task_data
from evalkit.questions.permute import permute_subjects
from evalkit.questions.prompts import build_prompts
from evalkit.questions.tokens import count_tokens_fn, encode_prompts, letter_tokens
from tasks import get_task

SHARED = ROOT.parent / "shared"


def run_tokens(seqs: list[list[int]]) -> int:
    """Tokens the engine runs in packed mode: each prefix group's prefix once, then its suffixes as a trie
    (leading tokens shared with the lexicographic predecessor once), the rest whole."""
    groups = prefix_groups(seqs)
    grouped = {i for g in groups for i in g.members}
    total = sum(len(s) for i, s in enumerate(seqs) if i not in grouped)
    for g in groups:
        previous: list[int] = []
        total += g.prefix
        for suffix in sorted(seqs[i][g.prefix :] for i in g.members):
            total += len(suffix) - shared_start(previous, suffix)
            previous = suffix
    return total


def timed(scorer: Scorer, seqs: list[list[int]]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in scorer.score_batches(seqs):
        pass
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--data-dir", default=str(SHARED / "data"))
    parser.add_argument("--tasks", default="mmlu", help="comma list, official scheme")
    parser.add_argument("--per-subject", type=int, default=10, help="first N questions of each subject")
    parser.add_argument("--subjects-per-task", type=int, default=5, help="first N subjects of each task")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, "fp32", "cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    rows = []
    for name in args.tasks.split(","):
        task = get_task(name)
        scheme = task.schemes["official"]
        letters = letter_tokens(tokenizer, scheme.letter_rule, scheme).ids
        scorer = Scorer(model, letters, progress=False)
        subjects = [s.name for s in task.subjects][: args.subjects_per_task]
        data = load_task_data(task, args.data_dir, subjects=subjects, limit=args.per_subject)
        count = count_tokens_fn(tokenizer, scheme.bos)
        total = {"P": [0.0, 0.0, 0, 0], "R": [0.0, 0.0, 0, 0]}  # wall, cpu, tokens, run tokens
        for k, subject in enumerate(data):
            seqs = {}
            for key, permute in (("P", "none"), ("R", "cyclic")):
                [permuted] = permute_subjects(task, [subject], permute)
                prompts = build_prompts(scheme, permuted, count)
                seqs[key] = encode_prompts(tokenizer, [p.text for p in prompts], scheme.bos)
            for key in "PR" if k % 2 == 0 else "RP":
                wall, cpu = timed(scorer, seqs[key])
                for slot, value in enumerate((wall, cpu, sum(map(len, seqs[key])), run_tokens(seqs[key]))):
                    total[key][slot] += value
            print(f"{name}/{subject.subject.name}: done", file=sys.stderr, flush=True)
        rows.append(
            {
                "task": name,
                "subjects": len(data),
                "questions": sum(len(d.questions) for d in data),
                "P s": round(total["P"][0], 2),
                "R s": round(total["R"][0], 2),
                "R/P wall": round(total["R"][0] / total["P"][0], 2),
                "R/P cpu": round(total["R"][1] / total["P"][1], 2),
                "R/P tokens": round(total["R"][2] / total["P"][2], 2),
                "R/P run tokens": round(total["R"][3] / total["P"][3], 2),
            }
        )
    print(tabulate(rows, headers="keys"))
    print(f"\nmodel {args.model}, fp32, CPU, torch threads {torch.get_num_threads()}; target R/P < 2.5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
