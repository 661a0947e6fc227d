"""One quick reachability check of the Hugging Face hub before anything is fetched from it.

Without a network, transformers and datasets retry every file five times with back-off (about 25 s
per file, each retry logged twice); evalkit asks once, with a short timeout, through
huggingface_hub's own HTTP client (so proxies and HF_ENDPOINT apply), and either fails with one
EvalkitError naming the local alternative, or — when the model is in the local hub cache — switches
the libraries to offline mode so that they read the cache at once. No torch here: data.py uses it.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

from evalkit.types import EvalkitError

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 5.0  # one HEAD request to the endpoint; the hub answers in well under a second


def _offline() -> bool:
    """Whether the user asked for offline mode (HF_HUB_OFFLINE=1): the libraries then read the cache only."""
    from huggingface_hub import constants

    datasets_config = sys.modules.get("datasets.config")
    return bool(constants.HF_HUB_OFFLINE or getattr(datasets_config, "HF_HUB_OFFLINE", False))


@functools.cache
def unreachable_reason(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why `endpoint` cannot be reached (the transport error), or None when it answers at all."""
    from huggingface_hub import get_session

    session = get_session()
    # the client is httpx (or requests in older releases): catch its transport errors, not everything
    transport = sys.modules[type(session).__module__.partition(".")[0]]
    names = ("HTTPError", "RequestException")
    errors = tuple(getattr(transport, name) for name in names if hasattr(transport, name))
    try:
        session.head(endpoint, timeout=timeout)
    except (OSError, *errors) as exc:
        return str(exc) or type(exc).__name__
    return None  # any HTTP status means the hub is there


def _go_offline() -> None:
    """Make huggingface_hub, transformers and datasets read their caches only, for this process."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True


def require_hub_model(repo_id: str) -> None:
    """Before a hub model or tokenizer is fetched: fail fast and once when the hub is out of reach."""
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    if _offline():
        if not cached:
            raise EvalkitError(
                f"HF_HUB_OFFLINE is set and {repo_id!r} is not in the local hub cache; "
                "pass its local directory or .gguf file as --model"
            )
        return
    reason = unreachable_reason(constants.ENDPOINT)
    if reason is None:
        return
    if cached:
        log.warning(
            "the Hugging Face hub (%s) is unreachable (%s): using the cached copy of %s",
            constants.ENDPOINT,
            reason,
            repo_id,
        )
        _go_offline()
        return
    raise EvalkitError(
        f"cannot reach the Hugging Face hub ({constants.ENDPOINT}: {reason}) to download "
        f"{repo_id!r}, and it is not in the local hub cache; download it elsewhere and pass "
        "its local directory or .gguf file as --model"
    )


def require_hub_dataset(hub_id: str, remedy: str) -> None:
    """Before a hub dataset is loaded: fail fast and once when the hub is out of reach."""
    from huggingface_hub import constants

    if _offline():
        return
    reason = unreachable_reason(constants.ENDPOINT)
    if reason is not None:
        raise EvalkitError(
            f"cannot reach the Hugging Face hub ({constants.ENDPOINT}: {reason}) to load "
            f"{hub_id}; {remedy} (or set HF_HUB_OFFLINE=1 to read a cached copy)"
        )
