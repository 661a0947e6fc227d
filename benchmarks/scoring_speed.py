"""Scoring speed: the engine (shared-prefix KV reuse) against one plain forward per prompt, on real prompts.

    python benchmarks/scoring_speed.py                          # every subject, 10 questions each, 1 thread
    python benchmarks/scoring_speed.py --subjects-per-task 2    # a quick look

SmolLM2-135M (CPU, fp32), the official prompts of MMLU (test), C-Eval (val) and CMMLU (test), 5-shot (and
with --tasks agieval,gaokao AGIEval's 1/3/5-shot and Gaokao's zero-shot official prompts),
the first --per-subject questions of every subject, all in one process, interleaved per subject (the
order of the three rotates from subject to subject so that drift in machine speed spreads evenly):
  A  one plain forward per full prompt, batch 1, full logits: the definition, and the reference
  C  plain batched forwards of the full prompts, no prefix reuse (Scorer engine="plain")
  B  the engine (Scorer engine="prefix"), with the letters' full-vocabulary mass (the default)
  N  the engine without the mass (Scorer mass=False): B/N is the mass computation's cost
Prints two work ratios of A to B: tokens run, and multiply-accumulates counted analytically for a
llama-style decoder (linear layers, attention over each token's context, the vocabulary projection
where logits are read; B ideal: each prefix once, then each suffix over it, logits at its last token
only). An exact engine can beat the MAC ratio only by running faster per MAC than A. Then
questions/s, the speed ratios B/A and B/C (median over subjects, and overall = total time ratio),
B's and C's prediction agreement with A and their max |log-prob difference|, peak RSS and the torch
thread count. Targets: B/A >= 5, B/C >= 3, 100% agreement; B/N close to 1 (the mass is one logsumexp per
question). `--mass-only` times B and N alone (interleaved), for a quick look at the mass's cost.
Timings are wall clock; the CPU-time ratios beside them are steadier on a shared machine.
"""

from __future__ import annotations

import argparse
import functools
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evalkit.backends.hf.batching import prefix_groups
from evalkit.backends.hf.scorer import Scorer
from evalkit.models.loading import load_model
from evalkit.questions.data import load_task_data
from evalkit.questions.prompts import build_prompts
from evalkit.questions.tokens import count_tokens_fn, encode_prompts, letter_tokens
from tasks import get_task

SHARED = ROOT.parent / "shared"
Scores = list[list[float]]


def reference(model, seqs: list[list[int]], letters: tuple[int, ...]) -> Scores:
    """A: one forward per prompt, full logits, fp32 log-softmax over the four letters at the last token."""
    with torch.inference_mode():
        return [
            torch.log_softmax(model(torch.tensor([s])).logits[0, -1, list(letters)].float(), -1).tolist()
            for s in seqs
        ]


def llama_macs(config, seqs: list[list[int]], groups: list[tuple[int, list[int]]]) -> tuple[int, int]:
    """Multiply-accumulates of A (every prompt whole, logits everywhere) and of an ideal B (groups'
    prefixes once, suffixes attending to them, logits at last tokens) for a llama-style decoder."""
    hidden, inter = config.hidden_size, config.intermediate_size
    kv = (
        hidden
        // config.num_attention_heads
        * (getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    )
    per_token = hidden * (2 * hidden + 2 * kv) + 3 * hidden * inter  # q, o, k, v projections; gated MLP

    def run(start: int, stop: int, logits: int) -> int:
        """Positions start..stop-1 given the cache of 0..start-1; QK and AV cost hidden MACs per key."""
        attention = hidden * (stop * (stop + 1) - start * (start + 1))
        return (
            config.num_hidden_layers * ((stop - start) * per_token + attention)
            + logits * config.vocab_size * hidden
        )

    a = sum(run(0, len(s), len(s)) for s in seqs)
    grouped = {i for _, members in groups for i in members}
    b = sum(
        run(0, prefix, 0) + sum(run(prefix, len(seqs[i]), 1) for i in members) for prefix, members in groups
    )
    return a, b + sum(run(0, len(s), 1) for i, s in enumerate(seqs) if i not in grouped)


def engine_scores(scorer: Scorer, seqs: list[list[int]]) -> Scores:
    found = dict(scorer.score(seqs))
    return [list(found[i].logprobs) for i in range(len(seqs))]


def pred(scores: list[float]) -> int:
    return max(range(4), key=lambda i: (scores[i], -i))  # ties to the lowest index, as the runner does


def timed(run: Callable[[], Scores]) -> tuple[Scores, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    scores = run()
    return scores, time.perf_counter() - wall, time.process_time() - cpu


def subject_rows(args: argparse.Namespace, model, tokenizer) -> list[dict]:
    """One record per subject: times and scores of A, C and B."""
    records = []
    for name in args.tasks.split(","):
        task = get_task(name)
        scheme = task.schemes["official"]
        letters = letter_tokens(tokenizer, scheme.letter_rule, scheme).ids
        engine = Scorer(model, letters, batch_tokens=args.batch_tokens, engine="prefix", progress=False)
        plain = Scorer(model, letters, batch_tokens=args.batch_tokens, engine="plain", progress=False)
        massless = Scorer(
            model, letters, batch_tokens=args.batch_tokens, engine="prefix", progress=False, mass=False
        )
        subjects = [s.name for s in task.subjects][: args.subjects_per_task]
        for k, data in enumerate(
            load_task_data(task, args.data_dir, subjects=subjects, limit=args.per_subject, scheme=scheme)
        ):
            prompts = build_prompts(scheme, data, count_tokens_fn(tokenizer, scheme.bos), scheme.shots)
            seqs = encode_prompts(tokenizer, [p.text for p in prompts], scheme.bos)
            runs = {
                "A": functools.partial(reference, model, seqs, letters),
                "C": functools.partial(engine_scores, plain, seqs),
                "B": functools.partial(engine_scores, engine, seqs),
                "N": functools.partial(engine_scores, massless, seqs),
            }
            keys = "BN" if args.mass_only else "ACBN"
            order = keys[k % len(keys) :] + keys[: k % len(keys)]
            groups = prefix_groups(seqs)
            shared = sum((len(members) - 1) * prefix for prefix, members in groups)
            record = {
                "task": name,
                "subject": data.subject.name,
                "n": len(seqs),
                "tokens": sum(map(len, seqs)),
                "shared": shared,
                "macs": llama_macs(model.config, seqs, groups),
                **{key: timed(runs[key]) for key in order},
            }
            record["engine"] = f"{engine.engine_used} ({engine.mode})"  # e.g. "prefix (packed)"
            records.append(record)
            times = " ".join(f"{key} {record[key][1]:.1f}s" for key in keys)
            print(
                f"{name}/{data.subject.name}: {len(seqs)} q, {times} ({record['engine']})",
                file=sys.stderr,
                flush=True,
            )
    return records


def mass_summary(label: str, records: list[dict]) -> dict:
    """The mass computation's cost: the engine with it (B) against without it (N), same scores."""
    n = sum(r["n"] for r in records)
    wall = {key: sum(r[key][1] for r in records) for key in "BN"}
    cpu = {key: sum(r[key][2] for r in records) for key in "BN"}
    same = all(got == ref for r in records for got, ref in zip(r["B"][0], r["N"][0]))
    return {
        "set": label,
        "subjects": len(records),
        "questions": n,
        **{f"{key} q/s": round(n / wall[key], 2) for key in "BN"},
        "B/N time median": round(statistics.median(r["B"][1] / r["N"][1] for r in records), 3),
        "B/N time overall": round(wall["B"] / wall["N"], 3),
        "B/N cpu": round(cpu["B"] / cpu["N"], 3),
        "same log-probs": same,
    }


def summary(label: str, records: list[dict]) -> dict:
    """Throughputs, speed ratios, agreement and log-prob differences over some subjects."""
    n, tokens = sum(r["n"] for r in records), sum(r["tokens"] for r in records)
    wall = {key: sum(r[key][1] for r in records) for key in "ACB"}
    cpu = {key: sum(r[key][2] for r in records) for key in "ACB"}
    pairs = {key: [(got, ref) for r in records for got, ref in zip(r[key][0], r["A"][0])] for key in "CB"}
    return {
        "set": label,
        "subjects": len(records),
        "questions": n,
        "A/B tokens": round(tokens / (tokens - sum(r["shared"] for r in records)), 2),
        "A/B MACs": round(sum(r["macs"][0] for r in records) / sum(r["macs"][1] for r in records), 2),
        **{f"{key} q/s": round(n / wall[key], 2) for key in "ACB"},
        "B/A median": round(statistics.median(r["A"][1] / r["B"][1] for r in records), 2),
        "B/A overall": round(wall["A"] / wall["B"], 2),
        "B/C median": round(statistics.median(r["C"][1] / r["B"][1] for r in records), 2),
        "B/C overall": round(wall["C"] / wall["B"], 2),
        "B/A cpu": round(cpu["A"] / cpu["B"], 2),
        "B/C cpu": round(cpu["C"] / cpu["B"], 2),
        **{f"{key} agree": f"{sum(pred(got) == pred(ref) for got, ref in pairs[key])}/{n}" for key in "BC"},
        **{
            f"{key} max|d|": max(abs(x - y) for got, ref in pairs[key] for x, y in zip(got, ref))
            for key in "BC"
        },
    }


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and every default in --help."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--model",
        default=str(SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"),
        help="model file or directory, loaded by evalkit at fp32 on CPU",
    )
    parser.add_argument("--data-dir", default=str(SHARED / "data"), help="the official benchmark files")
    parser.add_argument(
        "--tasks", default="mmlu,ceval,cmmlu", help="comma list (agieval, gaokao too), official scheme"
    )
    parser.add_argument("--per-subject", type=int, default=10, help="first N questions of each subject")
    parser.add_argument(
        "--subjects-per-task", type=int, default=None, help="first N subjects of each task; omitted: all"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads, fixed for all three")
    parser.add_argument(
        "--batch-tokens", type=int, default=None, help="Scorer token budget; omitted: sized for the device"
    )
    parser.add_argument(
        "--mass-only", action="store_true", help="time only the engine with (B) and without (N) the mass"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, "fp32", "cpu")
    records = subject_rows(args, loaded.model, loaded.tokenizer)
    masses = [mass_summary(t, [r for r in records if r["task"] == t]) for t in args.tasks.split(",")]
    masses.append(mass_summary("all", records))
    print(tabulate(masses, headers="keys", floatfmt=".3g"))
    if args.mass_only:
        return 0
    rows = [summary(t, [r for r in records if r["task"] == t]) for t in args.tasks.split(",")]
    rows.append(summary("all", records))
    print(tabulate(rows, headers="keys", floatfmt=".3g"))
    engines = sorted({r["engine"] for r in records})
    print(
        f"\nmodel {args.model}, fp32, CPU, torch threads {torch.get_num_threads()}, "
        f"engine used: {', '.join(engines)}, "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )
    overall = rows[-1]
    met = (
        overall["B/A overall"] >= 5
        and overall["B/C overall"] >= 3
        and overall["B agree"] == f"{overall['questions']}/{overall['questions']}"
    )
    print(
        f"targets (B/A >= 5, B/C >= 3, 100% agreement): {'met' if met else 'NOT met'}; "
        f"B ran at {overall['B/A overall'] / overall['A/B MACs']:.0%} of A's speed per MAC"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
