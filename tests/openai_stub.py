"""A real HTTP server on loopback that speaks the OpenAI wire format, scripted per test.

    with OpenAIStub(script=[error(429, "slow down"), completion(["text"])]) as stub:
        client = CompletionClient("gpt-3.5-turbo-instruct", base_url=stub.base_url, api_key="k")

It answers POST /v1/completions and /v1/chat/completions (and GET /v1/models). Each request takes
the next scripted step; when the script is used up, `default` (a function of the request) answers,
by default `fake_model`, a deterministic "model" whose reply depends only on the prompt. Every
request is recorded (path, headers, JSON body). Run it standalone for manual checks:

    python tests/openai_stub.py --port 8123
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Step:
    """One scripted answer: a status, a JSON body (or raw bytes, or `length` bytes of `chunk` repeated, written
    until the client stops reading), headers, and a delay before it."""

    status: int = 200
    body: Any = None
    raw: bytes | None = None
    chunk: bytes | None = None
    length: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: dict


def usage(prompt_tokens: int = 10, completion_tokens: int = 20) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def completion_body(texts: list[str], finish_reasons: list[str] | None = None, prompt_tokens=10, completion_tokens=20) -> dict:
    finish_reasons = finish_reasons or ["stop"] * len(texts)
    return {
        "id": "cmpl-stub",
        "object": "text_completion",
        "created": 1700000000,
        "model": "stub",
        "choices": [
            {"text": t, "index": i, "logprobs": None, "finish_reason": f} for i, (t, f) in enumerate(zip(texts, finish_reasons))
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_body(text: str | None, finish_reason: str = "stop", prompt_tokens=10, completion_tokens=20) -> dict:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "stub",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def completion(texts, finish_reasons=None, **kw) -> Step:
    return Step(body=completion_body(list(texts), finish_reasons, **kw))


def chat(text, finish_reason="stop", **kw) -> Step:
    return Step(body=chat_body(text, finish_reason, **kw))


def error(status: int, message: str, code: str | None = None, headers: dict | None = None, delay_s: float = 0.0) -> Step:
    return Step(
        status=status,
        body={"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error", "param": None, "code": code}},
        headers=headers or {},
        delay_s=delay_s,
    )


_WORDS = (
    "summarize explain rewrite classify translate list compare describe suggest outline convert identify "
    "estimate rank evaluate paraphrase correct generate propose design predict recommend analyze name "
    "the a this following given short long simple formal casual polite detailed brief clear friendly "
    "paragraph sentence poem story email letter recipe review headline slogan tweet essay riddle joke "
    "about of for with into from between using without each every two three five ten several "
    "weather river mountain city garden kitchen library ocean forest planet market school bicycle "
    "violin coffee winter summer history science economy language budget travel holiday football "
    "customer manager student teacher doctor farmer pilot artist engineer chef writer neighbor"
).split()


def fake_items(prompt: str, n_items: int = 6) -> list[tuple[str, str, str]]:
    """Deterministic (instruction, input, output) triples for a prompt."""
    rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
    examples = re.findall(r"^\d+\. Instruction: (.*)$", prompt, flags=re.MULTILINE)
    items = []
    for _ in range(n_items):
        words = rng.sample(_WORDS, rng.randint(5, 11))
        instruction = " ".join(words).capitalize() + "."
        roll = rng.random()
        if roll < 0.08 and examples:
            instruction = examples[0]  # a copy of an example: the ROUGE-L dedup drops it
        elif roll < 0.12:
            instruction = "Draw " + instruction.lower()  # blacklisted word
        elif roll < 0.16:
            instruction = " ".join(words[:3]).capitalize()  # too short
        task_input = "<noinput>" if rng.random() < 0.6 else " ".join(rng.sample(_WORDS, 6))
        output = " ".join(rng.sample(_WORDS, 8)) + "."
        items.append((instruction, task_input, output))
    return items


def fake_reply(prompt: str, n_items: int = 6, repeat_header: bool = False) -> str:
    """A reply continuing the prompt's numbered list, as a completion model would write it."""
    m = re.search(r"(\d+)\. Instruction:$", prompt)
    start = int(m.group(1)) if m else 1
    parts = []
    for j, (ins, inp, out) in enumerate(fake_items(prompt, n_items)):
        n = start + j
        head = f" {ins}" if j == 0 and not repeat_header else f"{n}. Instruction: {ins}"
        parts.append(f"{head}\n{n}. Input:\n{inp}\n{n}. Output:\n{out}\n")
    return "###\n".join(parts) + "###\n"


def fake_model(req: Request) -> Step:
    """Answers any completions/chat request deterministically from its prompt(s)."""
    body = req.body
    if req.path.endswith("/chat/completions"):
        prompt = body["messages"][-1]["content"]
        text = fake_reply(prompt, repeat_header=True)
        return chat(text, prompt_tokens=len(prompt.split()), completion_tokens=len(text.split()))
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    texts = [fake_reply(p) for p in prompts]
    return completion(texts, prompt_tokens=sum(len(p.split()) for p in prompts), completion_tokens=sum(len(t.split()) for t in texts))


class OpenAIStub:
    """The server. Use as a context manager; `base_url` ends in /v1.

    Args:
        script: steps answered in order, one per request.
        default: answers requests once the script is used up (default: fake_model).
        hang_after: after this many requests, hold every further request until stop() and set
            `hung` (a kill-mid-run test waits on it).
    """

    def __init__(self, script: list[Step] | None = None, default: Callable[[Request], Step] = fake_model, hang_after: int | None = None):
        self.script = list(script or [])
        self.default = default
        self.hang_after = hang_after
        self.hung = threading.Event()
        self._release = threading.Event()
        self.requests: list[Request] = []
        self.bytes_sent = 0  # of the bodies of `chunk` steps
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, step: Step) -> None:
                data = step.raw if step.raw is not None else json.dumps(step.body).encode()
                try:
                    self.send_response(step.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(step.length if step.chunk is not None else len(data)))
                    for k, v in step.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    if step.chunk is None:
                        self.wfile.write(data)
                        return
                    for _ in range(step.length // len(step.chunk)):
                        self.wfile.write(step.chunk)
                        stub.bytes_sent += len(step.chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)
                if step.chunk is not None:
                    self.close_connection = True

            def do_GET(self):
                self._send(Step(body={"object": "list", "data": [{"id": "stub", "object": "model", "created": 0, "owned_by": "stub"}]}))

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(n) or b"{}")
                req = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with stub._lock:
                    stub.requests.append(req)
                    count = len(stub.requests)
                    step = stub.script.pop(0) if stub.script else None
                if stub.hang_after is not None and count > stub.hang_after:
                    stub.hung.set()
                    stub._release.wait()
                    return
                if step is None:
                    step = stub.default(req)
                if step.delay_s:
                    if stub._release.wait(step.delay_s):
                        return
                self._send(step)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> "OpenAIStub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "OpenAIStub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8123)
    args = ap.parse_args()
    stub = OpenAIStub()
    stub._server.server_close()
    stub._server = ThreadingHTTPServer(("127.0.0.1", args.port), stub._server.RequestHandlerClass)
    print(f"serving on http://127.0.0.1:{args.port}/v1")
    try:
        stub._server.serve_forever()
    except KeyboardInterrupt:
        pass
