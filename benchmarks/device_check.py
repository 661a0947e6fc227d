"""GPU check (issue 16): the HF scorer's engines and the tokens/s bench on a random Llama-2-7B-shaped model.

    python benchmarks/device_check.py --data-dir .device/data --out .device/out    # est. 2-3 min, H200
    python benchmarks/device_check.py --data-dir .device/data --quick              # est. ~1 min
    python benchmarks/device_check.py --device cpu --quick                         # tiny fp32, ~15 s here

Needs only torch, transformers and accelerate (evalkit need not be installed: the repository is put on
sys.path) and no network. --data-dir holds mmlu/{dev,test}/ of the official layout (a few subjects are
enough). A random-init LlamaForCausalLM of Llama-2-7B's shape is built directly on the device (bf16 on
CUDA); --layers shrinks it, the CPU default is a tiny shape in fp32. Random weights give arbitrary
answers, but the engines score the same model on the same prompts, so agreement stays meaningful.
Tokenizer: no hub there, so a byte-level BPE is trained on the subjects' own text at start (seconds),
its vocabulary sized by bisection until the 5-shot prompts have CHARS_PER_TOKEN characters per token,
Llama-2's density on English (an estimate; --tokenizer DIR reads a real one instead).
Sections, in order: plan; scoring (questions/s of
  A  one forward per prompt (batch 1, last-token logits only): the reference
  C  Scorer engine="plain": right-padded batches of full prompts, no prefix reuse
  B@N Scorer engine="prefix" with packed rows of N suffix tokens (hf.PACK_TOKENS, 1024 today on GPUs)
interleaved, the order rotating per round, medians over rounds; top-letter agreement with A and max
|log-prob difference|); the extrapolated time of all of MMLU (test, 14042 questions) at each engine's
measured rate; the tokens/s bench (evalkit.bench.hf_bench.bench_loaded: exactly N greedy tokens, decode
against the measured bandwidth bound). Every timer sits between torch.cuda.synchronize calls.

Budget (an estimate, not yet measured): the default scores 200 questions of ~1000 tokens (199k tokens);
at ~14 GFLOP per token a batch-1 pass of A is ~2.8 PFLOP, ~6-8 s on an H200 at 40-50 % of its bf16
peak, C about the same, each B 1-3 s (60k suffix tokens): ~25 s a round, 3 rounds + warm-up ~1.5 min.
HF eager decode of a 7B model is launch-bound near 30 ms a step: 4 generate pairs of 128 tokens per
batch size, ~35 s for batch sizes 1 and 16. With start-up (~20 s) ~2.5 min; no new scoring round
starts after 60 % of --budget-s (420 s), so a 3x misestimate still ends inside 8 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evalkit.backends.hf.scorer import PACK_TOKENS, Scorer  # noqa: E402
from evalkit.bench.hf_bench import bench_loaded  # noqa: E402
from evalkit.bench.schema import BenchSettings  # noqa: E402
from evalkit.bench.timing import timed  # noqa: E402
from evalkit.machine import environment  # noqa: E402
from evalkit.models.loading import LoadedModel  # noqa: E402
from evalkit.models.source import ModelSource  # noqa: E402
from evalkit.questions.data import load_task_data  # noqa: E402
from evalkit.questions.prompts import build_prompts  # noqa: E402
from evalkit.questions.tokens import count_tokens_fn, encode_prompts, letter_tokens  # noqa: E402
from evalkit.store.records import ModelInfo  # noqa: E402
from tasks import get_task  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data"
MMLU_TEST_QUESTIONS = 14042  # shared/data/README.md, measured rows of mmlu/test
LLAMA2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
}
TINY = {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 4}
VOCAB = 32000  # Llama-2's
# Llama-2's SentencePiece on English prose: ~4 characters per token (SmolLM2's 49k BPE measured 4.44 on
# these MMLU prompts; a 32k vocabulary splits words more often)
CHARS_PER_TOKEN = 4.0
SUBJECTS = "abstract_algebra,college_medicine,high_school_european_history,professional_law,world_religions"
QUICK_SUBJECTS = "abstract_algebra,high_school_european_history"
Scores = list[tuple[float, float, float, float]]


# ---- setup: tokenizer, prompts, model ----


def train_tokenizer(texts: list[str], target: float, vocab: int) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE whose vocabulary size (<= vocab) is bisected until `texts` run at `target`
    characters per token (+-3 %), with Llama's specials <unk>=0, <s>=1 (added as BOS), </s>=2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    def train(size: int) -> Tokenizer:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=size,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return tok

    chars = sum(map(len, texts))
    low, high = 1024, vocab
    for _ in range(8):
        size = (low + high) // 2
        tok = train(size)
        density = chars / sum(len(e.ids) for e in tok.encode_batch(texts))
        if abs(density / target - 1) < 0.03:
            break
        low, high = (size, high) if density < target else (low, size)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


class Prompts(NamedTuple):
    """The scored prompts and what made them."""

    subjects: list[tuple[str, list[list[int]]]]  # (subject, token ids of its official 5-shot prompts)
    tokenizer: Any
    letters: tuple[int, int, int, int]
    chars_per_token: float  # over all prompts: how realistic their lengths are


def subject_prompts(args: argparse.Namespace) -> Prompts:
    """MMLU's official 5-shot prompts of the chosen subjects, encoded by the trained (or given) tokenizer."""
    task = get_task("mmlu")
    scheme = task.schemes["official"]
    datas = load_task_data(task, args.data_dir, subjects=args.subjects.split(","), limit=args.per_subject)
    if args.tokenizer:
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.tokenizer)
    else:  # trained on the full prompts (header, shots, questions, answer cues) that will be scored
        texts = [p.text for data in datas for p in build_prompts(scheme, data, lambda text: 0)]
        tokenizer = train_tokenizer(texts, CHARS_PER_TOKEN, VOCAB)
    count = count_tokens_fn(tokenizer, scheme.bos)
    subjects, chars = [], 0
    for data in datas:
        texts = [p.text for p in build_prompts(scheme, data, count)]
        chars += sum(map(len, texts))
        subjects.append((data.subject.name, encode_prompts(tokenizer, texts, scheme.bos)))
    tokens = sum(len(s) for _, seqs in subjects for s in seqs)
    letters = letter_tokens(tokenizer, scheme.letter_rule, scheme).ids
    return Prompts(subjects, tokenizer, letters, chars / tokens)


def build_model(shape: dict, layers: int | None, dtype: torch.dtype, device: str, seed: int):
    """A random-init LlamaForCausalLM built directly on `device` in `dtype` (no CPU copy)."""
    config = transformers.LlamaConfig(
        **{**shape, **({"num_hidden_layers": layers} if layers else {})},
        vocab_size=VOCAB,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.LlamaForCausalLM._from_config(config, dtype=dtype)
    return model.eval()


# ---- the engines ----


def reference(model, seqs: list[list[int]], letters: Sequence[int]) -> Scores:
    """A: one forward per prompt, fp32 log-softmax over the four letters at its last token."""
    device, ids = model.device, list(letters)
    with torch.inference_mode():
        rows = [model(torch.tensor([s], device=device), logits_to_keep=1).logits[0, -1, ids] for s in seqs]
        return [tuple(torch.log_softmax(row.float(), -1).tolist()) for row in rows]


@contextlib.contextmanager
def pack_tokens(size: int) -> Iterator[None]:
    """Packed rows of `size` suffix tokens on every device: the dict the Scorer reads at each call."""
    saved = dict(PACK_TOKENS)
    PACK_TOKENS.update(dict.fromkeys(PACK_TOKENS, size))
    try:
        yield
    finally:
        PACK_TOKENS.update(saved)


def engine_run(scorer: Scorer, seqs: list[list[int]], pack: int | None = None) -> Scores:
    with pack_tokens(pack) if pack else contextlib.nullcontext():
        found = dict(scorer.score(seqs))
    return [found[i].logprobs for i in range(len(seqs))]


class Engines(NamedTuple):
    """The engines under test: {label: seqs -> scores} (A first, the reference) and the two Scorers."""

    runs: dict[str, Callable[[list[list[int]]], Scores]]
    plain: Scorer
    prefix: Scorer


def engines(model, letters: Sequence[int], packs: Sequence[int]) -> Engines:
    """A, C and one B per packed-row size (one prefix Scorer: its probe settles `mode` once)."""
    plain = Scorer(model, letters, engine="plain", progress=False)
    prefix = Scorer(model, letters, engine="prefix", progress=False)
    runs = {"A": lambda seqs: reference(model, seqs, letters), "C": lambda seqs: engine_run(plain, seqs)}
    for size in packs:
        runs[f"B@{size}"] = lambda seqs, size=size: engine_run(prefix, seqs, size)
    return Engines(runs, plain, prefix)


# ---- measurement ----


def scoring(args, model, subjects, letters, device: str, deadline: float) -> dict:
    """Rounds over all subjects, every engine per subject in a rotating order; per-engine medians."""
    runs, plain, prefix = engines(model, letters, args.packs)
    labels = list(runs)
    warm = subjects[0][1][: min(8, len(subjects[0][1]))]
    for label in labels:  # kernels, allocator, and the prefix Scorer's probe (it settles `mode`)
        timed(lambda label=label: runs[label](warm), device)
    seconds: dict[str, list[float]] = {label: [] for label in labels}
    scores: dict[str, dict[str, Scores]] = {label: {} for label in labels}
    for r in range(args.repeats):
        if r and time.perf_counter() > deadline:
            print(f"  time budget reached: {r} of {args.repeats} rounds", file=sys.stderr, flush=True)
            break
        total = dict.fromkeys(labels, 0.0)
        for k, (name, seqs) in enumerate(subjects):
            shift = (r * len(subjects) + k) % len(labels)
            for label in labels[shift:] + labels[:shift]:
                spent, scores[label][name] = timed(lambda label=label, seqs=seqs: runs[label](seqs), device)
                total[label] += spent
        for label in labels:
            seconds[label].append(total[label])
        print(
            f"  round {r + 1}: " + ", ".join(f"{label} {total[label]:.2f}s" for label in labels),
            file=sys.stderr,
            flush=True,
        )
    n = sum(len(seqs) for _, seqs in subjects)
    rows = []
    for label in labels:
        pairs = [
            (got, ref) for name, _ in subjects for got, ref in zip(scores[label][name], scores["A"][name])
        ]
        median = statistics.median(seconds[label])
        rows.append(
            {
                "engine": label,
                "q/s": n / median,
                "vs A": statistics.median(seconds["A"]) / median,
                "agree": f"{sum(argmax(g) == argmax(a) for g, a in pairs)}/{n}",
                "max|d|": max(abs(x - y) for g, a in pairs for x, y in zip(g, a)),
                "rounds s": seconds[label],
                "MMLU s": MMLU_TEST_QUESTIONS / (n / median),
            }
        )
    return {
        "questions": n,
        "prompt_tokens": sum(len(s) for _, seqs in subjects for s in seqs),
        "rows": rows,
        "modes": {"C": plain.engine_used, "B": f"{prefix.engine_used} ({prefix.mode})"},
        "batch_tokens": prefix.batch_tokens,
    }


def argmax(scores: Sequence[float]) -> int:
    return max(range(4), key=lambda i: (scores[i], -i))  # ties to the lowest index, as the runner does


def generation(args, model, tokenizer, device: str) -> list:
    """evalkit's tokens/s bench on the loaded model (bench_loaded: definitions in evalkit.bench.hf_bench)."""
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    info = ModelInfo(
        precision=args.dtype, quant_backend="none", dtype=str(model.dtype), weight_bytes=weight_bytes
    )
    loaded = LoadedModel(model, tokenizer, ModelSource("local", "random-llama-2-7b-shape"), info)
    settings = BenchSettings(
        new_tokens=args.new_tokens, prompt_tokens=args.prompt_tokens, repeats=args.bench_repeats
    )
    rows = []
    for batch in args.batch_sizes:
        rows.append(bench_loaded(loaded, batch, settings))
        print(f"  bench batch {batch} done", file=sys.stderr, flush=True)
    return rows


# ---- output ----


def table(rows: list[dict], keys: Sequence[str]) -> str:
    """A plain text table (no tabulate on the device machine)."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
        return str(value)

    cells = [list(keys)] + [[cell(row[k]) for k in keys] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(keys))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def bench_table(rows) -> list[dict]:
    return [
        {
            "batch": row.batch_size,
            "P": row.prompt_tokens,
            "N": row.new_tokens,
            "e2e tok/s": row.e2e_tok_s.median,
            "prefill tok/s": row.prefill_tok_s.median,
            "decode tok/s": row.decode_tok_s.median if row.decode_tok_s else "n/a",
            "bound tok/s": row.bound_tok_s,
            "of bound": f"{row.achieved_fraction:.1%}" if row.achieved_fraction is not None else "n/a",
            "GB/s": row.bandwidth.gb_s,
            "spread %": row.e2e_tok_s.spread_pct,
        }
        for row in rows
    ]


# ---- main ----


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA, help="folder holding mmlu/{dev,test}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer subjects, questions, rounds and layers")
    parser.add_argument("--subjects", help=f"comma list (default {SUBJECTS}; --quick {QUICK_SUBJECTS})")
    parser.add_argument("--per-subject", type=int, help="first N test questions (default 40; --quick 16)")
    parser.add_argument("--layers", type=int, help="decoder layers (default: the shape's; --quick on GPU 8)")
    parser.add_argument(
        "--shape", choices=("llama2-7b", "tiny"), help="default llama2-7b on CUDA, tiny on CPU"
    )
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="default bf16 on CUDA, fp32 on CPU")
    parser.add_argument(
        "--packs", help="packed-row sizes of B (default 512,1024,2048,4096; --quick 1024,4096)"
    )
    parser.add_argument("--repeats", type=int, help="scoring rounds (default 3; --quick 2)")
    parser.add_argument("--tokenizer", help="a tokenizer directory to use instead of the trained BPE")
    parser.add_argument("--batch-sizes", help="tokens/s bench batch sizes (default 1,16; --quick 1)")
    parser.add_argument("--new-tokens", type=int, help="generated tokens N (default 128; --quick 32)")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="bench prompt tokens P")
    parser.add_argument("--bench-repeats", type=int, default=3, help="timed generate pairs per batch size")
    parser.add_argument("--budget-s", type=float, default=420, help="no new scoring round after 60%% of this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write device_check.json of every figure here")
    args = parser.parse_args(argv)
    cuda, quick = args.device.startswith("cuda"), args.quick
    defaults = {
        "subjects": QUICK_SUBJECTS if quick else SUBJECTS,
        "per_subject": 16 if quick else 40,
        "layers": 8 if quick and cuda else None,
        "shape": "llama2-7b" if cuda else "tiny",
        "dtype": "bf16" if cuda else "fp32",
        "packs": "1024,4096" if quick else "512,1024,2048,4096",
        "repeats": 2 if quick else 3,
        "batch_sizes": "1" if quick else "1,16",
        "new_tokens": 32 if quick else 128,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.packs = [int(x) for x in args.packs.split(",")]
    args.batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse(argv)
    device = args.device
    shape = LLAMA2_7B if args.shape == "llama2-7b" else TINY
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]

    def progress(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    env = environment(device)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    print("== plan ==")
    print(
        f"device {device} ({env.device_name}), torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    print(
        f"model: random LlamaForCausalLM, {args.shape} shape, "
        f"layers {args.layers or shape['num_hidden_layers']}, "
        f"vocab {VOCAB}, {args.dtype}"
    )
    print(
        f"scoring: MMLU official 5-shot, subjects {args.subjects}, first {args.per_subject} test questions; "
        f"engines A, C, B@{args.packs}; {args.repeats} rounds (budget {args.budget_s:.0f} s)"
    )
    print(
        f"tokens/s: batch sizes {args.batch_sizes}, P={args.prompt_tokens}, N={args.new_tokens}, "
        f"{args.bench_repeats} repeats"
    )
    print(f"settings: {json.dumps(settings)}", flush=True)

    progress("tokenizer and prompts")
    prompts = subject_prompts(args)
    subjects, tokenizer, letters = prompts.subjects, prompts.tokenizer, prompts.letters
    progress(f"{len(tokenizer)}-entry tokenizer; building the model")
    model = build_model(shape, args.layers, dtype, device, args.seed)
    params = sum(p.numel() for p in model.parameters())
    progress(f"model built: {params / 1e9:.2f} B parameters; scoring")
    deadline = started + 0.6 * args.budget_s
    result = scoring(args, model, subjects, letters, device, deadline)
    progress("tokens/s bench")
    bench = generation(args, model, tokenizer, device)
    progress("done")

    n, tokens = result["questions"], result["prompt_tokens"]
    print(f"\n== scoring: {n} questions, {tokens} prompt tokens ({tokens / n:.0f} per question) ==")
    print(
        f"tokenizer {len(tokenizer)} entries, {prompts.chars_per_token:.2f} characters per token; "
        f"C ran {result['modes']['C']}, B ran {result['modes']['B']}, "
        f"batch_tokens {result['batch_tokens']}; medians over {len(result['rows'][0]['rounds s'])} rounds"
    )
    print(table(result["rows"], ["engine", "q/s", "vs A", "agree", "max|d|"]))
    print(f"\n== all of MMLU ({MMLU_TEST_QUESTIONS} test questions) at these rates, seconds ==")
    print(table(result["rows"], ["engine", "MMLU s"]))
    print("\n== tokens/s (evalkit.bench) ==")
    print(table(bench_table(bench), list(bench_table(bench)[0])))
    for row in bench:
        for note in row.notes:
            print(f"note (batch {row.batch_size}): {note}")
    print(
        f"\nwall {time.perf_counter() - started:.0f} s; {model.config.num_hidden_layers} layers, "
        f"{params / 1e9:.2f} B parameters"
    )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        figures = {
            "settings": settings,
            "environment": dataclasses.asdict(env),
            "parameters": params,
            "tokenizer_entries": len(tokenizer),
            "scoring": result,
            "bench": [dataclasses.asdict(row) for row in bench],
        }
        (args.out / "device_check.json").write_text(json.dumps(figures, indent=1, default=str))
        print(f"wrote {args.out / 'device_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
