"""The OpenAI-compatible client against a real loopback server: both APIs, retries, errors.

    .venv/bin/python -m pytest tests/test_generate_client.py -q
"""

from __future__ import annotations

import pytest

from alpaca_lib.generation.postprocess import STOP_SEQUENCES
from alpaca_lib.llm.client import CompletionClient, GenerationError
from openai_stub import OpenAIStub, Step, chat, completion, error


class Sleeps(list):
    def __call__(self, s):
        self.append(s)


def _client(stub, model="gpt-3.5-turbo-instruct", **kw):
    """A client set up as the generator sets it up (the original's stop sequences)."""
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("stop", STOP_SEQUENCES)
    return CompletionClient(model, base_url=stub.base_url, api_key="test-key", backoff_s=0.01, **kw)


def test_completions_happy_path_sends_the_original_request():
    with OpenAIStub([completion([" Tell a joke.\n4. Input:\n<noinput>\n4. Output:\nHa."], prompt_tokens=7, completion_tokens=11)]) as stub:
        reply = _client(stub).complete(["PROMPT 4. Instruction:"], seed=42)
    (req,) = stub.requests
    assert req.path == "/v1/completions"
    assert req.headers["authorization"] == "Bearer test-key"
    assert req.body == {
        "model": "gpt-3.5-turbo-instruct",
        "prompt": "PROMPT 4. Instruction:",
        "max_tokens": 3072,
        "temperature": 1.0,
        "top_p": 1.0,
        "stop": ["\n20", "20.", "20."],
        "logit_bias": {"100257": -100},
        "seed": 42,
    }
    assert [(c.text, c.finish_reason) for c in reply.choices] == [(" Tell a joke.\n4. Input:\n<noinput>\n4. Output:\nHa.", "stop")]
    assert reply.usage == {"prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18}
    assert reply.attempts == 1 and reply.max_tokens == 3072


def test_completions_several_prompts_in_one_request_keep_prompt_order():
    body = completion(["first", "second"], ["stop", "length"]).body
    body["choices"].reverse()  # servers may list choices in any order; `index` says which is which
    with OpenAIStub([Step(body=body)]) as stub:
        reply = _client(stub, model="local-model", api_style="completions").complete(["p0", "p1"])
    assert stub.requests[0].body["prompt"] == ["p0", "p1"]
    assert "logit_bias" not in stub.requests[0].body  # an unknown vocabulary: no token ids sent
    assert [(c.text, c.finish_reason) for c in reply.choices] == [("first", "stop"), ("second", "length")]


def test_chat_happy_path():
    with OpenAIStub([chat("4. Instruction: Name a fruit.", prompt_tokens=5, completion_tokens=6)]) as stub:
        client = _client(stub, model="gpt-4o-mini")
        reply = client.complete(["PROMPT"], seed=None)
    (req,) = stub.requests
    assert client.api_style == "chat" and req.path == "/v1/chat/completions"
    assert req.body == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "PROMPT"}],
        "max_tokens": 3072,
        "temperature": 1.0,
        "top_p": 1.0,
        "stop": ["\n20", "20.", "20."],
    }
    assert reply.choices[0].text == "4. Instruction: Name a fruit." and reply.usage["total_tokens"] == 11


def test_chat_with_null_content_is_an_empty_reply():
    with OpenAIStub([chat(None, "content_filter")]) as stub:
        reply = _client(stub, model="gpt-4o-mini").complete(["PROMPT"])
    assert (reply.choices[0].text, reply.choices[0].finish_reason) == ("", "content_filter")


def test_429_then_success_honours_retry_after():
    sleeps = Sleeps()
    with OpenAIStub([error(429, "Rate limit reached", "rate_limit_exceeded", headers={"Retry-After": "2"}), completion(["ok"])]) as stub:
        reply = _client(stub, sleep=sleeps).complete(["p"])
    assert len(stub.requests) == 2 and reply.attempts == 2 and reply.choices[0].text == "ok"
    assert sleeps == [2.0]


def test_500s_are_retried_with_growing_backoff_then_succeed():
    sleeps = Sleeps()
    with OpenAIStub([error(500, "boom"), error(502, "bad gateway"), error(503, "overloaded"), completion(["ok"])]) as stub:
        reply = _client(stub, sleep=sleeps, max_retries=3).complete(["p"])
    assert reply.attempts == 4 and len(stub.requests) == 4
    # Exponential backoff with jitter in [0.5, 1] x 0.01 * 2**attempt.
    assert all(0.005 * 2**i <= s <= 0.01 * 2**i for i, s in enumerate(sleeps)) and len(sleeps) == 3


def test_retries_are_bounded():
    with OpenAIStub([error(500, "boom")] * 3) as stub:
        with pytest.raises(GenerationError, match=r"failed 3 times, last with: InternalServerError: Error code: 500 - boom.*re-run the same command"):
            _client(stub, max_retries=2).complete(["p"])
    assert len(stub.requests) == 3


def test_timeout_is_retried():
    with OpenAIStub([Step(body=completion(["late"]).body, delay_s=3.0), completion(["ok"])]) as stub:
        reply = _client(stub, request_timeout=0.3).complete(["p"])
    assert reply.choices[0].text == "ok" and reply.attempts == 2


def test_malformed_replies_are_retried_then_reported():
    steps = [Step(raw=b"<html>not json</html>"), Step(body={"id": "x", "object": "text_completion", "choices": []}), completion(["ok"])]
    with OpenAIStub(steps) as stub:
        reply = _client(stub).complete(["p"])
    assert reply.choices[0].text == "ok" and reply.attempts == 3
    with OpenAIStub([Step(body={"choices": [{"index": 0, "finish_reason": "stop"}]})] * 2) as stub:
        with pytest.raises(GenerationError, match="a choice has no text"):
            _client(stub, max_retries=1).complete(["p"])


def test_context_length_error_shrinks_max_tokens_and_remembers_it():
    too_long = "This model's maximum context length is 4097 tokens, however you requested 5000 tokens. Please reduce your prompt; or completion length."
    steps = [error(400, too_long, "context_length_exceeded"), error(400, too_long), completion(["ok"]), completion(["next"])]
    with OpenAIStub(steps) as stub:
        client = _client(stub)
        reply = client.complete(["p"])
        client.complete(["p"])
    assert [r.body["max_tokens"] for r in stub.requests] == [3072, 2457, 1965, 1965]
    assert reply.max_tokens == 1965 and client.max_tokens == 1965


def test_non_retryable_errors_stop_at_once_with_a_hint():
    with OpenAIStub([error(401, "Incorrect API key provided")]) as stub:
        with pytest.raises(GenerationError, match="OPENAI_API_KEY"):
            _client(stub).complete(["p"])
    assert len(stub.requests) == 1
    with OpenAIStub([error(404, "The model `nope` does not exist")]) as stub:
        with pytest.raises(GenerationError, match="check --model_name"):
            _client(stub, model="nope").complete(["p"])
    assert len(stub.requests) == 1
    with OpenAIStub([error(400, "Invalid value for temperature")]) as stub:
        with pytest.raises(GenerationError, match="rejected the request"):
            _client(stub).complete(["p"])
    assert len(stub.requests) == 1


def test_environment_is_read_when_the_client_is_made(monkeypatch):
    with OpenAIStub([completion(["ok"])]) as stub:
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "env-key")
        monkeypatch.setenv("OPENAI_ORG", "org-from-env")
        CompletionClient("gpt-3.5-turbo-instruct", sleep=Sleeps()).complete(["p"])
    headers = stub.requests[0].headers
    assert headers["authorization"] == "Bearer env-key" and headers["openai-organization"] == "org-from-env"


def test_missing_key_is_an_error_only_for_openai(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(GenerationError, match="no OpenAI API key"):
        CompletionClient("gpt-4o-mini")
    with OpenAIStub([chat("ok")]) as stub:
        CompletionClient("local", base_url=stub.base_url, sleep=Sleeps()).complete(["p"])
    assert stub.requests[0].headers["authorization"] == "Bearer no-key"


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="api_style"):
        CompletionClient("m", api_style="responses", base_url="http://127.0.0.1:9/v1", api_key="k")
    with pytest.raises(ValueError, match="max_tokens"):
        CompletionClient("m", max_tokens=0, base_url="http://127.0.0.1:9/v1", api_key="k")


def test_a_reply_over_max_reply_bytes_is_not_read_on_nor_retried():
    """A server that announces a 10 GB body: the client reads 1 MB of it, reports its size and first bytes,
    and asks no more (reading it whole would take minutes and 10 GB of memory)."""
    length = 10 * 2**30
    with OpenAIStub([Step(chunk=b'{"choices": [' + b" " * 65523, length=length)]) as stub:
        reply = _client(stub, max_reply_bytes=2**20).complete(["p0", "p1"])
    assert len(stub.requests) == 1 and reply.attempts == 1 and reply.usage == {}
    assert [(c.size, c.text) for c in reply.choices] == [(length, '{"choices": [' + " " * 4083)] * 2
    assert stub.bytes_sent < 64 * 2**20  # what the socket buffers held when the client hung up


def test_a_200_with_an_error_body_shows_the_servers_message():
    body = {"error": {"message": "upstream model is loading", "type": "server_error", "code": 503}}
    with OpenAIStub([Step(body=body)] * 2) as stub:
        with pytest.raises(GenerationError) as e:
            _client(stub, max_retries=1).complete(["p"])
    assert str(e.value) == (
        f"request to {stub.base_url}/ failed 2 times, last with: the server answered 200 with an error: "
        "upstream model is loading; everything kept so far is saved, re-run the same command to resume")
