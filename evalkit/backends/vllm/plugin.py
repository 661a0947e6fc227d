"""The in-process vLLM backend's registry entry (torch- and vLLM-free: its functions import lazily)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

from evalkit.backends import BackendPlugin, Flag, FlagGroup, LoadPrecision, no_settings_to_check
from evalkit.types import EvalkitError, RunConfig

if TYPE_CHECKING:
    from evalkit.backends.base import ScoringBackend
    from evalkit.bench.schema import BenchReport, BenchSettings
    from evalkit.models.loading import LoadedModel
    from evalkit.models.source import ModelSource

FLAGS = FlagGroup(
    title="--backend vllm",
    description="how the vLLM engine is started (not in the config hash)",
    field="vllm",
    flags=(
        Flag("tensor_parallel_size", "GPUs sharing each layer (default: 1)"),
        Flag("pipeline_parallel_size", "pipeline stages splitting the layers (default: 1)"),
        Flag(
            "gpu_memory_utilization",
            "share of each GPU's memory vLLM may take, weights and KV cache (default: 0.9)",
            kind="fraction",
        ),
        Flag(
            "max_model_len",
            "tokens per request, prompt + 1 (default: the model's max_position_embeddings); lower it to "
            "fit the KV cache",
            kind="int>=2",
        ),
        Flag("enforce_eager", "no CUDA graphs / torch.compile: a faster start, slower steps", kind="switch"),
        Flag(
            "distributed_executor_backend",
            "ray: spread tensor x pipeline ranks over the nodes of a running Ray cluster (default: vLLM's "
            "choice, one node)",
            kind="choice",
            choices=("ray", "mp"),
        ),
    ),
)


def check(
    config: RunConfig, precisions: Sequence[str], source: ModelSource, device: str, device_map: str | None
) -> dict[str, str | None]:
    """vLLM importable, its settings and every precision runnable: before any data or model is read."""
    from evalkit.backends.vllm.loader import check_run

    check_run(config.vllm, config.trust_remote_code, precisions, source)
    return {precision: None for precision in precisions}  # vLLM quantizes nothing itself


def open_model(
    config: RunConfig, source: ModelSource, device: str, device_map: str | None, stack: contextlib.ExitStack
) -> LoadPrecision:
    """One engine per precision on the model directory (a GGUF file dequantized once, for all of them)."""
    from evalkit.backends.vllm.loader import load_for_run, prepare_model_dir

    work = stack.enter_context(tempfile.TemporaryDirectory(prefix="evalkit-vllm-"))
    model_dir = prepare_model_dir(source, work)

    def load(precision: str, quant_backend: str | None) -> LoadedModel:
        return load_for_run(source, config.vllm, precision, model_dir, device, config.trust_remote_code)

    return load


def scorer(loaded: LoadedModel, letter_ids: Sequence[int], config: RunConfig) -> ScoringBackend:
    from evalkit.backends.vllm.loader import VllmModel
    from evalkit.backends.vllm.scorer import VllmScorer

    if not isinstance(loaded.model, VllmModel):
        raise EvalkitError("--backend vllm needs a model loaded by backends.vllm.loader.load_for_run")
    return VllmScorer(loaded.model.llm, letter_ids, settings=loaded.model.settings)


def bench(
    sources: dict[str, ModelSource], precisions: Sequence[str], settings: BenchSettings, device: str
) -> BenchReport:
    from evalkit.bench.vllm_bench import run_vllm_bench

    return run_vllm_bench(sources, precisions, settings, device)


VLLM = BackendPlugin(
    name="vllm",
    summary="vLLM in this process, with its prefix cache (needs vLLM installed; a local model directory or "
    ".gguf file)",
    bench_summary="vLLM LLM.generate, prefix cache off (needs vLLM installed; a local model directory or "
    ".gguf file)",
    own_flags=(),
    own_bench_flags=(),
    flag_group=FLAGS,
    check_settings=no_settings_to_check,
    check=check,
    open=open_model,
    scorer=scorer,
    bench=bench,
    accelerate_launch=False,
)
