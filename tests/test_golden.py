"""Frozen bytes: config hashes of existing configurations and prompt bytes per scheme and benchmark.

The values were computed before the layout change (issue 23) and before the new benchmarks (issue 24);
they must never move: a run directory resumes only while its config hash is unchanged, and a prompt byte
that moves changes every published comparison. A failure here means a refactor changed behaviour.
"""

from __future__ import annotations

import hashlib

import pytest

from evalkit.types import RunConfig
from tasks import get_task

CONFIG_HASHES = {
    "4e50a9a2620b": dict(model="m", task="mmlu"),
    "0ee2b1ba16b2": dict(
        model="/models/Baichuan-13B-Base", task="ceval", scheme="baichuan", precision="bf16"
    ),
    "adc9db885bc2": dict(model="org/model", task="cmmlu", scheme="lm-eval", precision="fp16", shots=0),
    "96528a55809a": dict(model="m", task="mmlu", precision="int8", quant_backend="bnb"),
    "84aebe47ec8b": dict(
        model="m", task="ceval", precision="int4", quant_backend="rtn", limit=10, subjects=("law",)
    ),
    "a95ee9585420": dict(
        model="m", task="ceval", precision="int8", quant_backend="torchao", split="test", seed=7
    ),
    "166112e3c57e": dict(
        model="m",
        task="cmmlu",
        precision="int4",
        quant_backend="model",
        letter_rule="standalone",
        trust_remote_code=True,
    ),
    "117e3d6482ed": dict(model="m", task="mmlu", backend="vllm"),
}
# settings that change no score: the same hash as the plain default configuration
NOT_HASHED = [
    dict(
        model="m",
        task="mmlu",
        engine="plain",
        batch_tokens=512,
        device="cuda",
        output_dir="x",
        progress=False,
    ),
]
VLLM_SCALED = dict(
    model="m",
    task="ceval",
    backend="vllm",
    precision="bf16",
    tensor_parallel_size=2,
    pipeline_parallel_size=2,
    gpu_memory_utilization=0.5,
    max_model_len=4096,
    enforce_eager=True,
    distributed_executor_backend="ray",
)


def make_config(fields: dict) -> RunConfig:
    """A RunConfig from the flat field names config.json used before issue 23 (vLLM settings included)."""
    from evalkit.types import config_from_fields

    return config_from_fields(fields)


@pytest.mark.parametrize("expected", CONFIG_HASHES)
def test_config_hash_frozen(expected):
    assert make_config(CONFIG_HASHES[expected]).config_hash() == expected


def test_non_result_settings_not_hashed():
    for fields in NOT_HASHED:
        assert make_config(fields).config_hash() == "4e50a9a2620b"
    assert make_config(VLLM_SCALED).config_hash() == "cb0da25f566b"


# task/scheme -> hash of the prompt bytes (and shots used) of the first 3 questions of 3 subjects, 5 shots,
# seed 1234, a byte-length token count (len // 3) so that the length policies take part
PROMPT_HASHES = {
    "mmlu/official": "24dc5b5825e3dcba",
    "mmlu/baichuan": "24dc5b5825e3dcba",
    "mmlu/lm-eval": "24f111e818d63f4b",
    "ceval/official": "0e8d70aa10ff1848",
    "ceval/baichuan": "05406d6b6d30d8a2",
    "ceval/lm-eval": "b68bcbe4de89f1a2",
    "cmmlu/official": "729615a827c5c59b",
    "cmmlu/baichuan": "729615a827c5c59b",
    "cmmlu/lm-eval": "5a188559a91697d3",
}


@pytest.mark.parametrize("key", PROMPT_HASHES)
def test_prompt_bytes_frozen(key, shared_data):
    from evalkit.questions.data import load_task_data
    from evalkit.questions.prompts import build_prompts

    task_name, scheme_name = key.split("/")
    task = get_task(task_name)
    subjects = [s.name for s in task.subjects][::20][:3]
    digest = hashlib.sha256()
    for data in load_task_data(task, shared_data, None, subjects, 3, 5):
        for prompt in build_prompts(task.schemes[scheme_name], data, lambda t: len(t.encode()) // 3, 5, 1234):
            digest.update(prompt.text.encode())
            digest.update(str(prompt.shots_used).encode())
    assert digest.hexdigest()[:16] == PROMPT_HASHES[key]


def test_config_json_of_any_shape_reads_to_the_same_config():
    """config.json held the vLLM engine's settings as flat fields before they were nested (issue 23), and
    none of them before the vLLM backend existed: all three shapes read back to one config and hash."""
    import dataclasses

    from evalkit.types import VllmEngine, config_from_fields

    nested = make_config(VLLM_SCALED)
    flat = {k: v for k, v in dataclasses.asdict(nested).items() if k != "vllm"} | dataclasses.asdict(
        nested.vllm
    )
    assert config_from_fields(flat) == nested
    assert config_from_fields(dataclasses.asdict(nested)) == nested
    before = {k: v for k, v in dataclasses.asdict(make_config({"model": "m", "task": "mmlu"})).items()}
    del before["vllm"], before["backend"]
    assert config_from_fields(before).vllm == VllmEngine()
    assert config_from_fields(before).config_hash() == "4e50a9a2620b"
