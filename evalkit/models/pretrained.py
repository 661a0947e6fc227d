"""`from_pretrained` on a ModelSource: the one call that reaches the hub or runs a repository's code.

A hub source gets one quick reachability check first (evalkit.models.source.require_hub); a failure
ends in one EvalkitError that says what failed: remote code that raised under --trust-remote-code
(naming the architecture when evalkit runs it natively), or a checkpoint transformers refuses, with
the advice to point evalkit at a local copy when the source is a hub id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evalkit.models.source import ModelSource, hub_hint, require_hub
from evalkit.types import EvalkitError


def _remote_code_error(loader: Any, source: ModelSource, exc: Exception) -> EvalkitError:
    """One error for a tokenizer or model whose repository code raised under --trust-remote-code."""
    import transformers
    from transformers import PretrainedConfig

    from evalkit.models.baichuan.checkpoint import known_architectures

    what = "tokenizer" if "Tokenizer" in getattr(loader, "__name__", "") else "model"
    line = (str(exc).strip().splitlines() or [""])[0]
    message = (
        f"the {what} of {source.location!r} failed to load with --trust-remote-code (its repository "
        f"code, under transformers {transformers.__version__}): {type(exc).__name__}: {line}"
    )
    try:
        config, _ = PretrainedConfig.get_config_dict(source.location)
    except (OSError, ValueError):
        config = {}
    tokenizer_file = Path(source.location) / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_file.read_text()) if tokenizer_file.is_file() else {}
    known = known_architectures(config, tokenizer_config)
    if known:
        message += (
            f"; {' / '.join(known)} is an architecture evalkit runs natively: pass its local "
            f"checkpoint directory, without --trust-remote-code"
        )
    return EvalkitError(message)


def from_pretrained(loader: Any, source: ModelSource, **kwargs: Any) -> Any:
    """`loader.from_pretrained(source.location, gguf_file=..., **kwargs)` (AutoTokenizer, AutoConfig,
    AutoModelForCausalLM), its failures turned into one EvalkitError."""
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    require_hub(source)
    try:
        return loader.from_pretrained(source.location, **kwargs)
    except Exception as exc:  # remote code may raise anything: one error naming what failed
        if kwargs.get("trust_remote_code") and not isinstance(exc, OSError):
            raise _remote_code_error(loader, source, exc) from exc
        # ImportError: a quantized checkpoint's kernels; ValueError: a config or checkpoint transformers
        # refuses (unknown model type, code it would have to run without --trust-remote-code)
        if not isinstance(exc, (OSError, ImportError, ValueError)):
            raise
        reason = " ".join(str(exc).split())  # transformers' messages span lines; `error:` is one
        raise EvalkitError(f"could not load {source.location!r}{hub_hint(source)}: {reason}") from exc
