"""The served backend's HTTP client against a real local HTTP server (standard library, 127.0.0.1): a
request's timeout bounds the whole exchange, so an answer that drips in never holds a worker; a
prompt answer passes. Every server here answers a bounded number of requests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from evalkit.backends.server.client import Endpoint, ServerDown
from evalkit.types import ServerSettings

ANSWER = json.dumps({"object": "list", "data": [{"id": "m"}]}).encode()
DRIP_S = 0.05  # between two bytes of a dripping answer: each read is quick, the whole is not


def serve(drip: bool, protocol: str = "HTTP/1.1") -> tuple[ThreadingHTTPServer, str]:
    """A server answering GET with ANSWER, all at once or a byte every DRIP_S seconds; HTTP/1.1 keeps
    the connection (as uvicorn does), HTTP/1.0 closes it after each answer."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = protocol

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(ANSWER)))
            self.end_headers()
            for start in range(0, len(ANSWER), 1 if drip else len(ANSWER)):
                try:
                    self.wfile.write(ANSWER[start : start + (1 if drip else len(ANSWER))])
                    self.wfile.flush()
                except OSError:  # the client cut the exchange
                    return
                if drip:
                    time.sleep(DRIP_S)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def servers() -> Iterator[dict[str, str]]:
    running = {
        "prompt": serve(drip=False),
        "drip": serve(drip=True),
        "drip, closing": serve(drip=True, protocol="HTTP/1.0"),
    }
    yield {name: url for name, (_, url) in running.items()}
    for server, _ in running.values():
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("server", ["drip", "drip, closing"])
def test_a_dripping_answer_times_out_as_a_whole(servers, server):
    # every byte comes within the timeout, the whole answer (~len(ANSWER) * DRIP_S = 2 s) does not
    timeout = 10 * DRIP_S
    assert len(ANSWER) * DRIP_S > 4 * timeout
    settings = ServerSettings(base_urls=(servers[server],), timeout_s=timeout, max_retries=1, backoff_s=0.01)
    endpoint = Endpoint(servers[server], settings)
    with pytest.raises(ServerDown, match=r"failed 2 times in a row on the model list: timed out after 0.5 s"):
        endpoint.call("GET", "/v1/models", what="the model list")
    assert (endpoint.stats.requests, endpoint.stats.retries) == (2, 1)


def test_a_prompt_answer_within_the_timeout_is_read_whole(servers):
    settings = ServerSettings(base_urls=(servers["prompt"],), timeout_s=10 * DRIP_S, max_retries=0)
    endpoint = Endpoint(servers["prompt"], settings)
    for _ in range(3):  # the kept-alive connection serves the next request: the deadline did not shut it
        assert endpoint.call("GET", "/v1/models", what="the model list") == json.loads(ANSWER)
    assert (endpoint.stats.requests, endpoint.stats.retries) == (3, 0)
    endpoint.close()
