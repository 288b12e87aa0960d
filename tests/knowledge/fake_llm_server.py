"""A real HTTP server that plays an OpenAI-compatible chat-completions LLM from a script.

``FakeLLMServer`` is a ``http.server.ThreadingHTTPServer`` on ``127.0.0.1`` (port 0 = any free
port) served from a background thread. Each POST to ``/v1/chat/completions`` pops the next
behaviour from the script (or asks ``responder(body)`` when the script is empty):

* :func:`answer` - HTTP 200 with ``content`` (a dict is JSON-encoded) and ``usage``;
* :func:`raw` - HTTP 200 with arbitrary content text (e.g. malformed JSON);
* :func:`http_error` - an error status (500, 429, ...) with optional headers (``Retry-After``);
* :func:`hang` - no answer for ``seconds`` (longer than the client timeout), then a late reply.

Every request is recorded (path, headers, parsed JSON body); ``max_in_flight`` is the largest
number of requests being handled at once. The ``fake_llm`` pytest fixture starts and stops it.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional

import pytest


@dataclass
class Behaviour:
    kind: str                      # "answer" | "error" | "hang"
    content: Optional[str] = None  # assistant content for "answer"
    status: int = 200
    headers: Dict[str, str] = field(default_factory=dict)
    usage: Optional[Dict[str, int]] = None
    delay: float = 0.0             # seconds to wait before answering
    body: str = ""                 # error body


def answer(content: Any, prompt_tokens: int = 10, completion_tokens: int = 5,
           delay: float = 0.0) -> Behaviour:
    text = content if isinstance(content, str) else json.dumps(content)
    return Behaviour("answer", content=text, delay=delay,
                     usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                            "total_tokens": prompt_tokens + completion_tokens})


def raw(text: str, prompt_tokens: int = 10, completion_tokens: int = 5) -> Behaviour:
    return answer(text, prompt_tokens, completion_tokens)


def http_error(status: int, retry_after: Optional[str] = None, body: str = "") -> Behaviour:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Behaviour("error", status=status, headers=headers,
                     body=body or json.dumps({"error": {"message": f"scripted {status}"}}))


def hang(seconds: float) -> Behaviour:
    return Behaviour("hang", delay=seconds)


@dataclass
class RecordedRequest:
    path: str
    headers: Dict[str, str]
    body: Any


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        pass

    def do_POST(self) -> None:  # noqa: N802
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length)
        try:
            body = json.loads(raw_body.decode("utf-8"))
        except ValueError:
            body = raw_body.decode("utf-8", "replace")
        with fake.lock:
            fake.requests.append(RecordedRequest(self.path, dict(self.headers.items()), body))
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            behaviour = fake.script.pop(0) if fake.script else None
        counted = [True]

        def done() -> None:
            # a request stops counting as in flight BEFORE its response is written: the client
            # can only start another one after reading this response, so the count never
            # exceeds the client's real concurrency (decrementing after the write raced)
            if counted[0]:
                counted[0] = False
                with fake.lock:
                    fake.in_flight -= 1

        try:
            if behaviour is None:
                behaviour = fake.responder(body) if fake.responder else http_error(
                    599, body="fake server: script exhausted")
            if behaviour.kind == "hang":
                fake.stopping.wait(behaviour.delay)
                done()
                self._send(200, {"error": "too late"}, {})
                return
            if behaviour.delay:
                fake.stopping.wait(behaviour.delay)
            if behaviour.kind == "error":
                done()
                self._send(behaviour.status, behaviour.body, behaviour.headers)
                return
            with fake.lock:
                fake.counter += 1
                n = fake.counter
            envelope = {"id": f"chatcmpl-{n}", "object": "chat.completion",
                        "model": body.get("model") if isinstance(body, dict) else None,
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant",
                                                 "content": behaviour.content}}],
                        "usage": behaviour.usage}
            done()
            self._send(200, envelope, {})
        except (BrokenPipeError, ConnectionResetError):  # client gave up (timeout)
            pass
        finally:
            done()

    def _send(self, status: int, payload: Any, headers: Dict[str, str]) -> None:
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: "FakeLLMServer"


class FakeLLMServer:
    """Scripted OpenAI-compatible server; see the module docstring."""

    def __init__(self, responder: Optional[Callable[[Any], Behaviour]] = None):
        self.lock = threading.Lock()
        self.script: List[Behaviour] = []
        self.responder = responder
        self.requests: List[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.counter = 0
        self.stopping = threading.Event()
        self._httpd: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    def enqueue(self, *behaviours: Behaviour) -> "FakeLLMServer":
        with self.lock:
            self.script.extend(behaviours)
        return self

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> "FakeLLMServer":
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


@pytest.fixture
def fake_llm():
    server = FakeLLMServer().start()
    try:
        yield server
    finally:
        server.stop()
