"""Native Baichuan (evalkit.models): parity with the original remote code's outputs, loading, quantize.

The ground truth is ../shared/models/baichuan: tiny random-weight Baichuan-7B / Baichuan-13B /
Baichuan2-13B checkpoints in the hub layout and what the original code computed on them under
transformers 4.33.3 (reference/*.json). Everything is loaded through `load_model`, the real path;
the remote code in those directories is never imported (except where a test makes it fail on purpose).
"""

from __future__ import annotations

import copy
import inspect
import json
import shutil
from functools import cache
from pathlib import Path

import pytest
import torch
from conftest import SHARED

from evalkit.models.loading import check_precision, load_model
from evalkit.types import EvalkitError

torch.set_num_threads(1)

BAICHUAN = SHARED / "models" / "baichuan"
CHECKPOINTS = ("baichuan-7b-tiny", "baichuan-13b-tiny", "baichuan2-13b-tiny")
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
TOLERANCE = {"fp32": 1e-4, "bf16": 0.1}  # max |letter log-prob - reference|
EXPECTED = {  # checkpoint -> (implementation, model class)
    "baichuan-7b-tiny": ("Baichuan-7B (RoPE, W_pack)", "BaichuanRopeForCausalLM"),
    "baichuan-13b-tiny": ("Baichuan-13B (ALiBi, W_pack)", "BaichuanAlibiForCausalLM"),
    "baichuan2-13b-tiny": ("Baichuan2-13B (ALiBi, W_pack, NormHead)", "BaichuanAlibiForCausalLM"),
}

# the fixtures' shapes (../shared/models/baichuan/README.md), for checkpoints built here
TINY_BAICHUAN_SHAPE = dict(
    vocab_size=64000,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    tie_word_embeddings=False,
)


def _checkpoint(name: str) -> Path:
    path = BAICHUAN / name
    if not (path / "reference").is_dir():
        pytest.skip(f"Baichuan fixtures absent: {path} (../shared is not beside this checkout)")
    return path


@cache
def _reference(name: str, part: str) -> dict:
    return json.loads((BAICHUAN / name / "reference" / f"{part}.json").read_text())


@cache
def _prompts() -> list[dict]:
    return json.loads((BAICHUAN / "prompts.json").read_text())


@cache
def _loaded(name: str, precision: str):
    return load_model(str(_checkpoint(name)), precision, "cpu")


def _ids(loaded, text: str) -> list[int]:
    return loaded.tokenizer.encode(text, add_special_tokens=False)


@torch.inference_mode()
def _logits(model, ids: list[int], **kwargs) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids]), **kwargs).logits[0].float()  # (len, vocab)


# ----------------------------------------------------------------------------------------------------
# Recognition and tokenizer


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_load_model_runs_the_native_implementation(name: str) -> None:
    # the flag changes nothing: the remote code is never run
    loaded = load_model(str(_checkpoint(name)), "fp32", "cpu", trust_remote_code=True)
    implementation, model_class = EXPECTED[name]
    assert loaded.info.implementation == f"evalkit.models.baichuan: {implementation}"
    assert loaded.info.model_class == model_class
    assert loaded.info.remote_code_executed is False
    assert type(loaded.model).__module__ == "evalkit.models.baichuan.model"
    assert loaded.model.config._attn_implementation in ("sdpa", "eager")  # what the Scorer packs for
    assert loaded.tokenizer.name_or_path == str(_checkpoint(name))
    assert type(loaded.tokenizer).__module__ == "evalkit.models.baichuan.tokenizer"


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_token_ids_equal_the_original_tokenizer(name: str) -> None:
    tokenizer = _loaded(name, "fp32").tokenizer
    ref = _reference(name, "tokenizer")
    texts = [p["text"] for p in _prompts()]
    assert len(texts) == len(ref["prompts"]) == 12
    assert tokenizer(texts)["input_ids"] == [r["ids_default"] for r in ref["prompts"]]
    nospecial = [r["ids_nospecial"] for r in ref["prompts"]]
    assert tokenizer(texts, add_special_tokens=False)["input_ids"] == nospecial
    assert [tokenizer.encode(t, add_special_tokens=False) for t in texts] == nospecial
    assert tokenizer.convert_tokens_to_ids(ref["letter_token_order"]) == ref["letter_ids"]
    assert tokenizer.convert_ids_to_tokens(ref["letter_ids"]) == ref["letter_token_order"]
    special = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id)
    assert special == (ref["bos_token_id"], ref["eos_token_id"], ref["pad_token_id"], ref["unk_token_id"])
    assert len(tokenizer) == ref["len_tokenizer"]
    for letter, want in ref["standalone_letters"].items():
        assert tokenizer(letter)["input_ids"] == want["input_ids"]
        assert tokenizer(" " + letter)["input_ids"] == want["space_input_ids"]
    for text, want in ref["probes"].items():
        assert tokenizer(text)["input_ids"] == want["input_ids"]
        assert tokenizer.tokenize(text) == want["tokens"]
    assert tokenizer.decode(ref["probes"]["Answer: A"]["input_ids"]) == "Answer: A"


# ----------------------------------------------------------------------------------------------------
# Numerics against the original code


@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize("name", CHECKPOINTS)
def test_letter_logprobs_match_the_original(name: str, precision: str) -> None:
    loaded = _loaded(name, precision)
    ref = _reference(name, DTYPES[precision])
    letters = ref["letter_ids"]
    worst = 0.0
    for prompt, want in zip(_prompts(), ref["prompts"], strict=True):
        ids = _ids(loaded, prompt["text"])
        assert len(ids) == want["n_tokens"]
        last = _logits(loaded.model, ids, logits_to_keep=1)[-1]  # (vocab,)
        logprobs = torch.log_softmax(last, dim=-1)[letters]
        worst = max(worst, (logprobs - torch.tensor(want["letter_logprobs"])).abs().max().item())
        assert int(last.argmax()) == want["argmax"], prompt["id"]
        assert int(logprobs[:4].argmax()) == int(torch.tensor(want["letter_logprobs"][:4]).argmax())
    assert worst <= TOLERANCE[precision], f"{name} {precision}: max |d log-prob| {worst:.3g}"


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_cached_decode_matches_the_original(name: str) -> None:
    """The reference's decode path (prefix, then one token at a time) and, on top, the multi-token
    cached forward that the original 13B attention cannot take."""
    model = _loaded(name, "fp32").model
    ref = _reference(name, "float32")
    letters = ref["letter_ids"]
    ids = _ids(_loaded(name, "fp32"), _prompts()[0]["text"])
    prefix = ref["cached"][0]["prefix_len"]
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids[:prefix]]), use_cache=True)
        steps = [out.logits[0, -1]]
        prefix_cache = copy.deepcopy(out.past_key_values)
        for token in ids[prefix:]:
            out = model(
                input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True
            )
            steps.append(out.logits[0, -1])
        multi = model(input_ids=torch.tensor([ids[prefix:]]), cache=prefix_cache, use_cache=True).logits[0]
    want = torch.tensor([step["letter_logits"] for step in ref["cached"][0]["steps"]])  # (6, 8)
    assert (torch.stack(steps)[:, letters] - want).abs().max() <= 1e-4
    full = _logits(model, ids)
    assert (multi - full[prefix:]).abs().max() <= 1e-4
    probe = ref["multi_token_cached_probe"]
    if "letter_logits" in probe:  # Baichuan-7B's original took it too
        assert (multi[:, letters] - torch.tensor(probe["letter_logits"])).abs().max() <= 1e-4


def _packed_inputs(prefix: int, suffixes: list[list[int]], dtype: torch.dtype) -> dict:
    """Two suffixes in one row after a cached prefix: a (1, 1, q, prefix+q) additive mask and
    per-segment position_ids, as the Scorer's packed mode builds them."""
    lengths = [len(s) for s in suffixes]
    total = sum(lengths)
    segment = torch.repeat_interleave(torch.arange(len(suffixes)), torch.tensor(lengths))
    step = torch.arange(total)
    allowed = (segment[:, None] == segment[None, :]) & (step[:, None] >= step[None, :])  # (q, q)
    mask = torch.zeros(total, prefix + total, dtype=dtype)
    mask[:, prefix:].masked_fill_(~allowed, torch.finfo(dtype).min)
    positions = torch.cat([torch.arange(n) for n in lengths]) + prefix
    return {
        "input_ids": torch.tensor([[t for s in suffixes for t in s]]),
        "attention_mask": mask[None, None],
        "position_ids": positions[None],
        "use_cache": True,
    }


@pytest.mark.parametrize("cache_kwarg", ["past_key_values", "cache"])
@pytest.mark.parametrize("name", CHECKPOINTS)
def test_packed_suffixes_after_a_cached_prefix_equal_lone_forwards(name: str, cache_kwarg: str) -> None:
    _assert_packed_equals_lone(_loaded(name, "fp32"), cache_kwarg)


def _assert_packed_equals_lone(loaded, cache_kwarg: str) -> None:
    first, second = (_ids(loaded, p["text"]) for p in _prompts()[:2])
    prefix = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    assert 100 < prefix < min(len(first), len(second)) - 10  # a real shared header, distinct suffixes
    suffixes = [first[prefix:], second[prefix:]]
    with torch.inference_mode():
        cached = loaded.model(input_ids=torch.tensor([first[:prefix]]), use_cache=True).past_key_values
        inputs = _packed_inputs(prefix, suffixes, torch.float32)
        ends = torch.tensor([len(suffixes[0]) - 1, len(suffixes[0]) + len(suffixes[1]) - 1])
        packed = loaded.model(**inputs, **{cache_kwarg: cached}, logits_to_keep=ends).logits[0]  # (2, vocab)
    for row, ids in enumerate((first, second)):
        lone = _logits(loaded.model, ids)[-1]
        assert (packed[row] - lone).abs().max() <= 1e-4


@pytest.mark.parametrize("name", ["baichuan-7b-tiny", "baichuan-13b-tiny"])
def test_the_cache_is_named_as_the_installed_transformers_names_it(name: str) -> None:
    """transformers 5.24 renamed `past_key_values` to `cache`: the forward declares the installed name
    (the Scorer reads it from the signature) and the output returns the cache under its own field;
    the other name is taken too (test_packed_suffixes_after_a_cached_prefix_equal_lone_forwards)."""
    from transformers import DynamicCache
    from transformers.modeling_outputs import CausalLMOutputWithPast

    from evalkit.models.cache_names import CACHE_ARGUMENT

    loaded = _loaded(name, "fp32")
    parameters = inspect.signature(loaded.model.forward).parameters
    other = "past_key_values" if CACHE_ARGUMENT == "cache" else "cache"
    assert CACHE_ARGUMENT in parameters and other not in parameters
    field = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
    ids = _ids(loaded, _prompts()[3]["text"])
    with torch.inference_mode():
        out = loaded.model(input_ids=torch.tensor([ids]), use_cache=True)
    assert isinstance(getattr(out, field), DynamicCache) and getattr(out, field).get_seq_length() == len(ids)


def test_alibi_bias_follows_position_ids() -> None:
    """Shifting a packed segment's position_ids changes the ALiBi result: the bias is read from them."""
    loaded = _loaded("baichuan-13b-tiny", "fp32")
    ids = _ids(loaded, _prompts()[0]["text"])
    prefix = len(ids) - 20
    with torch.inference_mode():
        cached = loaded.model(input_ids=torch.tensor([ids[:prefix]]), use_cache=True).past_key_values
        inputs = _packed_inputs(prefix, [ids[prefix:]], torch.float32)
        right = loaded.model(**inputs, past_key_values=copy.deepcopy(cached)).logits[0, -1]
        inputs["position_ids"] = inputs["position_ids"] + 50
        shifted = loaded.model(**inputs, past_key_values=copy.deepcopy(cached)).logits[0, -1]
    assert (right - _logits(loaded.model, ids)[-1]).abs().max() <= 1e-4
    assert (shifted - right).abs().max() > 1e-3


def test_norm_head_rows_are_normalised_in_the_model_dtype() -> None:
    def raw_head(name: str) -> torch.Tensor:
        return torch.load(_checkpoint(name) / "pytorch_model.bin", weights_only=True)["lm_head.weight"]

    raw = raw_head("baichuan2-13b-tiny")
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        head = _loaded("baichuan2-13b-tiny", precision).model.lm_head.weight
        assert head.dtype == dtype
        assert torch.equal(head, torch.nn.functional.normalize(raw.to(dtype)))
    plain = _loaded("baichuan-13b-tiny", "fp32").model.lm_head.weight
    assert torch.equal(plain, raw_head("baichuan-13b-tiny"))


# ----------------------------------------------------------------------------------------------------
# Loading other layouts: Baichuan2-7B (RoPE + NormHead), sharded .bin, safetensors


def _baichuan_layout(llama_state: dict, layers: int) -> dict:
    """A Llama state dict in Baichuan's names: q/k/v fused into W_pack."""
    out = {k: v for k, v in llama_state.items() if not any(p in k for p in ("q_proj", "k_proj", "v_proj"))}
    for i in range(layers):
        stem = f"model.layers.{i}.self_attn."
        parts = [llama_state[f"{stem}{proj}.weight"] for proj in ("q_proj", "k_proj", "v_proj")]
        out[stem + "W_pack.weight"] = torch.cat(parts)
    return out


@pytest.fixture(scope="module")
def baichuan2_7b_dir(tmp_path_factory) -> Path:
    """A tiny random Baichuan2-7B: BaichuanForCausalLM with max_position_embeddings (RoPE) and the
    Baichuan2 config fields, no modeling file (the decision comes from the config), sharded .bin."""
    from transformers import LlamaConfig, LlamaForCausalLM

    source = _checkpoint("baichuan-7b-tiny")
    out = tmp_path_factory.mktemp("baichuan2_7b")
    config = json.loads((source / "config.json").read_text())
    config.update(
        architectures=["BaichuanForCausalLM"],
        model_max_length=4096,
        z_loss_weight=0,
        tokenizer_class="BaichuanTokenizer",
        auto_map={
            "AutoConfig": "configuration_baichuan.BaichuanConfig",
            "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM",
        },
    )
    (out / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(_checkpoint("baichuan-13b-tiny") / name, out / name)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(**TINY_BAICHUAN_SHAPE, initializer_range=0.1))
    state = _baichuan_layout({k: v for k, v in llama.state_dict().items()}, 2)
    names = sorted(state)
    shards = {
        "pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
        "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :],
    }
    for file, keys in shards.items():
        torch.save({k: state[k] for k in keys}, out / file)
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (out / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return out


def _baichuan2_7b_state(directory: Path) -> dict[str, torch.Tensor]:
    state = {}
    for file in sorted(directory.glob("pytorch_model-*.bin")):
        state.update(torch.load(file, weights_only=True))
    return state


def _llama_by_hand(directory: Path):
    """The Baichuan2-7B checkpoint written out by hand as a Llama: W_pack split, lm_head rows normalised."""
    from transformers import LlamaConfig, LlamaForCausalLM

    state = _baichuan2_7b_state(directory)
    llama = LlamaForCausalLM(LlamaConfig(**TINY_BAICHUAN_SHAPE)).eval()
    by_hand = {k: v for k, v in state.items() if "W_pack" not in k}
    for i in range(2):
        stem = f"model.layers.{i}.self_attn."
        parts = state[stem + "W_pack.weight"].chunk(3)
        for proj, part in zip(("q_proj", "k_proj", "v_proj"), parts, strict=True):
            by_hand[f"{stem}{proj}.weight"] = part
    by_hand["lm_head.weight"] = torch.nn.functional.normalize(state["lm_head.weight"])
    llama.load_state_dict(by_hand, strict=False)
    return llama


def test_baichuan2_7b_loads_as_llama_with_a_normalised_head(baichuan2_7b_dir: Path) -> None:
    loaded = load_model(str(baichuan2_7b_dir), "fp32", "cpu")
    assert loaded.info.implementation == "evalkit.models.baichuan: Baichuan2-7B (RoPE, W_pack, NormHead)"
    assert loaded.info.native_evidence.endswith("head from config")
    state = _baichuan2_7b_state(baichuan2_7b_dir)
    expected = _llama_by_hand(baichuan2_7b_dir)
    ids = _ids(loaded, _prompts()[2]["text"])
    got = _logits(loaded.model, ids)[-1]
    assert (got - _logits(expected, ids)[-1]).abs().max() <= 1e-4
    assert torch.allclose(loaded.model.lm_head.weight.norm(dim=1), torch.ones(64000), atol=1e-5)
    unnormalised = torch.nn.functional.linear(
        expected.model(torch.tensor([ids])).last_hidden_state[0, -1], state["lm_head.weight"]
    )
    assert (got - unnormalised).abs().max() > 1e-2  # the head normalisation is not a no-op here
    # Baichuan2-7B's code rotates q/k in fp32 (fp32 cos/sin) and calls scaled_dot_product_attention
    bf16 = load_model(str(baichuan2_7b_dir), "bf16", "cpu").model
    assert bf16.config._attn_implementation == "sdpa"
    cos, _ = bf16.model.rotary_emb(torch.zeros(1, 3, 64, dtype=torch.bfloat16), torch.arange(3)[None])
    assert cos.dtype == torch.float32
    bf16_logits = _logits(bf16, ids)[-1]
    assert torch.isfinite(bf16_logits).all() and (bf16_logits - got).abs().max() < 0.5
    _assert_packed_equals_lone(loaded, "cache")


def test_safetensors_weights_load_like_the_bin(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = _checkpoint("baichuan-13b-tiny")
    for path in source.iterdir():
        if path.is_file() and path.name != "pytorch_model.bin":
            shutil.copy(path, tmp_path / path.name)
    save_file(torch.load(source / "pytorch_model.bin", weights_only=True), tmp_path / "model.safetensors")
    loaded = load_model(str(tmp_path), "fp32", "cpu")
    ids = _ids(loaded, _prompts()[4]["text"])
    from_bin = _loaded("baichuan-13b-tiny", "fp32").model
    assert torch.equal(_logits(loaded.model, ids)[-1], _logits(from_bin, ids)[-1])


# ----------------------------------------------------------------------------------------------------
# Quantization


def _quantizer_math(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """quantizer.py's QLinear, re-derived: fp32 scale of absmax/(2**(bits-1)-1) in the weight's dtype;
    int8 codes transposed; int4 codes clipped to [-16, 15], eight per int32, code 8j+k at bits 4k."""
    scale = (weight.abs().max(dim=-1).values / (2 ** (bits - 1) - 1)).to(torch.float32)
    codes = torch.round(weight.to(torch.float32) / scale[:, None])
    if bits == 8:
        return codes.to(torch.int8).T, scale
    codes = torch.clip(codes, -16, 15).to(torch.int32)
    words = torch.zeros(weight.shape[0], weight.shape[1] // 8, dtype=torch.int32)
    for j in range(words.shape[1]):
        word = torch.zeros(weight.shape[0], dtype=torch.int32)
        for k in range(8):
            word |= (codes[:, j * 8 + k] & 0x0F) << (4 * k)
        words[:, j] = word
    return words, scale


@pytest.mark.parametrize("bits", [8, 4])
def test_model_backend_is_the_checkpoints_quantize_natively(bits: int) -> None:
    path = _checkpoint("baichuan-13b-tiny")
    loaded = load_model(str(path), f"int{bits}", "cpu", quant_backend="model")  # no --trust-remote-code
    assert loaded.info.quant_method == f"model.quantize({bits})"
    assert loaded.info.remote_code_executed is False
    assert loaded.info.quantized_layers == 5 * 2 and loaded.info.skipped_layers == ["lm_head"]
    raw = torch.load(path / "pytorch_model.bin", weights_only=True)
    for name, module in loaded.model.named_modules():
        if type(module).__name__ != "BaichuanQLinear":
            continue
        weight = raw[f"{name}.weight"].to(torch.float16)  # Baichuan quantizes after an fp16 load
        words, scale = _quantizer_math(weight, bits)
        assert torch.equal(module.weight, words), name
        assert torch.equal(module.scale, scale), name
    ids = _ids(loaded, _prompts()[0]["text"])
    logits = _logits(loaded.model, ids)[-1]
    assert torch.isfinite(logits).all()
    reference = _reference("baichuan-13b-tiny", "float32")
    want = torch.tensor(reference["prompts"][0]["letter_logits"])
    err = (logits[reference["letter_ids"]] - want).abs().max()
    assert 0 < err < (0.2 if bits == 8 else 1.5)  # quantized, still the same network


def test_rtn_backend_runs_on_the_native_models() -> None:
    loaded = load_model(str(_checkpoint("baichuan2-13b-tiny")), "int8", "cpu", quant_backend="rtn")
    assert loaded.info.quantized_layers == 10 and loaded.info.skipped_layers == ["lm_head"]
    assert torch.isfinite(_logits(loaded.model, _ids(loaded, _prompts()[1]["text"]))[-1]).all()


def test_model_backend_on_baichuan_7b_is_refused_before_loading() -> None:
    with pytest.raises(EvalkitError, match="Baichuan-7B: its repository code has no quantize method"):
        check_precision("int8", "model", "cpu", str(_checkpoint("baichuan-7b-tiny")))


@pytest.mark.parametrize("bits", [8, 4])
def test_bnb_on_a_native_model_equals_transformers_bnb(
    bits: int, baichuan2_7b_dir: Path, tmp_path: Path
) -> None:
    """bitsandbytes layers put in by evalkit (the model is not transformers-loaded) give what
    transformers' own bnb loading gives on the same network saved as a Llama checkpoint."""
    pytest.importorskip("bitsandbytes")
    from transformers import LlamaTokenizer

    _llama_by_hand(baichuan2_7b_dir).save_pretrained(tmp_path)
    shutil.copy(baichuan2_7b_dir / "tokenizer.model", tmp_path / "tokenizer.model")  # no remote code
    LlamaTokenizer.from_pretrained(tmp_path, legacy=False).save_pretrained(tmp_path)
    native = load_model(str(baichuan2_7b_dir), f"int{bits}", "cpu")  # bnb: the default backend
    as_llama = load_model(str(tmp_path), f"int{bits}", "cpu")
    method = "LLM.int8" if bits == 8 else "NF4"
    assert native.info.quant_method == as_llama.info.quant_method == method
    assert native.info.quantized_layers == as_llama.info.quantized_layers == 14
    assert native.info.activation_quantization == as_llama.info.activation_quantization
    ids = _ids(native, _prompts()[5]["text"])
    assert torch.equal(_logits(native.model, ids)[-1], _logits(as_llama.model, ids)[-1])


@pytest.mark.parametrize("bits", [8, 4])
def test_model_backend_on_baichuan2_is_its_bitsandbytes_quantize(bits: int) -> None:
    """Baichuan2's quantizer.py: bitsandbytes LLM.int8 (threshold 6.0) or NF4 with double
    quantization, on every linear layer but the head, computing in the load dtype (fp16)."""
    bnb = pytest.importorskip("bitsandbytes")
    path = str(_checkpoint("baichuan2-13b-tiny"))
    loaded = load_model(path, f"int{bits}", "cpu", quant_backend="model")
    assert loaded.info.quant_method == f"model.quantize({bits})"
    assert loaded.info.compute_dtype == "float16"
    assert loaded.info.quantized_layers == 10 and loaded.info.skipped_layers == ["lm_head"]
    layer = loaded.model.model.layers[1].self_attn.W_pack
    if bits == 8:
        assert isinstance(layer, bnb.nn.Linear8bitLt) and layer.state.threshold == 6.0
        assert loaded.info.activation_quantization is not None  # the Scorer isolates prompts for it
    else:
        assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_state.nested  # double quant
        assert layer.weight.quant_type == "nf4" and layer.compute_dtype == torch.float16
    assert torch.isfinite(_logits(loaded.model, _ids(loaded, _prompts()[0]["text"]))[-1]).all()


# ----------------------------------------------------------------------------------------------------
# Remote code that fails


def _unrecognised_copy(name: str, out: Path) -> Path:
    """A copy of a fixture, remote code included, whose config names its class through a wrapper
    module only: evalkit does not recognise it, so --trust-remote-code really runs that code."""
    for path in _checkpoint(name).iterdir():
        if path.is_file():
            shutil.copy(path, out / path.name)
    config = json.loads((out / "config.json").read_text())
    config.pop("architectures")
    config["auto_map"]["AutoModelForCausalLM"] = "modeling_wrapped.WrappedForCausalLM"
    (out / "config.json").write_text(json.dumps(config))
    wrapper = "from .modeling_baichuan import BaichuanForCausalLM as WrappedForCausalLM\n"
    (out / "modeling_wrapped.py").write_text(wrapper)
    return out


def test_a_failing_remote_tokenizer_is_one_error_naming_it(tmp_path: Path) -> None:
    repo = _unrecognised_copy("baichuan-13b-tiny", tmp_path)
    with pytest.raises(EvalkitError) as caught:
        load_model(str(repo), "fp32", "cpu", trust_remote_code=True)
    message = str(caught.value)
    assert message.startswith(f"the tokenizer of {str(repo)!r} failed to load with --trust-remote-code")
    assert "TypeError: 'property' object cannot be interpreted as an integer" in message
    assert "evalkit runs natively" in message and "without --trust-remote-code" in message
    assert "\n" not in message


def test_a_failing_remote_model_is_one_error_naming_it(tmp_path: Path, tiny_spm_model_dir: Path) -> None:
    """The 13B model code itself loads under transformers 5; its wrapper here imports, at module
    level, the package Baichuan's chat() needs, which is not installed (a real ImportError)."""
    repo = _unrecognised_copy("baichuan-13b-tiny", tmp_path)
    wrapper = repo / "modeling_wrapped.py"
    wrapper.write_text("import transformers_stream_generator\n" + wrapper.read_text())
    for name in (
        "tokenizer_config.json",
        "tokenization_baichuan.py",
        "special_tokens_map.json",
        "tokenizer.model",
    ):
        (repo / name).unlink()
    for path in tiny_spm_model_dir.iterdir():  # a tokenizer that loads without remote code
        if path.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(path, repo / path.name)
    with pytest.raises(EvalkitError) as caught:
        load_model(str(repo), "fp32", "cpu", trust_remote_code=True)
    message = str(caught.value)
    assert message.startswith(f"the model of {str(repo)!r} failed to load with --trust-remote-code")
    assert "transformers_stream_generator" in message and "\n" not in message
    assert "evalkit runs natively" not in message  # nothing left in the repo names a Baichuan class
