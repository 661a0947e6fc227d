"""One server's HTTP endpoint: requests with bounded retries, and its counters (requests, retries).

The standard library only (http.client, ssl; never vLLM, no HTTP package: the client runs wherever
evalkit does). Each worker thread keeps its own keep-alive connection to its server. Every request goes
through `Endpoint.call`: connection refused or reset, a timeout, HTTP 429 and 5xx are
retried with exponential backoff and jitter, at most `max_retries` times; any other 4xx and a malformed
answer are an EvalkitError at once (retrying cannot fix a wrong key or a prompt over the context). The
bearer token is read from the environment into the request headers only; every message that
leaves this module passes `redact` and names the endpoint by its sanitized URL. What is asked and how the
answer is read is evalkit.backends.server.protocol.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import random
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from evalkit.backends.server.protocol import VocabLogprobs, completion_body, read_letters
from evalkit.backends.server.settings import read_api_key, sanitize_url
from evalkit.types import EvalkitError, ServerSettings

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
    """A failure another try may cure (refused, reset, timed out, 429, 5xx); `retry_after`: the
    server's Retry-After in seconds, where it gave one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


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
        key = read_api_key(settings)
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
        """One HTTP exchange on this thread's connection; transport failures become Retryable. The
        exchange as a whole has --request-timeout: past it the socket is shut, so an answer dripping
        in a byte at a time ends too (a socket timeout alone bounds each read, not the request)."""
        data = json.dumps(body).encode("utf-8") if body is not None else None
        conn = self._connection()
        cut = threading.Event()
        held: list[socket.socket] = []  # the exchange's socket: a closing answer takes it off `conn`

        def cut_off() -> None:
            cut.set()
            for sock in held or [conn.sock]:
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read

        deadline = threading.Timer(self.settings.timeout_s, cut_off)
        deadline.daemon = True
        deadline.start()
        try:
            conn.request(method, self._root + path, body=data, headers=self._headers)
            held.append(conn.sock)
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, closed mid-answer, timeout
            self._drop()
            if cut.is_set() or isinstance(exc, TimeoutError):
                raise Retryable(f"timed out after {self.settings.timeout_s:g} s") from exc
            raise Retryable(f"{type(exc).__name__}: {self.redact(str(exc))}") from exc
        finally:
            deadline.cancel()
        if cut.is_set():  # cut as the answer ended: it may be whole, but the connection is shut
            self._drop()
            raise Retryable(f"timed out after {self.settings.timeout_s:g} s")
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
        last = Retryable("")
        for attempt in range(attempts):
            if attempt:
                self._count(retry=True)
                if self.stop.wait(self._backoff(attempt, last.retry_after)):
                    raise ServerDown(f"{self.url}: stopped while retrying {what}")
            else:
                self._count(retry=False)
            try:
                response = self._once(method, path, body, what, missing_ok)
            except Retryable as exc:
                last = exc
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
            retry_after = _retry_after(response)
            raise Retryable(f"HTTP {status}", retry_after)
        if status == 404 and missing_ok:
            return None
        if status >= 400:
            hint = " (check --api-key-env and the server's --api-key)" if status in (401, 403) else ""
            raise EvalkitError(
                f"server {self.url} refused {what}: HTTP {status} on {path}: {self._detail(response)}{hint}"
            )
        return response

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with up to 50% jitter (so that many clients do not retry in step), at
        least the server's Retry-After."""
        with self._lock:
            jitter = 1.0 + 0.5 * self._random.random()
        wait = self.settings.backoff_s * 2 ** (attempt - 1) * jitter
        return max(wait, retry_after or 0.0)

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
    ) -> VocabLogprobs:
        """The full-vocabulary log-probs of the four letter ids as the next token after `prompt`; `echo`:
        the server must echo the prompt ids it scored, and they must be ours."""
        body = completion_body(model, prompt, letter_ids, echo=echo)
        answer = self.call("POST", "/v1/completions", body, what=what)
        where = f"server {self.url} (vLLM {self.version or 'version unknown'})"
        return read_letters(answer, prompt, letter_ids, where=where, what=what, echo=echo)


def _retry_after(response: Reply) -> float | None:
    """A 429/503's Retry-After in seconds (the delta form), capped; None where absent or a date."""
    try:
        return min(float(response.headers.get("retry-after", "")), MAX_RETRY_AFTER_S)
    except ValueError:
        return None
