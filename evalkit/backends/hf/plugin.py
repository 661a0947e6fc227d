"""The transformers backend's registry entry (torch-free: its functions import the engine lazily)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from evalkit.backends import BackendPlugin, LoadPrecision, no_settings_to_check
from evalkit.types import RunConfig

if TYPE_CHECKING:
    from evalkit.backends.base import ScoringBackend
    from evalkit.bench.schema import BenchReport, BenchSettings
    from evalkit.models.loading import LoadedModel
    from evalkit.models.source import ModelSource


def check(
    config: RunConfig, precisions: Sequence[str], source: ModelSource, device: str, device_map: str | None
) -> dict[str, str | None]:
    """Each precision's quantization backend, checked before anything loads; the default named where it
    was not given (one config, and one label, however it was asked); float precisions take none."""
    from evalkit.models.loading import check_precision
    from evalkit.models.quant.choices import QUANT_BITS

    backend_for = {p: config.quant_backend if p in QUANT_BITS else None for p in precisions}
    for precision in precisions:
        plan = check_precision(precision, backend_for[precision], device, source, config.trust_remote_code)
        if precision in QUANT_BITS and plan.backend != "pre-quantized":
            backend_for[precision] = plan.backend
    return backend_for


def open_model(
    config: RunConfig, source: ModelSource, device: str, device_map: str | None, stack: contextlib.ExitStack
) -> LoadPrecision:
    """Each precision loaded by transformers (or evalkit's native ports) on the resolved device."""
    from evalkit.models.loading import load_model

    def load(precision: str, quant_backend: str | None) -> LoadedModel:
        return load_model(source, precision, device, config.trust_remote_code, quant_backend, device_map)

    return load


def scorer(loaded: LoadedModel, letter_ids: Sequence[int], config: RunConfig) -> ScoringBackend:
    from evalkit.backends.hf.scorer import Scorer

    return Scorer(
        loaded.model,
        letter_ids,
        batch_tokens=config.batch_tokens,
        engine=config.engine,
        progress=False,
        isolated=loaded.info.activation_quantization is not None,
        compute_dtype=loaded.info.compute_dtype,
    )


def bench(
    sources: dict[str, ModelSource], precisions: Sequence[str], settings: BenchSettings, device: str
) -> BenchReport:
    from evalkit.bench.hf_bench import run_hf_bench

    return run_hf_bench(sources, precisions, settings, device)


HF = BackendPlugin(
    name="hf",
    summary="transformers, evalkit's prefix engine",
    bench_summary="transformers generate",
    own_flags=("engine", "device_map", "quant_backend", "batch_tokens"),
    own_bench_flags=("mode", "compile_backend", "quant_backend"),
    flag_group=None,
    check_settings=no_settings_to_check,
    check=check,
    open=open_model,
    scorer=scorer,
    bench=bench,
    accelerate_launch=True,
)
