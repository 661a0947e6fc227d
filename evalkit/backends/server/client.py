"""One served model's HTTP endpoint: requests with bounded retries, the letter read, the server's counters.

The standard library only (http.client, ssl; never vLLM, no HTTP package: the client runs wherever
evalkit does). Each worker thread keeps its own keep-alive connection to its server. Every request goes
through `Endpoint.call`: connection refused or reset, a timeout, HTTP 429 and 5xx are
retried with exponential backoff and jitter, at most `max_retries` times; any other 4xx and a malformed
answer are an EvalkitError at once (retrying cannot fix a wrong key or a prompt over the context). The
bearer token is read from the environment into the request headers only; every message that
leaves this module passes `redact` and names the endpoint by its sanitized URL.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import math
import random
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from evalkit.backends.server.settings import ServerSettings, sanitize_url
from evalkit.types import EvalkitError

# vLLM writes a log-prob of -inf as -9999.0 (OpenAI's JSON-safe floor): a letter there is not finite
LOGPROB_FLOOR = -9999.0
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})  # plus every other 5xx
MAX_RETRY_AFTER_S = 30.0  # a 429's Retry-After is honoured up to this
IDLE_REOPEN_S = 2.0  # a kept-alive connection idle this long is reopened (uvicorn closes idle ones at 5 s)


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class Retryable(Exception):
    """A failure another try may cure (refused, reset, timed out, 429, 5xx)."""


class ServerDown(Exception):
    """A request failed 1 + max_retries times in a row: its server is taken out of the run."""


@dataclasses.dataclass
class EndpointStats:
    """What run.json records per server (mutated under Endpoint._lock)."""

    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0  # of which retries
    questions: int = 0  # questions this server's answer was kept for (counted by the scorer)
    down: bool = False  # taken out of the run after exhausting its retries


class Endpoint:
    """One server of the served model: `url` is the sanitized base URL (what records and errors show)."""

    def __init__(self, base_url: str, settings: ServerSettings, *, seed: int = 0):
        self.url = sanitize_url(base_url)
        self.settings = settings
        parts = urlsplit(base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._root = parts.path.rstrip("/").removesuffix("/v1")  # a server behind a path prefix keeps it
        self._headers = {"Accept": "application/json", "Content-Type": "application/json"}
        key = settings.api_key()
        if key is not None:
            self._headers["Authorization"] = f"Bearer {key}"
        self._secrets = [key] if key else []
        self._tls = ssl.create_default_context() if self._https else None
        if self._tls is not None and not settings.verify_tls:  # opted out, and recorded in run.json
            self._tls.check_hostname = False
            self._tls.verify_mode = ssl.CERT_NONE
        self._local = threading.local()  # each thread's (connection, last use)
        self.stats = EndpointStats()
        self._lock = threading.Lock()
        self._random = random.Random(seed)  # jitter: reproducible per endpoint
        self.stop = threading.Event()  # set: abandon retries (the run ended or the server is down)
        self.version: str | None = None  # the server's /version, once the preflight read it

    def close(self) -> None:
        """Close this thread's connection (the workers' connections close with their threads)."""
        self._drop()

    def _connection(self) -> http.client.HTTPConnection:
        conn, used = getattr(self._local, "conn", None), getattr(self._local, "used", 0.0)
        if conn is not None and time.monotonic() - used > IDLE_REOPEN_S:
            conn.close()  # the server may have closed it meanwhile: a reset that is not a fault
            conn = None
        if conn is None:
            timeout = self.settings.timeout_s
            if self._https:
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._tls)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _send(self, method: str, path: str, body: dict | None) -> Reply:
        """One HTTP exchange on this thread's connection; transport failures become Retryable."""
        data = json.dumps(body).encode("utf-8") if body is not None else None
        conn = self._connection()
        try:
            conn.request(method, self._root + path, body=data, headers=self._headers)
            response = conn.getresponse()
            payload = response.read()
        except TimeoutError as exc:  # socket.timeout: connect or a read past --request-timeout
            self._drop()
            raise Retryable(f"timed out after {self.settings.timeout_s:g} s") from exc
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, closed mid-answer
            self._drop()
            raise Retryable(f"{type(exc).__name__}: {self.redact(str(exc))}") from exc
        self._local.used = time.monotonic()
        if response.will_close:
            self._drop()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, payload)

    # ---- one request, with the retry policy ----

    def call(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        *,
        what: str,
        text: bool = False,
        missing_ok: bool = False,
    ) -> Any:
        """The JSON answer (`text`: the body as text) of `method path`, retried on transient failures;
        `what` names the request in errors ("question 3 of subject anatomy"). None on a 404 where
        `missing_ok` (an optional route). Raises ServerDown after 1 + max_retries failed tries, an
        EvalkitError on any other 4xx than 429 or on an answer that is not JSON."""
        attempts = self.settings.max_retries + 1
        last = ""
        for attempt in range(attempts):
            if attempt:
                self._count(retry=True)
                if self.stop.wait(self._backoff(attempt, last)):
                    raise ServerDown(f"{self.url}: stopped while retrying {what}")
            else:
                self._count(retry=False)
            try:
                response = self._once(method, path, body, what, missing_ok)
            except Retryable as exc:
                last = str(exc)
                continue
            if response is None or text:
                return None if response is None else response.text
            try:
                return response.json()
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise EvalkitError(
                    f"server {self.url} answered {what} on {path} with something not JSON"
                ) from exc
        raise ServerDown(f"server {self.url} failed {attempts} times in a row on {what}: {last}")

    def _once(self, method: str, path: str, body: dict | None, what: str, missing_ok: bool) -> Reply | None:
        response = self._send(method, path, body)
        status = response.status
        if status in RETRY_STATUS or status >= 500:
            raise Retryable(f"HTTP {status}{self._retry_after(response)}")
        if status == 404 and missing_ok:
            return None
        if status >= 400:
            hint = " (check --api-key-env and the server's --api-key)" if status in (401, 403) else ""
            raise EvalkitError(
                f"server {self.url} refused {what}: HTTP {status} on {path}: {self._detail(response)}{hint}"
            )
        return response

    def _backoff(self, attempt: int, last: str) -> float:
        """Exponential backoff with up to 50% jitter (so that many clients do not retry in step)."""
        with self._lock:
            jitter = 1.0 + 0.5 * self._random.random()
        wait = self.settings.backoff_s * 2 ** (attempt - 1) * jitter
        if last.startswith("HTTP 429") and "retry after " in last:
            wait = max(wait, float(last.rsplit("retry after ", 1)[1].split(" ")[0]))
        return wait

    @staticmethod
    def _retry_after(response: Reply) -> str:
        value = response.headers.get("retry-after", "")
        try:
            seconds = min(float(value), MAX_RETRY_AFTER_S)
        except ValueError:
            return ""
        return f" (retry after {seconds:g} s)"

    def _detail(self, response: Reply) -> str:
        """The server's own reason, one line, at most 300 characters, with no secret in it."""
        try:
            body = response.json()
            error = body.get("error", body) if isinstance(body, dict) else body
            text = error.get("message", error) if isinstance(error, dict) else error
        except (json.JSONDecodeError, UnicodeDecodeError):
            text = response.text
        line = " ".join(str(text).split())
        return self.redact(line[:300] + ("..." if len(line) > 300 else ""))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _count(self, *, retry: bool) -> None:
        with self._lock:
            self.stats.requests += 1
            self.stats.retries += retry

    # ---- what the scorer and the preflight ask ----

    def letter_logprobs(
        self, model: str, prompt: Sequence[int], letter_ids: Sequence[int], *, what: str, echo: bool = False
    ) -> tuple[float, float, float, float]:
        """The full-vocabulary log-probs of the four letter ids as the next token after `prompt`."""
        body = {
            "model": model,
            "prompt": list(prompt),
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": 1,
            "logprob_token_ids": list(letter_ids),
            "return_tokens_as_token_ids": True,
            "add_special_tokens": False,
        }
        if echo:
            body["return_token_ids"] = True  # the server echoes the prompt ids it scored
        answer = self.call("POST", "/v1/completions", body, what=what)
        where = f"server {self.url} (vLLM {self.version or 'version unknown'})"
        return read_letters(answer, prompt, letter_ids, where=where, what=what, echo=echo)


def read_letters(
    answer: Any, prompt: Sequence[int], letter_ids: Sequence[int], *, where: str, what: str, echo: bool
) -> tuple[float, float, float, float]:
    """The four letters' log-probs out of a /v1/completions answer, or an EvalkitError saying what is off:
    a letter missing (a server that ignores logprob_token_ids answers with at most the top entries),
    a non-finite value, a prompt the server saw differently from ours."""
    try:
        choice = answer["choices"][0]
        step = choice["logprobs"]["top_logprobs"][0]  # {"token_id:N": log-prob} of the one new token
        usage = answer.get("usage") or {}
    except (KeyError, IndexError, TypeError) as exc:
        raise EvalkitError(
            f"{where}: malformed answer to {what} (no choices[0].logprobs.top_logprobs)"
        ) from exc
    if not isinstance(step, dict):
        raise EvalkitError(f"{where}: malformed answer to {what} (top_logprobs[0] is {type(step).__name__})")
    seen = usage.get("prompt_tokens")
    if seen is not None and seen != len(prompt):
        raise EvalkitError(
            f"{where} scored {seen} prompt tokens for {what}, evalkit sent {len(prompt)}: the server adds or "
            f"drops tokens"
        )
    if echo:
        echoed = choice.get("prompt_token_ids")
        if echoed is not None and list(echoed) != list(prompt):
            first = next(
                (i for i, (a, b) in enumerate(zip(echoed, prompt)) if a != b), min(len(echoed), len(prompt))
            )
            raise EvalkitError(
                f"{where} echoed other prompt token ids than evalkit sent for {what} (first difference at "
                f"position {first})"
            )
    values = []
    for token in letter_ids:
        value = step.get(f"token_id:{token}")
        if value is None:
            raise MissingLetters(
                f"{where} gave no log-prob for letter id {token} in {what} (it returned "
                f"{len(step)} entries: {sorted(step)[:5]}): it does not honour logprob_token_ids"
            )
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= LOGPROB_FLOOR:
            raise EvalkitError(f"{where} gave letter id {token} a non-finite log-prob ({value}) in {what}")
        values.append(float(value))
    return (values[0], values[1], values[2], values[3])


class MissingLetters(EvalkitError):
    """The answer lacks a requested letter id: the server ignores `logprob_token_ids` (vLLM < 0.32)."""
