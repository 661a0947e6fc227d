"""`--backend server` settings: which servers, how hard to drive them, how to authenticate.

Import-light on purpose (stdlib only): the CLI checks these before anything loads, in environments
without torch or vLLM. None of these fields changes a score (the server computes what an in-process
engine would), so RunConfig holds them as `server` outside the config hash.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

from evalkit.types import EvalkitError, ServerSettings

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def read_api_key(settings: ServerSettings) -> str | None:
    """The key from the environment variable the settings name, read at use (never kept anywhere)."""
    if settings.api_key_env is None:
        return None
    key = os.environ.get(settings.api_key_env)
    if not key:
        raise EvalkitError(
            f"--api-key-env {settings.api_key_env}: that environment variable is not set (or empty)"
        )
    return key


def sanitize_url(url: str) -> str:
    """`url` as it may be recorded and printed: no user:password@, no query string, no fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def check_settings(settings: ServerSettings) -> None:
    """Refuse bad settings before anything loads: one EvalkitError naming the bad value."""
    if not settings.base_urls:
        raise EvalkitError("--backend server needs at least one --base-url (e.g. http://node1:8000)")
    seen: set[str] = set()
    for url in settings.base_urls:
        try:
            parts = urlsplit(url)
            port = parts.port  # raises ValueError on a bad port
        except ValueError as exc:
            raise EvalkitError(f"--base-url {sanitize_url(url)!r}: {exc}") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EvalkitError(
                f"--base-url {sanitize_url(url)!r} is not an http(s) URL with a host (e.g. http://node1:8000)"
            )
        if parts.username or parts.password:
            raise EvalkitError(
                f"--base-url {sanitize_url(url)!r}: credentials in a URL are not taken (they would end up in "
                f"logs); put the key in an environment variable and name it with --api-key-env"
            )
        if parts.query or parts.fragment:
            raise EvalkitError(f"--base-url {sanitize_url(url)!r}: a base URL takes no query string")
        key = f"{parts.scheme}://{parts.hostname}:{port}{parts.path.rstrip('/').removesuffix('/v1')}"
        if key in seen:
            raise EvalkitError(f"--base-url {sanitize_url(url)!r} is given twice")
        seen.add(key)
    if settings.concurrency < 1:
        raise EvalkitError(f"--concurrency must be at least 1, got {settings.concurrency}")
    if settings.max_retries < 0:
        raise EvalkitError(f"--max-retries must be 0 or more, got {settings.max_retries}")
    if not settings.timeout_s > 0:
        raise EvalkitError(f"--request-timeout must be positive, got {settings.timeout_s}")
    if settings.model is not None and not settings.model.strip():
        raise EvalkitError("--served-model-name is empty")
    if settings.api_key_env is not None:
        if not ENV_NAME.match(settings.api_key_env):
            raise EvalkitError(  # the value is not echoed: it may be the key itself, passed by mistake
                "--api-key-env takes the NAME of an environment variable holding the key "
                "(e.g. VLLM_API_KEY), and what was given is not a variable name"
            )
        read_api_key(settings)
