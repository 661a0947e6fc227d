"""The served-model backend's registry entry (stdlib only: its functions import the client lazily)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from evalkit.backends import BackendPlugin, Flag, FlagGroup, LoadPrecision
from evalkit.types import DEFAULT_CONCURRENCY, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S, EvalkitError, RunConfig

if TYPE_CHECKING:
    from evalkit.backends.base import ScoringBackend
    from evalkit.bench.schema import BenchReport, BenchSettings
    from evalkit.models.loading import LoadedModel
    from evalkit.models.source import ModelSource

FLAGS = FlagGroup(
    title="--backend server",
    description="the vLLM OpenAI-compatible servers that run --model (not in the config hash)",
    field="server",
    flags=(
        Flag(
            "base_urls",
            "a server's base URL, e.g. http://node1:8000; repeat for several servers of the same model "
            "(subjects are spread over them)",
            kind="texts",
            metavar="URL",
            name="--base-url",
        ),
        Flag(
            "model",
            "the model name the servers serve (default: the only one their /v1/models lists)",
            kind="text",
            metavar="NAME",
            name="--served-model-name",
        ),
        Flag(
            "concurrency",
            f"requests in flight per server (default: {DEFAULT_CONCURRENCY}, sized for a GPU server's "
            "continuous batching; lower it for a CPU server)",
        ),
        Flag(
            "max_retries",
            f"retries of a refused, reset, timed-out, 429 or 5xx request, with exponential backoff and "
            f"jitter; a server failing that often in a row hands its subjects to the others "
            f"(default: {DEFAULT_MAX_RETRIES})",
            kind="int>=0",
        ),
        Flag(
            "timeout_s",
            f"seconds per request, whole: connect, send and the answer to its last byte; a request "
            f"past it is retried (default: {DEFAULT_TIMEOUT_S:g})",
            kind="seconds",
            name="--request-timeout",
        ),
        Flag(
            "api_key_env",
            "the NAME of an environment variable holding the servers' API key (sent as a bearer token, "
            "never written anywhere)",
            kind="text",
            metavar="NAME",
        ),
        Flag(
            "verify_tls",
            "accept any TLS certificate (recorded in run.json; default: verify)",
            kind="switch-off",
            name="--no-verify-tls",
        ),
    ),
)


def check_settings(config: RunConfig, precisions: Sequence[str]) -> None:
    """The settings, before any file is read or a server is asked; the servers compute at their own
    precision, so one precision label per run."""
    from evalkit.backends.server.settings import check_settings as check_server_settings

    check_server_settings(config.server)
    if len(precisions) != 1:
        raise EvalkitError(
            f"--backend server scores the model at the precision its servers run; a sweep over "
            f"{', '.join(precisions)} needs one server set per precision: run eval once per set"
        )


def check(
    config: RunConfig, precisions: Sequence[str], source: ModelSource, device: str, device_map: str | None
) -> dict[str, str | None]:
    """Nothing more before loading: the servers themselves are checked when the model is opened."""
    return {precision: None for precision in precisions}


def open_model(
    config: RunConfig, source: ModelSource, device: str, device_map: str | None, stack: contextlib.ExitStack
) -> LoadPrecision:
    """The tokenizer of --model and the checked servers (no weights are loaded here)."""
    from evalkit.backends.server.loader import load_for_run

    def load(precision: str, quant_backend: str | None) -> LoadedModel:
        loaded = load_for_run(source, config.server, precision, config.trust_remote_code)
        stack.callback(loaded.model.close)
        return loaded

    return load


def scorer(loaded: LoadedModel, letter_ids: Sequence[int], config: RunConfig) -> ScoringBackend:
    from evalkit.backends.server.loader import ServedModel
    from evalkit.backends.server.scorer import ServerScorer

    if not isinstance(loaded.model, ServedModel):
        raise EvalkitError("--backend server needs a model loaded by backends.server.loader.load_for_run")
    return ServerScorer(loaded.model, letter_ids)


def bench(
    sources: dict[str, ModelSource], precisions: Sequence[str], settings: BenchSettings, device: str
) -> BenchReport:
    raise EvalkitError(
        "bench --backend server is not offered: a shared server's tokens/s measure its other clients "
        "too; bench the model with --backend vllm on the server's machine"
    )


SERVER = BackendPlugin(
    name="server",
    summary="vLLM OpenAI-compatible servers over HTTP (vllm serve, vLLM >= 0.32): token ids in, the four "
    "letters' log-probs out, subjects spread over --base-url servers",
    bench_summary="not offered (a shared server's tokens/s are not the model's)",
    own_flags=(),
    own_bench_flags=(),
    flag_group=FLAGS,
    check_settings=check_settings,
    check=check,
    open=open_model,
    scorer=scorer,
    bench=bench,
    accelerate_launch=False,
)
