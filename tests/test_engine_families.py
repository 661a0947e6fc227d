"""The prefix engine on each architecture family it meets, against the definition (one plain forward per
full prompt): which reuse mode it settles on, and that its log-probs equal the definition's in fp32.

Every model is built here at random init (hidden 32, 2 layers) with a larger initializer range than
the default, so that a question's letters depend on tokens far back in its prompt: a wrong mask, window,
position or bias changes the log-probs by far more than the 1e-4 the tests allow (each test checks so).
Prompts are token ids: a long shared prefix and suffixes of varying length, some past the window.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import warnings

import pytest
import torch
import transformers
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    FalconConfig,
    FalconForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from evalkit.backends.hf.probe import PROBE_TOLERANCE
from evalkit.backends.hf.scorer import Scorer

VOCAB = 256
LETTERS = (10, 11, 12, 13)
WINDOW = 40
TOLERANCE = 1e-4
SMALL = dict(
    vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, initializer_range=0.2
)  # (0.02 by default: far tokens would barely move the letters)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def shared_prefix_prompts(prefix: int, longest: int, n: int = 7, seed: int = 0) -> list[list[int]]:
    """`n` prompts: one `prefix`-token head, then suffixes of 3 tokens up to `longest` prompt tokens."""
    rng = random.Random(seed)
    head = [rng.randrange(14, VOCAB) for _ in range(prefix)]
    lengths = [3, longest - prefix] + [rng.randint(3, longest - prefix) for _ in range(n - 2)]
    return [head + [rng.randrange(14, VOCAB) for _ in range(k)] for k in lengths]


def build(cls, config, attention: str = "sdpa"):
    torch.manual_seed(0)
    config._attn_implementation = attention
    return cls(config).eval()


def reference(model, seqs: list[list[int]]) -> list[torch.Tensor]:
    """The definition: one forward per full prompt, batch 1, fp32 log-softmax over the 4 letters."""
    with torch.inference_mode():
        return [
            torch.log_softmax(model(torch.tensor([s])).logits[0, -1, list(LETTERS)].float(), -1) for s in seqs
        ]


def engine_diff(scorer: Scorer, seqs: list[list[int]], ref: list[torch.Tensor]) -> float:
    """The largest |log-prob difference| between the engine and the definition over all prompts."""
    got = dict(scorer.score(seqs))
    assert sorted(got) == list(range(len(seqs)))
    return max((torch.tensor(got[i].logprobs) - ref[i]).abs().max().item() for i in range(len(seqs)))


def far_token_effect(model, seqs: list[list[int]]) -> float:
    """How much the longest prompt's letters move when one early prefix token changes (the test's teeth)."""
    longest = max(seqs, key=len)
    changed = list(longest)
    changed[WINDOW // 2] = (changed[WINDOW // 2] + 1) % VOCAB
    before, after = reference(model, [longest, changed])
    return (before - after).abs().max().item()


def scorer_for(model, **kwargs) -> Scorer:
    return Scorer(model, LETTERS, batch_tokens=4096, engine="prefix", progress=False, **kwargs)


# ---- full attention with rotary positions: packed ----


@pytest.mark.parametrize("family", ["llama", "falcon-rotary"])
def test_rotary_families_pack_exactly(family):
    if family == "llama":
        model = build(LlamaForCausalLM, LlamaConfig(**SMALL, intermediate_size=64, num_key_value_heads=2))
    else:
        model = build(FalconForCausalLM, FalconConfig(**SMALL, alibi=False))
    seqs = shared_prefix_prompts(prefix=60, longest=130)
    assert far_token_effect(model, seqs) > 10 * TOLERANCE
    scorer = scorer_for(model)
    assert engine_diff(scorer, seqs, reference(model, seqs)) <= TOLERANCE
    assert scorer.mode == "packed" and scorer.engine_used == "prefix" and scorer.fallbacks == []


# ---- sliding windows: packed, the window carried by the 4D mask ----


def mistral(window: int | None = WINDOW, attention: str = "sdpa"):
    config = MistralConfig(**SMALL, intermediate_size=64, num_key_value_heads=2, sliding_window=window)
    return build(MistralForCausalLM, config, attention)


@pytest.mark.parametrize("prefix", [30, 60], ids=["prefix-inside-window", "prefix-past-window"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_sliding_window_packs_exactly_past_the_window(prefix, attention):
    model = mistral(attention=attention)
    seqs = shared_prefix_prompts(prefix=prefix, longest=130)
    assert min(map(len, seqs)) < WINDOW * 2 < max(map(len, seqs))
    ref = reference(model, seqs)
    unwindowed = mistral(window=None, attention=attention)  # same weights (same seed), no window
    moved = [(a - b).abs().max().item() for a, b in zip(ref, reference(unwindowed, seqs), strict=True)]
    assert max(moved) > 100 * TOLERANCE
    scorer = scorer_for(model)
    assert engine_diff(scorer, seqs, ref) <= TOLERANCE
    assert scorer.mode == "packed" and scorer.window == WINDOW and scorer.fallbacks == []


@pytest.mark.parametrize("packable", [True, False], ids=["cache-of-every-position", "model-default-cache"])
def test_sliding_window_rows_mode_is_exact_too(packable):
    """Rows on the prefix cache, as the engine keeps it for packable models (every position) and as the
    model keeps it otherwise (sliding layers: the last window - 1 positions; the prefix is longer)."""
    model = mistral()
    seqs = shared_prefix_prompts(prefix=60, longest=130)
    scorer = scorer_for(model)
    scorer.candidates = ["rows"]  # what a sliding model gets with attention that takes no 4D mask
    if not packable:
        scorer.attention_kinds = {}
    assert engine_diff(scorer, seqs, reference(model, seqs)) <= TOLERANCE
    assert scorer.mode == "rows" and scorer.window == WINDOW


def test_mixed_full_and_sliding_layers_pack_exactly():
    """Qwen2 with `layer_types` [full, sliding]: each kind gets its own mask ({layer type: mask})."""
    config = Qwen2Config(
        **SMALL,
        intermediate_size=64,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=WINDOW,
        max_window_layers=1,
    )
    assert config.layer_types == ["full_attention", "sliding_attention"]
    model = build(Qwen2ForCausalLM, config)
    seqs = shared_prefix_prompts(prefix=60, longest=130)
    assert far_token_effect(model, seqs) > 10 * TOLERANCE  # the full layer sees past the window
    scorer = scorer_for(model)
    assert engine_diff(scorer, seqs, reference(model, seqs)) <= TOLERANCE
    assert scorer.mode == "packed" and scorer.attention_kinds == {
        "full_attention": None,
        "sliding_attention": WINDOW,
    }


@pytest.mark.parametrize("longest", [130, WINDOW - 5], ids=["prompts-past-window", "prompts-inside-window"])
def test_probe_rejects_a_packed_row_without_the_window(longest):
    """The mask of old (no window) packed past the window is wrong; the probe must see it, also when
    every prompt of the group is shorter than the window (it then adds a prompt that is longer)."""
    model = mistral()
    seqs = shared_prefix_prompts(prefix=20, longest=longest)
    scorer = scorer_for(model)
    scorer.attention_kinds = {"sliding_attention": None}  # the window dropped from the packed mask
    assert engine_diff(scorer, seqs, reference(model, seqs)) <= TOLERANCE
    assert scorer.mode == "rows"
    [fallback] = scorer.fallbacks
    assert fallback.mode == "packed" and fallback.reason == "disagreement"
    assert fallback.diff > PROBE_TOLERANCE.get(torch.float32, 1e-3)


# ---- ALiBi ----


def test_bloom_alibi_uses_rows_with_the_reason_recorded():
    """transformers' Bloom builds ALiBi from a 2D mask over key indices and takes no position_ids: a
    packed row cannot be exact; right-padded rows on the repeated prefix cache are."""
    model = build(
        BloomForCausalLM,
        BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, initializer_range=0.2),
        attention="eager",
    )
    seqs = shared_prefix_prompts(prefix=60, longest=130)
    assert far_token_effect(model, seqs) > 10 * TOLERANCE
    scorer = scorer_for(model)
    assert engine_diff(scorer, seqs, reference(model, seqs)) <= TOLERANCE
    assert scorer.mode == "rows" and scorer.engine_used == "prefix"
    [fallback] = scorer.fallbacks
    assert fallback.mode == "packed" and fallback.reason == "unsupported" and "ALiBi" in fallback.detail


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_falcon_alibi_uses_rows(attention):
    config = FalconConfig(**SMALL, alibi=True, new_decoder_architecture=False, multi_query=True)
    model = build(FalconForCausalLM, config, attention)
    seqs = shared_prefix_prompts(prefix=60, longest=130)
    assert far_token_effect(model, seqs) > 10 * TOLERANCE
    scorer = scorer_for(model)
    assert engine_diff(scorer, seqs, reference(model, seqs)) <= TOLERANCE
    assert scorer.mode == "rows" and [f.reason for f in scorer.fallbacks] == ["unsupported"]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_native_baichuan_alibi_packs_exactly(attention):
    """evalkit's Baichuan-13B classes derive ALiBi from position ids: packed rows are exact."""
    baichuan = pytest.importorskip("evalkit.models.baichuan.model")
    config = LlamaConfig(**SMALL, intermediate_size=64, num_key_value_heads=4, max_position_embeddings=4096)
    model = build(baichuan.BaichuanAlibiForCausalLM, config, attention)
    assert type(model).__module__ == "evalkit.models.baichuan.model"
    seqs = shared_prefix_prompts(prefix=60, longest=130)
    assert far_token_effect(model, seqs) > 10 * TOLERANCE
    scorer = scorer_for(model)
    assert engine_diff(scorer, seqs, reference(model, seqs)) <= TOLERANCE
    assert scorer.mode == "packed" and scorer.fallbacks == []


# ---- the cache argument ----


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("family", ["llama", "bloom"])
def test_no_deprecation_warning_from_our_calls(family):
    """transformers 5.24 renamed `past_key_values` to `cache` (argument and output): we use the new name
    where the forward has it, so neither its FutureWarning nor its once-only log line appears."""
    if family == "llama":
        model = build(LlamaForCausalLM, LlamaConfig(**SMALL, intermediate_size=64, num_key_value_heads=2))
    else:
        model = build(
            BloomForCausalLM,
            BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4),
            attention="eager",
        )
    seqs = shared_prefix_prompts(prefix=60, longest=100)
    records = _Records()
    transformers.utils.logging.warning_once.cache_clear()  # the log line is once per process otherwise
    transformers.utils.logging.get_logger("transformers").addHandler(records)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            scorer = scorer_for(model)
            list(scorer.score(seqs))
    finally:
        transformers.utils.logging.get_logger("transformers").removeHandler(records)
    assert scorer.engine_used == "prefix" and scorer.cache_argument in ("cache", "past_key_values")
    assert not [m for m in records.messages if "deprecated" in m], records.messages


# ---- run.json ----


def test_run_json_records_the_reuse_mode_and_fallbacks(tiny_bpe_model_dir, tiny_data_dir, tmp_path):
    """A Bloom built on the tiny BPE tokenizer, end to end: run.json names the mode (rows) and why packed
    was given up, and the backend; a run.json written before these fields existed still loads."""
    from datafiles import TINY_SUBJECTS

    from evalkit.store.saved_runs import load_run
    from run_eval import main

    model_dir = tmp_path / "bloom"
    shutil.copytree(tiny_bpe_model_dir, model_dir)
    for weights in model_dir.glob("*.safetensors"):
        weights.unlink()
    vocab = json.loads((tiny_bpe_model_dir / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    bloom = BloomForCausalLM(BloomConfig(vocab_size=vocab, hidden_size=32, n_layer=2, n_head=4))
    bloom.save_pretrained(model_dir)
    subjects = ",".join(f"mmlu/{s}" for s in TINY_SUBJECTS["mmlu"])
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--data-dir",
                str(tiny_data_dir),
                "--tasks",
                "mmlu",
                "--subjects",
                subjects,
                "--engine",
                "prefix",
                "--output-dir",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    [run_file] = out.glob("*/run.json")
    run = json.loads(run_file.read_text(encoding="utf-8"))
    assert run["engine"] == "prefix" and run["reuse_mode"] == "rows" and run["backend"] == {"backend": "hf"}
    [fallback] = run["fallbacks"]
    assert fallback["mode"] == "packed" and fallback["reason"] == "unsupported"
    assert "ALiBi" in fallback["detail"]
    saved = load_run(run_file.parent)
    assert saved.result.reuse_mode == "rows" and saved.result.fallbacks[0].reason == "unsupported"
    del run["reuse_mode"], run["fallbacks"], run["backend"]  # as written before they were recorded
    for name in ("backend", "vllm"):  # config.json before the vLLM engine's settings were recorded
        del run["config"][name]
    run_file.write_text(json.dumps(run), encoding="utf-8")
    old = load_run(run_file.parent).result
    assert old.reuse_mode is None and old.fallbacks == () and old.backend == {}
    assert old.config.backend == "hf" and old.config_hash == old.config.config_hash()
