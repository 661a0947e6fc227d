"""Model loading: source resolution, devices, float precisions, real tensor byte counts, peak memory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from evalkit.machine import resolve_device
from evalkit.models.loading import check_precision, load_model
from evalkit.models.memory import measure_peak_memory, weight_bytes
from evalkit.models.quant.plans import FLOAT_PRECISIONS
from evalkit.models.source import ModelSource, resolve_source
from evalkit.types import EvalkitError

torch.set_num_threads(1)


def test_resolve_source_classifies_gguf_directories_and_hub_ids(
    tiny_spm_model_dir: Path, tmp_path: Path
) -> None:
    gguf = tmp_path / "m.Q4_1.gguf"
    gguf.write_bytes(b"")
    assert resolve_source(str(gguf)) == ModelSource("gguf", str(tmp_path), "m.Q4_1.gguf")
    assert resolve_source(str(gguf)).label == "m.Q4_1"
    assert resolve_source(str(tiny_spm_model_dir)).kind == "local"
    assert resolve_source("baichuan-inc/Baichuan-13B-Base").kind == "hub"
    with pytest.raises(EvalkitError, match="GGUF file not found"):
        resolve_source(str(tmp_path / "absent.gguf"))
    with pytest.raises(EvalkitError, match="without config.json"):
        resolve_source(str(tmp_path))
    with pytest.raises(EvalkitError, match="model path not found"):
        resolve_source("./no/such/dir")


def test_resolve_device_names_the_valid_options() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(EvalkitError, match="valid: auto, cpu, cuda, cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(EvalkitError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.parametrize("precision", list(FLOAT_PRECISIONS))
def test_float_precisions_load_in_their_dtype_on_cpu(tiny_spm_model_dir: Path, precision: str) -> None:
    loaded = load_model(str(tiny_spm_model_dir), precision, "cpu")
    dtype = FLOAT_PRECISIONS[precision]
    # fp16 on CPU is allowed (slow) and recorded
    assert {p.dtype for p in loaded.model.parameters()} == {dtype}
    info = loaded.info
    assert (info.precision, info.dtype, info.device) == (precision, str(dtype).removeprefix("torch."), "cpu")
    assert (info.quant_backend, info.quant_bits, info.skipped_layers) == ("none", None, [])
    params = sum(p.numel() for p in loaded.model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in loaded.model.buffers())
    assert info.weight_bytes == params * dtype.itemsize + buffers
    ids = loaded.tokenizer("Answer: A", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(loaded.model(ids).logits).all()


def test_weight_bytes_counts_tied_and_attribute_tensors_once() -> None:
    layer = torch.nn.Linear(8, 4, bias=False)
    holder = torch.nn.Module()
    holder.a, holder.b = layer, torch.nn.Linear(8, 4, bias=False)
    holder.b.weight = layer.weight  # tied: one storage
    # a plain attribute, as Baichuan's QLinear keeps its weight
    holder.codes = torch.zeros(4, 8, dtype=torch.int8)
    assert weight_bytes(holder) == 4 * 8 * 4 + 4 * 8


def test_check_precision_accepts_a_path_and_refuses_before_loading(tiny_spm_model_dir: Path) -> None:
    plan = check_precision("int8", "rtn", "cpu", str(tiny_spm_model_dir))
    assert (plan.backend, plan.bits, plan.method, plan.group_size) == (
        "rtn",
        8,
        "rtn-absmax-per-channel",
        None,
    )
    assert check_precision("int4", None, "cpu", str(tiny_spm_model_dir)).backend == "bnb"
    with pytest.raises(EvalkitError, match="--precision fp16 with --quant-backend torchao"):
        check_precision("fp16", "torchao", "cpu", str(tiny_spm_model_dir))


def _resident_bytes() -> int:
    """This process's resident set now (Linux), 0 where /proc is absent."""
    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.is_file() else []
    return next((int(line.split()[1]) * 1024 for line in lines if line.startswith("VmRSS:")), 0)


def test_measure_peak_memory_sees_a_temporary_allocation() -> None:
    with measure_peak_memory("cpu") as peak:
        block = torch.ones(32 * 2**20, dtype=torch.float32)  # 128 MiB, touched and freed inside the block
        resident = _resident_bytes()  # the block's tensor is resident now (pages an allocator kept count too)
        del block
    assert peak.rss_scope in ("block", "process") and peak.cuda_bytes is None
    # the peak saw the block's allocation (the kernel syncs its high-water mark in steps: 16 MiB slack)
    assert peak.rss_bytes >= max(resident - 16 * 2**20, 128 * 2**20)


def test_missing_weights_are_an_evalkit_error(tiny_spm_model_dir: Path, tmp_path: Path) -> None:
    for path in tiny_spm_model_dir.iterdir():  # tokenizer and config, no weights
        if not path.name.endswith(".safetensors"):
            shutil.copy(path, tmp_path / path.name)
    with pytest.raises(EvalkitError, match="could not load"):
        load_model(str(tmp_path), "fp32", "cpu")


@pytest.mark.slow
def test_smollm_gguf_loads_as_it_comes_and_is_labelled(smollm_gguf: Path) -> None:
    loaded = load_model(str(smollm_gguf), "fp32", "cpu")
    info = loaded.info
    assert info.source_quantization == "gguf Q4_1" and info.requantized_from is None
    q_proj = loaded.model.model.layers[0].self_attn.q_proj.weight
    unpacked = q_proj.is_floating_point() and q_proj.shape == (576, 576)
    expected = "dequantized on load" if unpacked else "packed GGUF blocks"
    assert info.weights_format == f"gguf SmolLM2-135M-Instruct.Q4_1.gguf ({expected})"
    assert info.weight_bytes == weight_bytes(loaded.model) > 100_000_000
    assert info.peak_rss_bytes >= info.weight_bytes // 2
