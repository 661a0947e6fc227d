"""Quantization backends on tiny real models: real low-bit storage, closeness to fp32, rtn checked against
an independent numpy computation, skipped layers reported, bad combinations refused before loading."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from evalkit.models.loading import check_precision, load_model
from evalkit.models.memory import weight_bytes
from evalkit.models.quant.plans import plan_quantization
from evalkit.models.quant.rtn import RTNLinear, pack_int4, unpack_int4
from evalkit.types import EvalkitError

torch.set_num_threads(1)

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
HAS_TORCHAO = importlib.util.find_spec("torchao") is not None
CPU_BACKENDS = [
    pytest.param("bnb", marks=pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")),
    pytest.param(
        "torchao",
        marks=pytest.mark.skipif(
            not HAS_TORCHAO, reason="torchao is not installed (optional: pip install torchao)"
        ),
    ),
    "rtn",
]
LINEARS_PER_LAYER = 7  # q, k, v, o, gate, up, down
_loaded: dict[tuple, object] = {}


@pytest.fixture(scope="module", autouse=True)
def _free_loaded_models():
    """Models are cached across this module's tests (loads dominate its run time) and freed at its end."""
    yield
    _loaded.clear()


def _load(model_dir: Path, precision: str, backend: str | None = None):
    key = (str(model_dir), precision, backend)
    if key not in _loaded:
        _loaded[key] = load_model(str(model_dir), precision, "cpu", quant_backend=backend)
    return _loaded[key]


@pytest.fixture(scope="module")
def aligned_model_dir(tiny_spm_model_dir: Path, tmp_path_factory) -> Path:
    """The tiny SentencePiece model's tokenizer on a llama whose widths (64, 128) torchao's int4 groups
    divide."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("aligned")
    for path in tiny_spm_model_dir.iterdir():
        if path.name != "config.json" and not path.name.endswith(".safetensors"):
            shutil.copy(path, out / path.name)
    source = LlamaConfig.from_pretrained(tiny_spm_model_dir)
    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=source.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=source.bos_token_id,
        eos_token_id=source.eos_token_id,
        pad_token_id=source.pad_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def _last_logprobs(loaded, text: str = "the answer to the question about law is: A") -> torch.Tensor:
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = loaded.model(ids).logits[0, -1].float()
    return torch.log_softmax(logits, dim=-1)


def test_int4_packing_round_trips_two_codes_per_byte() -> None:
    codes = torch.randint(-8, 8, (5, 7), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 4)  # odd width padded to a whole byte
    assert torch.equal(unpack_int4(packed, 7), codes)
    assert int(packed[0, 0]) == (int(codes[0, 0]) + 8) | ((int(codes[0, 1]) + 8) << 4)


@pytest.mark.parametrize("bits", [8, 4])
def test_rtn_matches_a_direct_per_channel_absmax_rounding(tiny_spm_model_dir: Path, bits: int) -> None:
    dense = _load(tiny_spm_model_dir, "fp32").model
    quant = _load(tiny_spm_model_dir, f"int{bits}", "rtn").model
    qmax = 2 ** (bits - 1) - 1
    layers = {n: m for n, m in quant.named_modules() if isinstance(m, RTNLinear)}
    assert len(layers) == LINEARS_PER_LAYER * dense.config.num_hidden_layers
    for name, layer in layers.items():
        w = dense.get_submodule(name).weight.detach().numpy()
        scale = np.abs(w).max(axis=1) / np.float32(qmax)  # fp32, as the fp32-loaded weights
        codes = np.rint(w / scale[:, None])  # numpy rounds half to even, as torch.round
        assert np.array_equal(layer.scale.numpy(), scale), name
        assert np.array_equal(layer.codes().numpy(), codes.astype(np.int8)), name
        assert np.abs(codes).max() <= qmax
        stored = layer.qweight
        assert stored.dtype == (torch.uint8 if bits == 4 else torch.int8)
        assert stored.shape == (w.shape[0], -(-w.shape[1] // 2) if bits == 4 else w.shape[1])
        x = torch.randn(3, w.shape[1])
        expected = x @ torch.from_numpy((codes * scale[:, None]).astype(np.float32)).T
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_rtn_gives_an_all_zero_row_scale_one_not_nan() -> None:
    linear = torch.nn.Linear(4, 2, bias=True)
    with torch.no_grad():
        linear.weight[0].zero_()
    layer = RTNLinear(linear, 8)
    assert layer.scale[0] == 1 and torch.all(layer.codes()[0] == 0)
    assert torch.isfinite(layer(torch.randn(2, 4))).all() and layer.bias is linear.bias


def _quantized_names(loaded) -> list[str]:
    return [
        f"model.layers.{i}.{p}"
        for i in range(loaded.model.config.num_hidden_layers)
        for p in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    ]


def _bytes_bounds(shapes: list[tuple[int, int]], bits: int, group: int | None) -> tuple[int, int]:
    """Codes at `bits` per weight, plus at most 4 bytes of scale + 4 of zero point per group (or per row)."""
    codes = sum(out * inp * bits // 8 for out, inp in shapes)
    groups = sum(-(-out * inp // group) if group else out for out, inp in shapes)  # NF4 blocks span rows
    return codes, codes + 8 * groups + 64 * len(shapes)  # + a 16-entry fp32 lookup table per layer (NF4)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bits", [8, 4])
def test_linear_weights_are_really_stored_low_bit(
    tiny_spm_model_dir: Path, aligned_model_dir: Path, backend: str, bits: int
) -> None:
    model_dir = aligned_model_dir if (backend, bits) == ("torchao", 4) else tiny_spm_model_dir
    dense, quant = _load(model_dir, "fp32"), _load(model_dir, f"int{bits}", backend)
    names = _quantized_names(dense)
    shapes = [tuple(dense.model.get_submodule(n).weight.shape) for n in names]
    dense_bytes = sum(weight_bytes(dense.model.get_submodule(n)) for n in names)
    quant_bytes = sum(weight_bytes(quant.model.get_submodule(n)) for n in names)
    assert dense_bytes == 4 * sum(o * i for o, i in shapes)
    low, high = _bytes_bounds(shapes, bits, quant.info.group_size)
    assert low <= quant_bytes <= high, (quant_bytes, low, high)
    if backend == "rtn":  # exact: codes + one fp32 scale per output row
        assert quant_bytes == sum(o * (i * bits // 8 + 4) for o, i in shapes)
    assert quant.info.weight_bytes == weight_bytes(quant.model) < dense.info.weight_bytes
    assert quant.info.quantized_layers == len(names)
    assert quant.info.skipped_layers == ["lm_head"]


# Tolerances on the full-vocabulary log-probs at the last position, relative to the fp32 spread
# (max - min log-prob: ~36 nats on the conftest model, whose lm_head is scaled by 40; ~1 nat on the
# aligned one). Rounding to 255 levels per row moves each weight by <= absmax/254 (0.4%), to 15
# levels by <= absmax/14 (7%). Measured drift: 0.25-0.32% of the spread at int8 for every backend,
# 0.5-9.3% at int4 (NF4 on the conftest model is the largest). The models and the rounding are
# deterministic; 3% and 20% leave room for library changes while a broken scale, packing or layer,
# whose errors are of the order of the spread, fails.
CLOSENESS = {8: 0.03, 4: 0.20}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bits", [8, 4])
def test_logprobs_stay_close_to_fp32(
    tiny_spm_model_dir: Path, aligned_model_dir: Path, backend: str, bits: int
) -> None:
    model_dir = aligned_model_dir if (backend, bits) == ("torchao", 4) else tiny_spm_model_dir
    reference = _last_logprobs(_load(model_dir, "fp32"))
    quantized = _last_logprobs(_load(model_dir, f"int{bits}", backend))
    spread = float(reference.max() - reference.min())
    drift = float((quantized - reference).abs().max())
    assert 0 < drift <= CLOSENESS[bits] * spread, (drift, spread)


def test_info_records_method_group_and_compute_dtype(tiny_spm_model_dir: Path) -> None:
    rtn = _load(tiny_spm_model_dir, "int4", "rtn").info
    assert (rtn.quant_method, rtn.group_size, rtn.compute_dtype) == (
        "rtn-absmax-per-channel",
        None,
        "float32",
    )
    if HAS_BNB:
        nf4 = _load(tiny_spm_model_dir, "int4").info  # bnb is the default backend
        assert (nf4.quant_backend, nf4.quant_method, nf4.group_size) == ("bnb", "NF4", 64)
        assert nf4.compute_dtype in ("float32", "bfloat16")  # bf16: the AVX512-BF16 CPU kernel
        assert _load(tiny_spm_model_dir, "int8").info.quant_method == "LLM.int8"
    for info in (rtn, _load(tiny_spm_model_dir, "fp32").info):
        assert info.peak_rss_bytes > 0 and info.load_seconds >= 0 and info.source_quantization is None


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
def test_llm_int8_records_its_activation_quantization_and_logs_no_per_call_notice(
    tiny_spm_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = _load(tiny_spm_model_dir, "int8", "bnb")
    with caplog.at_level(logging.INFO):
        _last_logprobs(loaded)  # fp32 activations: bitsandbytes would log a cast notice for every layer
    assert not [r for r in caplog.records if "MatMul8bitLt" in r.getMessage()]
    assert loaded.info.activation_quantization.startswith("int8 per token")
    assert _load(tiny_spm_model_dir, "int8", "rtn").info.activation_quantization is None


@pytest.mark.skipif(not HAS_TORCHAO, reason="torchao is not installed (optional: pip install torchao)")
def test_torchao_int4_reports_the_layers_its_groups_cannot_divide(tiny_spm_model_dir: Path) -> None:
    info = _load(tiny_spm_model_dir, "int4", "torchao").info
    # widths 48 (hidden) are not divisible by 32, the smallest group torchao accepts: only down_proj (96) is
    assert info.group_size == 32 and info.quantized_layers == 2
    assert "model.layers.0.self_attn.q_proj" in info.skipped_layers and "lm_head" in info.skipped_layers
    assert not any(name.endswith("down_proj") for name in info.skipped_layers)


REMOTE_CODE = '''
import torch
from transformers import LlamaForCausalLM


class QLinear(torch.nn.Module):
    """Baichuan-style: the int8 weight is a plain attribute, neither parameter nor buffer."""

    def __init__(self, bits, weight):
        super().__init__()
        self.scale = (weight.abs().max(dim=-1).values / (2 ** (bits - 1) - 1)).to(torch.float32)
        self.weight = torch.round(weight.to(torch.float32) / self.scale[:, None]).to(torch.int8)

    def forward(self, x):
        return x @ (self.weight.to(x.dtype) * self.scale.to(x.dtype)[:, None]).T


class TinyQForCausalLM(LlamaForCausalLM):
    def quantize(self, bits):
        for layer in self.model.layers:
            for name in ("gate_proj", "up_proj", "down_proj"):
                setattr(layer.mlp, name, QLinear(bits, getattr(layer.mlp, name).weight.detach()))
        return self
'''


@pytest.fixture(scope="module")
def remote_code_model_dir(tiny_spm_model_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("remote")
    for path in tiny_spm_model_dir.iterdir():
        shutil.copy(path, out / path.name)
    config = json.loads((out / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_tinyq.TinyQForCausalLM"}
    (out / "config.json").write_text(json.dumps(config))
    (out / "modeling_tinyq.py").write_text(REMOTE_CODE)
    return out


def test_model_backend_calls_the_checkpoints_own_quantize(remote_code_model_dir: Path) -> None:
    loaded = load_model(
        str(remote_code_model_dir), "int8", "cpu", trust_remote_code=True, quant_backend="model"
    )
    info = loaded.info
    assert (info.quant_method, info.compute_dtype) == ("model.quantize(8)", "float16")
    assert info.quantized_layers == 3 * loaded.model.config.num_hidden_layers
    assert "model.layers.0.self_attn.q_proj" in info.skipped_layers  # its quantize() leaves attention float
    mlp = loaded.model.model.layers[0].mlp.gate_proj
    assert weight_bytes(mlp) == mlp.weight.numel() + 4 * mlp.weight.shape[0]  # plain int8 attribute counted
    assert torch.isfinite(_last_logprobs(loaded)).all()


def test_model_backend_without_a_quantize_method_is_an_error(tiny_spm_model_dir: Path) -> None:
    with pytest.raises(EvalkitError, match="has no quantize"):
        load_model(str(tiny_spm_model_dir), "int4", "cpu", trust_remote_code=True, quant_backend="model")


@pytest.fixture()
def config_only_dir(tiny_spm_model_dir: Path, tmp_path: Path) -> Path:
    """A checkpoint directory with its config and tokenizer but no weights: any attempt to load a model
    from it would fail differently."""
    for path in tiny_spm_model_dir.iterdir():
        if not path.name.endswith(".safetensors"):
            shutil.copy(path, tmp_path / path.name)
    return tmp_path


@pytest.mark.parametrize(
    ("precision", "backend", "message"),
    [
        ("int4", "none", "int4 needs a quantization backend; valid: bnb, torchao, rtn, model"),
        ("fp16", "bnb", "fp16 is a float precision and bnb would ignore it"),
        ("bf16", "rtn", "bf16 is a float precision and rtn would ignore it"),
        ("int8", "model", "pass --trust-remote-code"),
        (
            "int3",
            None,
            "unknown precision 'int3'; did you mean int8 or int4? (valid: fp32, bf16, fp16, int8, int4)",
        ),
        ("int8", "gptq", "unknown quant backend 'gptq' (valid: none, bnb, torchao, rtn, model)"),
    ],
)
def test_bad_combinations_fail_before_any_model_is_loaded(
    config_only_dir: Path, precision: str, backend: str | None, message: str
) -> None:
    with pytest.raises(EvalkitError, match=re.escape(message)):
        load_model(str(config_only_dir), precision, "cpu", quant_backend=backend)


def test_torchao_int4_is_refused_on_cuda_and_a_missing_package_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(EvalkitError, match="CPU only"):
        plan_quantization("int4", "torchao", "cuda:0", None, False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "torchao" else real_find_spec(name, *args),
    )
    with pytest.raises(EvalkitError, match="pip install torchao"):
        plan_quantization("int8", "torchao", "cpu", None, False)


@pytest.mark.parametrize(
    ("precision", "backend", "message"),
    [
        ("int8", None, "pass --precision int4 to evaluate it as it comes"),
        ("fp16", None, "pass --precision int4"),
        ("int4", "rtn", "never re-quantized: drop --quant-backend"),
    ],
)
def test_prequantized_checkpoints_are_not_requantized(
    config_only_dir: Path, precision: str, backend: str | None, message: str
) -> None:
    config = json.loads((config_only_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (config_only_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(EvalkitError, match=message):
        load_model(str(config_only_dir), precision, "cpu", quant_backend=backend)
    plan = check_precision("int4", None, "cpu", str(config_only_dir))
    assert (plan.backend, plan.method, plan.bits, plan.group_size) == ("pre-quantized", "gptq", 4, 128)
    assert (plan.source_label, plan.requantized_from) == ("config gptq", None)


# ---- slow: the real SmolLM2-135M (GGUF Q4_1) ----


def _mmlu_prompt(shared_data: Path) -> str:
    """A 4-shot MMLU prompt in the official layout (hendrycks/test), built here from the real dev file."""
    path = shared_data / "mmlu" / "dev" / "high_school_geography_dev.csv"
    rows = list(csv.reader(path.open(encoding="utf-8")))

    def example(row: list[str], answer: bool) -> str:
        text = f"{row[0]}\nA. {row[1]}\nB. {row[2]}\nC. {row[3]}\nD. {row[4]}\nAnswer:"
        return text + (f" {row[5]}\n\n" if answer else "")

    header = "The following are multiple choice questions (with answers) about high school geography.\n\n"
    return header + "".join(example(r, True) for r in rows[:4]) + example(rows[4], False)


def _next_token_logprobs(loaded, prompt: str) -> torch.Tensor:
    ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        return torch.log_softmax(loaded.model(ids).logits[0, -1].float(), dim=-1)


def _letters(loaded, logprobs: torch.Tensor) -> torch.Tensor:
    letter_ids = [loaded.tokenizer.encode(f" {letter}", add_special_tokens=False)[-1] for letter in "ABCD"]
    return torch.log_softmax(logprobs[letter_ids], dim=-1)


# Measured on this prompt (fp32 letters: -0.98 -2.06 -1.05 -1.92). KL(fp32 || quantized) of the next
# token over the whole vocabulary: int8 0.0007 (rtn) / 0.0027-0.020 (LLM.int8); int4 0.07 (NF4) / 0.14 (rtn
# per channel, the coarsest); rtn int4 with its scales made 1.5x too large: 5.0. The KL bound separates
# a working quantizer from a broken one; the letter bound (max |delta log-prob|, measured 0.04 / 0.13-0.28
# at int8, 0.45 / 1.41 at int4) keeps the answer distribution within a sane distance of fp32. LLM.int8's
# figures differ by CPU: 0.0027 / 0.13 on an AVX-512 machine, 0.020 / 0.28 on an AVX2-only one (where
# bitsandbytes' int8 product is the exact integer one: torch._int_mm in its place gives the same bits).
SMOLLM_KL = {"int8": 0.05, "int4": 0.5}
SMOLLM_LETTERS = {"int8": 0.5, "int4": 2.0}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("precision", "backend"), [("int8", None), ("int4", None), ("int8", "rtn"), ("int4", "rtn")]
)
def test_smollm_quantized_logprobs_stay_near_fp32(
    smollm_gguf: Path, shared_data: Path, precision: str, backend: str | None
) -> None:
    prompt = _mmlu_prompt(shared_data)
    dense = _load(smollm_gguf, "fp32")
    loaded = _load(smollm_gguf, precision, backend)
    reference, quantized = _next_token_logprobs(dense, prompt), _next_token_logprobs(loaded, prompt)
    kl = float((reference.exp() * (reference - quantized)).sum())
    letters = float((_letters(loaded, quantized) - _letters(dense, reference)).abs().max())
    assert 0 < kl <= SMOLLM_KL[precision], kl
    assert letters <= SMOLLM_LETTERS[precision], letters
    info = loaded.info
    assert info.source_quantization == info.requantized_from == "gguf Q4_1"
    assert info.skipped_layers == ["lm_head"] and info.quantized_layers == 7 * 30
    assert info.weight_bytes < dense.info.weight_bytes / 2


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
def test_nf4_takes_every_shape_on_cpu(tiny_spm_model_dir: Path, aligned_model_dir: Path) -> None:
    """NF4 layers the AVX512-BF16 kernel cannot repack (k/v 24 wide, inputs 48 wide) stay on the generic
    path, the others keep the fast kernel; both score finite letters on this CPU, whichever it is."""
    from bitsandbytes.functional import has_avx512bf16

    for model_dir in (tiny_spm_model_dir, aligned_model_dir):
        loaded = _load(model_dir, "int4", "bnb")
        linears = {
            name: module
            for name, module in loaded.model.named_modules()
            if hasattr(module, "quant_state") or hasattr(getattr(module, "weight", None), "quant_state")
        }
        misfit = sorted(
            name for name, module in linears.items() if module.out_features % 32 or module.in_features % 64
        )
        assert sorted(loaded.info.nf4_generic_kernel_layers) == (misfit if has_avx512bf16() else [])
        assert torch.isfinite(_last_logprobs(loaded)).all()
    assert not _load(aligned_model_dir, "int4", "bnb").info.nf4_generic_kernel_layers


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
def test_nf4_on_the_cpu_kernel_is_recorded_and_probed_as_bf16(aligned_model_dir: Path) -> None:
    """bitsandbytes' AVX512-BF16 NF4 kernel computes in bf16 under fp32 weights: the info says so and the
    engine's probe judges prefix reuse with the bf16 bound, as for a bf16 model (on a CPU without the
    kernel the layers run in fp32 and the fp32 bound holds). Either way the engine reuses the prefix, and
    every letter stays within that bound of a plain forward."""
    from bitsandbytes.functional import has_avx512bf16

    from evalkit.backends import plugin
    from evalkit.backends.hf.probe import PROBE_TOLERANCE
    from evalkit.backends.hf.scorer import Scorer
    from evalkit.types import RunConfig

    loaded = _load(aligned_model_dir, "int4", "bnb")
    expected = "bfloat16" if has_avx512bf16() else "float32"
    assert (loaded.info.compute_dtype, loaded.info.dtype) == (expected, "float32")
    shared = loaded.tokenizer("a question about law, with five examples before it: " * 6).input_ids
    prompts = [shared + loaded.tokenizer(f" question {i}, answer:").input_ids for i in range(6)]
    letters = [loaded.tokenizer(f" {x}").input_ids[-1] for x in "ABCD"]

    def scores(engine: str) -> tuple[Scorer, torch.Tensor]:
        config = RunConfig(model=str(aligned_model_dir), task="mmlu", precision="int4", engine=engine)
        scorer = plugin("hf").scorer(loaded, letters, config)  # as a run builds it
        assert scorer.compute_dtype == getattr(torch, expected)
        got = dict(scorer.score(prompts))
        return scorer, torch.tensor([got[i].logprobs for i in range(len(prompts))])

    reused, got = scores("prefix")
    _, plain = scores("plain")
    assert reused.mode in ("packed", "rows") and not reused.fallbacks
    bound = PROBE_TOLERANCE.get(getattr(torch, expected), 1e-3)
    assert float((got - plain).abs().max()) <= bound
