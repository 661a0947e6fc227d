"""The scoring engine against the definition: one plain forward per full prompt, log-softmax over 4 letters.

Tiny real llamas (fixtures in conftest) with real tokenizers; prompts are built inline in the official
layouts (header + shots + question), with different shot counts and two subjects so that grouping,
packing, padding and the fallbacks all run.
"""

from __future__ import annotations

import inspect
import logging
import random

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    PreTrainedTokenizerFast,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from evalkit.backends.hf.batching import prefix_groups
from evalkit.backends.hf.scorer import Scorer
from evalkit.questions.tokens import count_tokens_fn, encode_prompts, letter_tokens
from evalkit.types import EvalkitError, Scheme

MMLU = Scheme(
    name="official",
    header="",
    example="",
    shot_answer=" {letter}\n\n",
    answer_cue="Answer:",
    letter_rule="in_context",
    aggregation="micro",
)
CEVAL = Scheme(
    name="official",
    header="",
    example="",
    shot_answer="{letter}\n\n",
    answer_cue="答案：",
    letter_rule="in_context",
    aggregation="macro",
)
WORDS = [
    "which",
    "of",
    "these",
    "is",
    "true",
    "false",
    "answer",
    "question",
    "model",
    "value",
    "number",
    "law",
    "history",
    "physics",
    "the",
    "following",
    "about",
    "abstract",
    "algebra",
    "anatomy",
]


def _row(rng: random.Random) -> tuple[str, list[str], str]:
    question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))).capitalize() + "?"
    choices = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in range(4)]
    return question, choices, rng.choice("ABCD")


def _example(row: tuple[str, list[str], str], cue: str) -> str:
    question, (a, b, c, d), _ = row
    return f"{question}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\n{cue}"


def mmlu_prompts(subject: str, n: int, shots: int, seed: int) -> list[str]:
    """hendrycks layout: header (two spaces after "about"), `shots` dev shots, then the question."""
    rng = random.Random(seed)
    dev = [_row(rng) for _ in range(5)]
    header = (
        "The following are multiple choice questions (with answers) about"
        + "".join(" " + w for w in subject.split("_"))
        + ".\n\n"
    )
    body = "".join(_example(r, "Answer:") + f" {r[2]}\n\n" for r in dev[:shots])
    return [header + body + _example(_row(rng), "Answer:") for _ in range(n)]


def ceval_prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    dev = [_row(rng) for _ in range(5)]
    body = "".join(_example(r, "答案：") + f"{r[2]}\n\n" for r in dev)
    return [
        "以下是中国关于会计考试的单项选择题，请选出其中的正确答案。\n\n"
        + body
        + _example(_row(rng), "答案：")
        for _ in range(n)
    ]


def mixed_prompts() -> list[str]:
    """Two subjects, one with some 3-shot prompts (as a length policy makes): three prefix groups."""
    return (
        mmlu_prompts("abstract_algebra", 7, 5, seed=1)
        + mmlu_prompts("anatomy", 5, 5, seed=2)
        + mmlu_prompts("abstract_algebra", 3, 3, seed=1)[:3]
        + ["Which is true?\nAnswer:"]
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bpe(tiny_bpe_model_dir):
    return (
        AutoTokenizer.from_pretrained(tiny_bpe_model_dir),
        AutoModelForCausalLM.from_pretrained(tiny_bpe_model_dir).eval(),
    )


@pytest.fixture(scope="module")
def spm(tiny_spm_model_dir):
    return (
        AutoTokenizer.from_pretrained(tiny_spm_model_dir),
        AutoModelForCausalLM.from_pretrained(tiny_spm_model_dir).eval(),
    )


@pytest.fixture(scope="module")
def mixed(bpe):
    """The mixed prompts on the BPE model: token ids, MMLU letter ids, and the reference log-probs."""
    tokenizer, model = bpe
    seqs = encode_prompts(tokenizer, mixed_prompts(), "tokenizer_default")
    letters = letter_tokens(tokenizer, "in_context", MMLU).ids
    return seqs, letters, reference(model, seqs, letters)


def reference(model, seqs: list[list[int]], letters: tuple[int, ...]) -> list[torch.Tensor]:
    """The definition: one forward per full prompt, batch 1, full logits, fp32 log-softmax over 4 letters."""
    with torch.inference_mode():
        return [
            torch.log_softmax(model(torch.tensor([s])).logits[0, -1, list(letters)].float(), -1) for s in seqs
        ]


def assert_matches(got: dict[int, tuple], ref: list[torch.Tensor], tol: float = 1e-4) -> None:
    assert sorted(got) == list(range(len(ref)))
    for i, expected in enumerate(ref):
        values = torch.tensor(got[i].logprobs if hasattr(got[i], "logprobs") else got[i])
        assert int(values.argmax()) == int(expected.argmax()), f"prediction of prompt {i} differs"
        assert (values - expected).abs().max().item() <= tol, (
            f"log-probs of prompt {i}: {values} vs {expected}"
        )


def test_letter_tokens_on_both_tokenizers_and_rules(bpe, spm):
    assert letter_tokens(spm[0], "standalone", MMLU).strings == ("▁A", "▁B", "▁C", "▁D")
    assert letter_tokens(spm[0], "in_context", MMLU).strings == ("▁A", "▁B", "▁C", "▁D")
    assert letter_tokens(spm[0], "in_context", CEVAL).strings == ("A", "B", "C", "D")
    found = letter_tokens(bpe[0], "in_context", MMLU)
    assert found.strings == ("ĠA", "ĠB", "ĠC", "ĠD") and found.rule == "in_context"
    assert list(found.ids) == bpe[0].convert_tokens_to_ids(list(found.strings))
    assert letter_tokens(bpe[0], "in_context", CEVAL).strings == ("A", "B", "C", "D")
    assert letter_tokens(bpe[0], "standalone", MMLU).strings == ("A", "B", "C", "D")


def test_letter_that_is_not_one_token_is_an_error(tmp_path):
    backend = Tokenizer(models.BPE())  # byte-level, trained without merges: " A" stays "Ġ" + "A"
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(
        ["hello"],
        trainers.BpeTrainer(
            vocab_size=100, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        ),
    )
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(tmp_path / "nomerge")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "nomerge")
    with pytest.raises(
        EvalkitError, match=r"nomerge: letter 'A' is not exactly one token after 'Answer:'.*'Ġ', 'A'\]"
    ):
        letter_tokens(tokenizer, "in_context", MMLU)
    with pytest.raises(EvalkitError, match="unknown letter rule"):
        letter_tokens(tokenizer, "context", MMLU)


def test_letters_sharing_an_id_are_an_error(tmp_path):
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "Answer": 1, ":": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(tmp_path / "words")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "words")
    with pytest.raises(EvalkitError, match=r"words.*share token ids \[0, 0, 0, 0\].*\[UNK\]"):
        letter_tokens(tokenizer, "standalone", MMLU)


def test_encoding_follows_the_bos_policy(spm, bpe):
    tokenizer = spm[0]
    with_bos, without = (
        encode_prompts(tokenizer, ["Answer: A"], "tokenizer_default")[0],
        encode_prompts(tokenizer, ["Answer: A"], "never")[0],
    )
    assert with_bos[0] == tokenizer.bos_token_id and with_bos[1:] == without
    assert count_tokens_fn(tokenizer, "tokenizer_default")("Answer: A") == len(with_bos)
    assert count_tokens_fn(tokenizer, "never")("Answer: A") == len(without)
    assert encode_prompts(bpe[0], ["Answer: A"], "tokenizer_default") == encode_prompts(
        bpe[0], ["Answer: A"], "never"
    )
    with pytest.raises(EvalkitError, match="valid: tokenizer_default, never"):
        encode_prompts(tokenizer, ["x"], "always")


def test_groups_follow_shared_prefixes_and_shot_counts(mixed):
    seqs = mixed[0]
    groups = prefix_groups(seqs)
    assert [group.members for group in groups] == [list(range(7)), list(range(7, 12)), [12, 13, 14]]
    prefix, members = groups[0]
    assert all(seqs[i][:prefix] == seqs[0][:prefix] for i in members)
    assert len({seqs[i][prefix] for i in members}) > 1  # the longest common prefix
    assert groups[2].prefix < prefix  # 3 shots share less
    assert prefix_groups([[1, 2, 3], [1, 2, 3]]) == []  # too little to gain; never the whole prompt


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_prefix_engine_equals_one_plain_forward_per_prompt(tiny_bpe_model_dir, mixed, attention):
    seqs, letters, ref = mixed
    model = AutoModelForCausalLM.from_pretrained(tiny_bpe_model_dir, attn_implementation=attention).eval()
    scorer = Scorer(model, letters, batch_tokens=2048, engine="prefix", progress=False)
    assert_matches(dict(scorer.score(seqs)), ref)
    assert scorer.engine_used == "prefix" and scorer.mode == "packed"


def test_models_spread_over_devices_keep_the_last_logits_by_count(tiny_bpe_model_dir, mixed):
    seqs, letters, ref = mixed
    model = AutoModelForCausalLM.from_pretrained(tiny_bpe_model_dir).eval()
    model.hf_device_map = {"model": "cpu", "lm_head": 0}  # as accelerate marks a model dispatched over two
    for engine in ("prefix", "plain"):
        scorer = Scorer(model, letters, batch_tokens=1500, engine=engine, progress=False)
        assert_matches(dict(scorer.score(seqs)), ref)
        assert scorer.keep == "int" and scorer.engine_used == engine


def test_chinese_prompts_with_bos_on_sentencepiece(spm):
    tokenizer, model = spm
    letters = letter_tokens(tokenizer, "in_context", CEVAL).ids
    seqs = encode_prompts(tokenizer, ceval_prompts(9, seed=3), "tokenizer_default")
    assert all(s[0] == tokenizer.bos_token_id for s in seqs)
    scorer = Scorer(model, letters, engine="auto", progress=False)
    assert_matches(dict(scorer.score(seqs)), reference(model, seqs, letters))
    assert scorer.engine_used == "prefix"


def test_rows_mode_with_a_repeated_cache(bpe, mixed):
    seqs, letters, ref = mixed
    scorer = Scorer(bpe[1], letters, batch_tokens=3000, engine="prefix", progress=False)
    scorer.candidates = ["rows"]  # what models without custom-mask attention (e.g. flash) get
    assert_matches(dict(scorer.score(seqs)), ref)
    assert scorer.mode == "rows"


def test_results_do_not_depend_on_batch_size_and_resume_is_bit_identical(bpe, mixed):
    model = bpe[1]
    seqs, letters, ref = mixed
    runs = {}
    for engine in ("prefix", "plain"):
        for budget in (1, 100_000):
            runs[engine, budget] = dict(
                Scorer(model, letters, batch_tokens=budget, engine=engine, progress=False).score(seqs)
            )
    for got in runs.values():
        assert_matches(got, ref, tol=1e-5)
    full = runs["prefix", 100_000]
    only = [14, 3, 8]
    resumed = list(Scorer(model, letters, batch_tokens=100_000, progress=False).score(seqs, only=only))
    assert sorted(i for i, _ in resumed) == sorted(only)
    assert all(values == full[i] for i, values in resumed)  # bit-identical, not merely close


def test_plain_engine_and_auto_on_prompts_that_share_little(bpe, mixed):
    tokenizer, model = bpe
    letters = letter_tokens(tokenizer, "in_context", MMLU).ids
    rng = random.Random(5)
    dev = [_example(r, "Answer:") + f" {r[2]}\n\n" for r in (_row(rng) for _ in range(5))]
    texts = []
    for _ in range(6):  # shots shuffled per question (Baichuan's C-Eval): only the header is shared
        rng.shuffle(dev)
        texts.append(
            "The following are multiple choice questions (with answers) about  law.\n\n"
            + "".join(dev)
            + _example(_row(rng), "Answer:")
        )
    seqs = encode_prompts(tokenizer, texts, "tokenizer_default")
    auto = Scorer(model, letters, engine="auto", progress=False)
    assert_matches(dict(auto.score(seqs)), reference(model, seqs, letters))
    assert auto.engine_used == "plain"
    plain = Scorer(model, letters, engine="plain", progress=False)
    assert_matches(dict(plain.score(mixed[0])), mixed[2])
    assert plain.engine_used == "plain"


@pytest.mark.parametrize("engine", ["prefix", "plain"])
def test_nan_logits_name_the_prompt(tiny_bpe_model_dir, mixed, engine):
    seqs, letters, _ = mixed
    model = AutoModelForCausalLM.from_pretrained(tiny_bpe_model_dir).eval()
    owner = {t: i for i, s in enumerate(seqs) for t in s if sum(t in other for other in seqs) == 1}
    poison = min(t for t, i in owner.items() if i < 7)  # a token in one grouped prompt only
    with torch.no_grad():
        model.get_input_embeddings().weight[poison] = float("nan")
    with pytest.raises(EvalkitError, match=rf"non-finite logits.*prompt index\(es\) \[{owner[poison]}\]$"):
        list(Scorer(model, letters, engine=engine, progress=False).score(seqs))


class TupleCacheLM(torch.nn.Module):
    """A remote-code-style model (like Baichuan's): legacy tuple caches in the (batch*heads, seq, dim)
    layout, no logits_to_keep, no 4D masks; a tiny llama inside does the arithmetic."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, past_key_values=None, use_cache=None, attention_mask=None):
        rows = input_ids.shape[0]
        cache = (
            None
            if past_key_values is None
            else DynamicCache(
                ddp_cache_data=[
                    (k.unflatten(0, (rows, -1)), v.unflatten(0, (rows, -1))) for k, v in past_key_values
                ]
            )
        )
        name = "cache" if "cache" in inspect.signature(self.inner.forward).parameters else "past_key_values"
        out = self.inner(input_ids=input_ids, use_cache=use_cache, **{name: cache})  # its current name
        returned = out.cache if "cache" in out.__dataclass_fields__ else out.past_key_values
        past = tuple((k.flatten(0, 1), v.flatten(0, 1)) for k, v, _ in returned) if use_cache else None
        return CausalLMOutputWithPast(logits=out.logits, past_key_values=past)


class NoSuffixWithCacheLM(TupleCacheLM):
    """Like Baichuan-13B (ALiBi): with a cache, only one new token at a time."""

    def forward(self, input_ids, past_key_values=None, use_cache=None, attention_mask=None):
        if past_key_values is not None and input_ids.shape[1] > 1:
            raise RuntimeError(
                "The size of tensor a (7) must match the size of tensor b (107) at dimension 3"
            )
        return super().forward(input_ids, past_key_values, use_cache, attention_mask)


class ForgetfulLM(TupleCacheLM):
    """Takes a cache and silently ignores it: the probe must catch the disagreement."""

    def forward(self, input_ids, past_key_values=None, use_cache=None, attention_mask=None):
        return super().forward(input_ids, None, use_cache, attention_mask)


def test_legacy_tuple_caches_reuse_the_prefix(bpe, mixed):
    seqs, letters, ref = mixed
    scorer = Scorer(TupleCacheLM(bpe[1]), letters, batch_tokens=4000, progress=False)
    assert_matches(dict(scorer.score(seqs)), ref)
    assert scorer.engine_used == "prefix" and scorer.mode == "rows" and scorer.keep == "full"


@pytest.mark.parametrize("wrapper", [NoSuffixWithCacheLM, ForgetfulLM])
def test_models_that_cannot_reuse_a_cache_fall_back_to_plain(bpe, mixed, wrapper, caplog):
    seqs, letters, ref = mixed
    scorer = Scorer(wrapper(bpe[1]), letters, progress=False)
    with caplog.at_level(logging.WARNING, logger="evalkit.backends.hf.scorer"):
        assert_matches(dict(scorer.score(seqs)), ref)
        assert scorer.engine_used == "plain" and scorer.mode == "plain"
        list(scorer.score(seqs[:3]))  # settled once: no second probe, no second warning
    assert sum("plain batches" in r.getMessage() for r in caplog.records) == 1
    unsupported, rows = scorer.fallbacks  # packed is never offered to remote-style code; rows was tried
    assert unsupported.mode == "packed" and unsupported.reason == "unsupported" and rows.mode == "rows"
    if wrapper is NoSuffixWithCacheLM:
        assert rows.reason == "error" and "must match the size" in rows.detail and rows.diff is None
    else:
        assert rows.reason == "disagreement" and rows.diff > 1e-3


class TypeErrorLM(TupleCacheLM):
    """A bug of ours or of the model that is no attention limit: the probe must not swallow it."""

    def forward(self, input_ids, past_key_values=None, use_cache=None, attention_mask=None):
        if past_key_values is not None:
            raise TypeError("unsupported operand type(s) for +: 'NoneType' and 'int'")
        return super().forward(input_ids, past_key_values, use_cache, attention_mask)


def test_the_probe_lets_errors_that_are_no_attention_limit_surface(bpe, mixed):
    seqs, letters, _ = mixed
    with pytest.raises(TypeError, match="unsupported operand"):
        list(Scorer(TypeErrorLM(bpe[1]), letters, progress=False).score(seqs))


class OutOfMemoryLM(TupleCacheLM):
    """What the CPU allocator raises when a batch does not fit (a real one cannot run in a test)."""

    def forward(self, input_ids, past_key_values=None, use_cache=None, attention_mask=None):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 92274688000 bytes.")


def test_out_of_memory_names_the_batch_budget(bpe):
    scorer = Scorer(OutOfMemoryLM(bpe[1]), [5, 6, 7, 8], batch_tokens=777, progress=False)
    with pytest.raises(EvalkitError, match="--batch-tokens 777"):
        list(scorer.score([[1, 2, 3]]))


def test_bad_arguments_are_errors(bpe):
    model = bpe[1]
    with pytest.raises(EvalkitError, match="valid: auto, prefix, plain"):
        Scorer(model, [1, 2, 3, 4], engine="fast")
    with pytest.raises(EvalkitError, match="four distinct"):
        Scorer(model, [1, 1, 2, 3])
    scorer = Scorer(model, [1, 2, 3, 4], progress=False)
    with pytest.raises(EvalkitError, match="out of range"):
        list(scorer.score([[5, 6]], only=[1]))
    with pytest.raises(EvalkitError, match="no tokens"):
        list(scorer.score([[5, 6], []]))


@pytest.mark.slow
def test_engine_matches_plain_forwards_on_smollm_and_real_mmlu(smollm_gguf, shared_data):
    import csv

    tokenizer = AutoTokenizer.from_pretrained(smollm_gguf.parent, gguf_file=smollm_gguf.name)
    model = AutoModelForCausalLM.from_pretrained(smollm_gguf.parent, gguf_file=smollm_gguf.name).eval()
    prompts = []
    for subject in ("astronomy", "college_biology"):
        rows = {}
        for split in ("dev", "test"):
            with open(
                shared_data / "mmlu" / split / f"{subject}_{split}.csv", encoding="utf-8", newline=""
            ) as f:
                rows[split] = list(csv.reader(f))
        header = (
            "The following are multiple choice questions (with answers) about"
            + "".join(" " + w for w in subject.split("_"))
            + ".\n\n"
        )
        shots = "".join(_example((r[0], r[1:5], r[5]), "Answer:") + f" {r[5]}\n\n" for r in rows["dev"][:5])
        prompts += [header + shots + _example((r[0], r[1:5], r[5]), "Answer:") for r in rows["test"][:5]]
    letters = letter_tokens(tokenizer, "in_context", MMLU)
    assert letters.strings == ("ĠA", "ĠB", "ĠC", "ĠD")
    seqs = encode_prompts(tokenizer, prompts, "tokenizer_default")
    scorer = Scorer(model, letters.ids, progress=False)
    assert_matches(dict(scorer.score(seqs)), reference(model, seqs, letters.ids))
    assert scorer.engine_used == "prefix"


@pytest.mark.slow
def test_bf16_engine_reuses_the_prefix_within_bf16_rounding_on_real_cmmlu(smollm_gguf, shared_data):
    """bf16 rounds a letter logit near 20 to steps of 0.125: the prefix forms of CMMLU agronomy differ
    from lone forwards by a step or two, which the probe must accept rather than fall back to plain."""
    from evalkit.backends.hf.probe import PROBE_TOLERANCE
    from evalkit.questions.data import load_task_data
    from evalkit.questions.prompts import build_prompts
    from tasks import get_task

    tokenizer = AutoTokenizer.from_pretrained(smollm_gguf.parent, gguf_file=smollm_gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        smollm_gguf.parent, gguf_file=smollm_gguf.name, dtype=torch.bfloat16
    ).eval()
    task = get_task("cmmlu")
    scheme = task.schemes["official"]
    data = next(iter(load_task_data(task, shared_data, subjects=("agronomy",), limit=10)))
    prompts = build_prompts(scheme, data, count_tokens_fn(tokenizer, scheme.bos))
    seqs = encode_prompts(tokenizer, [p.text for p in prompts], scheme.bos)
    letters = letter_tokens(tokenizer, scheme.letter_rule, scheme).ids
    scorer = Scorer(model, letters, progress=False)
    got = dict(scorer.score(seqs))
    assert scorer.engine_used == "prefix"
    tolerance = PROBE_TOLERANCE[torch.bfloat16]
    for i, expected in enumerate(reference(model, seqs, letters)):
        values = torch.tensor(got[i].logprobs if hasattr(got[i], "logprobs") else got[i])
        assert (values - expected).abs().max().item() <= tolerance, f"prompt {i}: {values} vs {expected}"
        top_two = expected.sort(descending=True).values[:2]
        if top_two[0] - top_two[1] > 2 * tolerance:  # a clear winner stays the winner
            assert int(values.argmax()) == int(expected.argmax())


def reference_log_mass(model, seqs: list[list[int]], letters: tuple[int, ...]) -> list[float]:
    """The definition of the letter mass: one plain forward per full prompt, the fp32 log-softmax over the
    FULL vocabulary at the last position, the four letters' log-probs summed in probability."""
    with torch.inference_mode():
        out = []
        for s in seqs:
            full = torch.log_softmax(model(torch.tensor([s])).logits[0, -1].float(), -1)  # (vocab,)
            out.append(float(torch.logsumexp(full[list(letters)], -1)))
        return out


@pytest.mark.parametrize("mode", ["packed", "rows", "plain", "isolated"])
def test_letter_mass_equals_a_full_vocabulary_forward_in_every_mode(bpe, mixed, mode):
    seqs, letters, ref = mixed
    want = reference_log_mass(bpe[1], seqs, letters)
    engine = "plain" if mode == "plain" else "prefix"
    scorer = Scorer(
        bpe[1], letters, batch_tokens=3000, engine=engine, progress=False, isolated=mode == "isolated"
    )
    if mode == "rows":
        scorer.candidates = ["rows"]
    got = dict(scorer.score(seqs))
    assert scorer.mode == mode if mode != "plain" else scorer.engine_used == "plain"
    assert_matches(got, ref)
    for i, expected in enumerate(want):
        assert got[i].log_mass is not None and abs(got[i].log_mass - expected) <= 1e-4, (i, got[i], expected)
    assert max(want) < 0 and min(want) > -30  # a real mass in (0, 1): the test has teeth


def test_scores_without_the_mass_are_the_same(bpe, mixed):
    seqs, letters, _ = mixed
    with_mass = dict(Scorer(bpe[1], letters, batch_tokens=3000, progress=False).score(seqs))
    without = dict(Scorer(bpe[1], letters, batch_tokens=3000, progress=False, mass=False).score(seqs))
    assert all(without[i].log_mass is None for i in without)
    assert all(without[i].logprobs == with_mass[i].logprobs for i in without)


def test_packed_rows_run_shared_leading_tokens_once(bpe, mixed):
    """Suffixes that share leading tokens (a question's option rotations) are packed as a trie: each
    shared token once, and every suffix still scores as its own plain forward."""
    from evalkit.backends.hf import forward as hf_model

    seqs, letters, _ = mixed
    base = seqs[:7]  # one prefix group; each prompt gets three variants that differ in the last 3 tokens
    variants = [s[:-3] + s[-3:][::-1] for s in base] + [s[:-2] + [s[-1], s[-2]] for s in base] + base
    inputs, last = hf_model.packed_inputs(
        [[1, 2, 3, 4], [1, 2, 5], [1, 2, 3, 6]], 0, None, {"full": None}, torch.float32, "past_key_values"
    )
    # lexicographic order [1,2,3,4], [1,2,3,6], [1,2,5]: 1, 2, 3 once, then 4, 6 and 5
    assert inputs["input_ids"].tolist() == [[1, 2, 3, 4, 6, 5]] and last.tolist() == [[3, 5, 4]]
    assert inputs["position_ids"].tolist() == [[0, 1, 2, 3, 3, 2]]
    mask = inputs["attention_mask"][0, 0] == 0  # (6, 6) who sees whom
    assert mask[4].tolist() == [True, True, True, False, True, False]  # 6 sees 1, 2, 3 and itself
    scorer = Scorer(bpe[1], letters, batch_tokens=4096, engine="prefix", progress=False)
    assert_matches(dict(scorer.score(variants)), reference(bpe[1], variants, letters))
    assert scorer.mode == "packed"
