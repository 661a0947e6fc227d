"""`--backend server`: the tokenizer from `--model` and a preflight of every server; no weights load.

evalkit tokenizes exactly as for every other backend (so prompt bytes, letter ids and prompt hashes are
the same) and sends token ids. Before anything is scored, each server must: answer; list the model
(`--served-model-name`, default the only one it lists) with its context length (`max_model_len`); agree
with our tokenizer on a prompt-shaped text (its `/tokenize`, where it has one); and return the four
requested log-probs of a probe request (vLLM >= 0.32's `logprob_token_ids`). Any failure is one
EvalkitError naming the server and what disagreed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from evalkit.backends.server.client import Endpoint, ServerDown
from evalkit.backends.server.protocol import MissingLetters
from evalkit.backends.server.settings import check_settings
from evalkit.types import EvalkitError, ServerSettings, unknown

if TYPE_CHECKING:
    from evalkit.models.source import ModelSource

LOG = logging.getLogger(__name__)

# Prompt-shaped text for the tokenizer check: a header, CJK, digits, options, newlines and the answer cue
PROBE_TEXT = (
    "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    "以下是中国关于会计考试的单项选择题，请选出其中的正确答案。\n"
    "Find the degree of Q(sqrt(2), sqrt(3)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer: B\n\n"
    "题目：下列说法正确的是\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案："
)


@dataclasses.dataclass(frozen=True)
class ServedConfig:
    """The slice of a model config the runner reads: its position limit is the servers' max_model_len."""

    max_position_embeddings: int
    architectures: tuple[str, ...] = ("served",)


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """`LoadedModel.model` under --backend server: the checked servers of one served model."""

    config: ServedConfig
    endpoints: tuple[Endpoint, ...]
    model_name: str  # the served model name every server lists
    max_model_len: int  # the smallest of the servers' max_model_len
    max_model_lens: dict[str, int]  # per server (sanitized URL)
    versions: dict[str, str | None]  # per server: its /version, None where it has none
    tokenizer_checks: dict[str, str]  # per server: "agrees" or "no /tokenize"
    probe_ids: tuple[int, ...]  # PROBE_TEXT as our tokenizer encodes it (no special tokens)
    settings: ServerSettings

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.close()


def preflight(
    endpoint: Endpoint, settings: ServerSettings, probe_ids: list[int], letter_ids: list[int]
) -> dict:
    """Check one server (module docstring); what it found: model name, max_model_len, version, tokenizer."""
    try:
        listed = endpoint.call("GET", "/v1/models", what="the model list (/v1/models)")
        ids = [entry["id"] for entry in listed["data"]]
    except ServerDown as exc:
        raise EvalkitError(f"server {endpoint.url} does not answer: {exc}") from exc
    except (KeyError, TypeError) as exc:
        raise EvalkitError(f"server {endpoint.url}: /v1/models is not an OpenAI model list") from exc
    name = settings.model
    if name is None:
        if len(ids) != 1:
            raise EvalkitError(
                f"server {endpoint.url} serves {len(ids)} models ({', '.join(ids[:20])}): pick one with "
                f"--served-model-name"
            )
        name = ids[0]
    elif name not in ids:
        raise EvalkitError(f"server {endpoint.url}: {unknown('served model', name, ids)}")
    entry = next(e for e in listed["data"] if e["id"] == name)
    max_len = entry.get("max_model_len")
    if not isinstance(max_len, int) or max_len < 2:
        raise EvalkitError(
            f"server {endpoint.url} gives no max_model_len for {name!r} in /v1/models: not a vLLM server?"
        )
    version = endpoint.call("GET", "/version", what="/version", missing_ok=True)
    endpoint.version = version.get("version") if isinstance(version, dict) else None
    body = {"model": name, "prompt": PROBE_TEXT, "add_special_tokens": False}
    tokenized = endpoint.call(
        "POST", "/tokenize", body, what="the tokenizer check (/tokenize)", missing_ok=True
    )
    check = "no /tokenize"
    if tokenized is not None:
        theirs = list(tokenized.get("tokens", []))
        if theirs != probe_ids:
            first = next(
                (i for i, (a, b) in enumerate(zip(theirs, probe_ids)) if a != b),
                min(len(theirs), len(probe_ids)),
            )
            raise EvalkitError(
                f"server {endpoint.url}: its tokenizer disagrees with --model's on a prompt-shaped text "
                f"({len(theirs)} vs {len(probe_ids)} tokens, first difference at token {first}): it does not "
                f"serve the checkpoint --model names"
            )
        check = "agrees"
    try:
        endpoint.letter_logprobs(name, probe_ids, letter_ids, what="the probe request", echo=True)
    except MissingLetters as exc:
        raise EvalkitError(f"{exc} (vLLM >= 0.32 is needed)") from exc
    except ServerDown as exc:
        raise EvalkitError(f"server {endpoint.url} does not answer the probe request: {exc}") from exc
    return {"name": name, "max_model_len": max_len, "version": endpoint.version, "tokenizer": check}


def probe_letters(tokenizer: Any) -> list[int]:
    """Four distinct ids for the probe request before the run's letters are known: " A".." D" as the
    tokenizer ends a text with them (the scorer probes again with the run's own letters)."""
    ids = [tokenizer.encode(f"Answer: {letter}", add_special_tokens=False)[-1] for letter in "ABCD"]
    return ids if len(set(ids)) == 4 else [0, 1, 2, 3]


def connect(settings: ServerSettings, tokenizer: Any) -> ServedModel:
    """Every server of `settings` checked against `tokenizer` (module docstring): a ServedModel."""
    check_settings(settings)
    probe_ids = list(tokenizer.encode(PROBE_TEXT, add_special_tokens=False))
    letters = probe_letters(tokenizer)
    endpoints = tuple(Endpoint(url, settings, seed=i) for i, url in enumerate(settings.base_urls))
    found = {}
    try:
        for endpoint in endpoints:
            found[endpoint.url] = preflight(endpoint, settings, probe_ids, letters)
    except BaseException:
        for endpoint in endpoints:
            endpoint.close()
        raise
    names = {f["name"] for f in found.values()}
    if len(names) > 1:
        raise EvalkitError(f"the servers serve different models: {', '.join(sorted(names))}")
    lens = {url: f["max_model_len"] for url, f in found.items()}
    return ServedModel(
        config=ServedConfig(max_position_embeddings=min(lens.values())),
        endpoints=endpoints,
        model_name=names.pop(),
        max_model_len=min(lens.values()),
        max_model_lens=lens,
        versions={url: f["version"] for url, f in found.items()},
        tokenizer_checks={url: f["tokenizer"] for url, f in found.items()},
        probe_ids=tuple(probe_ids),
        settings=settings,
    )


def load_for_run(
    source: ModelSource, settings: ServerSettings, precision: str, trust_remote_code: bool = False
):
    """An evalkit.models.loading.LoadedModel for --backend server: the tokenizer of `source` (`--model`:
    the checkpoint the servers run, as every backend loads it) and the checked servers as its `model` (a
    ServedModel); `precision` is the label of the run (the servers decide what they compute in)."""
    from evalkit.models.loading import LoadedModel, load_tokenizer
    from evalkit.store.records import ModelInfo

    started = time.perf_counter()
    tokenizer = load_tokenizer(source, trust_remote_code)
    served = connect(settings, tokenizer)
    versions = sorted({v for v in served.versions.values() if v}) or ["version unknown"]
    info = ModelInfo(
        precision=precision,
        quant_backend="server",
        quant_method="as served",
        device="server",
        source=source.kind,
        weights_format=f"served: {served.model_name} on {len(served.endpoints)} server(s)",
        load_seconds=round(time.perf_counter() - started, 2),
        model_class="served",
        trust_remote_code=trust_remote_code,
        implementation=f"vllm {', '.join(versions)} (server)",
    )
    return LoadedModel(served, tokenizer, source, info)
