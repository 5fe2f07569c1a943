"""Several servers of one model (`--base_url A,B`): requests spread over them, a dead one's requests go to the others.

    .venv/bin/python -m pytest tests/test_replicas.py -q

The commands run from their command line, in this process, against two loopback servers, one of which dies
mid-run (its port closed and its open connections cut, as when its process is killed): every instruction is
answered, and journaled, exactly once, and with --max_retries 0, since moving a request to a live replica costs
none of its retries.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
from pathlib import Path

import pytest

import eval_model
import generate_instruction
from alpaca_lib.core.errors import UsageError
from alpaca_lib.evaluation.judge import JOURNAL_NAME
from alpaca_lib.evaluation.settings import journal_path
from alpaca_lib.generation.accounting import is_loopback
from alpaca_lib.generation.journal import JOURNAL_NAME as REGEN_JOURNAL
from alpaca_lib.generation.journal import read_journal
from alpaca_lib.generation.runner import GenerateConfig, run_generation
from alpaca_lib.llm.client import CompletionClient, GenerationError
from alpaca_lib.llm.config import ClientConfig, redact_url, split_base_urls
from alpaca_lib.llm.replicas import Replica, Replicas
from conftest import REPO_ROOT, seed_task, write_seed_tasks
from openai_stub import OpenAIStub, Request, Step, chat_body, completion_body

TOKEN = "SECRET-TOKEN-77"


class DyingStub(OpenAIStub):
    """An `OpenAIStub` that answers `answers` requests and dies at the next one: its port is closed and every
    connection to it cut, as when a server's process is killed, while that request waits for its reply."""

    def __init__(self, answers: int, **kw):
        super().__init__(hang_after=answers, **kw)
        self._connections: list[socket.socket] = []
        self.dead = False
        stub = self

        class Handler(self._server.RequestHandlerClass):
            def setup(self):
                super().setup()
                with stub._lock:
                    stub._connections.append(self.connection)
                    if stub.dead:  # accepted just before the port closed
                        _cut(self.connection)

        self._server.RequestHandlerClass = Handler
        self._server.handle_error = lambda *args: None  # a handler writing to its cut connection
        self._killer = threading.Thread(target=lambda: (self.hung.wait(), self.kill()), daemon=True)

    def start(self) -> "DyingStub":
        super().start()
        self._killer.start()
        return self

    def kill(self) -> None:
        with self._lock:
            if self.dead:
                return
            self.dead = True
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for connection in self._connections:
                _cut(connection)
        self._release.set()  # the handler holding the last request returns (its connection is gone)

    def stop(self) -> None:
        self.hung.set()
        self._killer.join()


def _cut(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answered(stub: OpenAIStub) -> int:
    """Requests the stub answered (a dying one does not answer the request it dies at)."""
    return min(len(stub.requests), stub.hang_after) if stub.hang_after is not None else len(stub.requests)


# ---- the value of --base_url ----


def test_a_comma_separates_servers_only_before_an_address():
    assert split_base_urls("http://a:8000/v1,http://b:8000/v1") == ["http://a:8000/v1", "http://b:8000/v1"]
    assert split_base_urls("http://a/v1 , HTTPS://b/v1") == ["http://a/v1", "HTTPS://b/v1"]
    assert split_base_urls("http://a/v1?ids=1,2") == ["http://a/v1?ids=1,2"]  # a comma inside one address
    assert split_base_urls(["http://a/v1", "http://b/v1"]) == ["http://a/v1", "http://b/v1"]
    assert split_base_urls(None) == []
    assert redact_url(f"http://u:pw@a/v1?token={TOKEN},http://b/v1?key={TOKEN}&x") == (
        "http://a/v1?token=***,http://b/v1?key=***&x")
    # A YAML list in a --config file becomes the value one types.
    assert ClientConfig(base_url=["http://a/v1", "http://b/v1"]).base_url == "http://a/v1,http://b/v1"
    with pytest.raises(UsageError) as e:
        ClientConfig(base_url=f"http://127.0.0.1:1/v1,https://?token={TOKEN}").check()
    assert str(e.value) == ("--base_url https://?token=*** is not an http(s) address with a host; pass the server's "
                            "API root, e.g. http://127.0.0.1:8000/v1")
    assert is_loopback("http://127.0.0.1:1/v1,http://localhost:2/v1")
    assert not is_loopback("http://127.0.0.1:1/v1,http://10.0.0.1:2/v1")


# ---- which replica takes a request ----


def test_requests_go_to_the_least_busy_replica_in_turn_and_skip_one_that_is_down():
    now = [0.0]
    a, b, c = (Replica(name, None) for name in "abc")
    replicas = Replicas([a, b, c], backoff_s=1.0, backoff_max_s=4.0, clock=lambda: now[0])
    assert [replicas.pick().url for _ in range(4)] == ["a", "b", "c", "a"]  # none done: in turn
    for r in (a, a, b):
        replicas.release(r)
    assert (a.in_flight, b.in_flight, c.in_flight) == (0, 0, 1)
    assert [replicas.pick().url for _ in range(2)] == ["b", "a"]  # the idle ones, then in turn among equals
    replicas.release(b, ConnectionError("refused"))
    assert (b.failures, b.down_until) == (1, 1.0)
    assert [replicas.pick().url for _ in range(2)] == ["c", "a"]  # b is down; c and a have one in flight
    assert replicas.pick(tried={a, c}).url == "b"  # only b left untried: down, but the one to try
    assert replicas.any_up(tried={a, c}) is False and replicas.any_up(tried={a}) is True
    replicas.release(b, ConnectionError("refused"))
    assert (b.failures, b.down_until) == (2, 2.0)  # down twice as long after a second failure in a row
    now[0] = 2.0
    assert replicas.pick(tried={a, c}).url == "b"  # back up
    replicas.release(b)
    assert (b.failures, b.down_until, b.in_flight) == (0, 0.0, 0)


def test_with_every_replica_down_the_one_back_soonest_is_tried():
    now = [10.0]
    a, b = Replica("a", None), Replica("b", None)
    replicas = Replicas([a, b], backoff_s=1.0, clock=lambda: now[0])
    for r, failures in ((a, 3), (b, 1)):
        for _ in range(failures):
            replicas.pick(tried={b} if r is a else {a})
            replicas.release(r, TimeoutError())
    assert (a.down_until, b.down_until) == (14.0, 11.0)
    assert replicas.pick().url == "b"


# ---- the client ----


class Sleeps(list):
    def __call__(self, s):
        self.append(s)


def test_client_spreads_requests_and_moves_them_off_a_dead_replica_without_a_retry():
    with OpenAIStub() as b, DyingStub(answers=2) as a:
        sleeps = Sleeps()
        client = CompletionClient("m", api_style="completions", base_url=f"{a.base_url},{b.base_url}?token={TOKEN}",
                                  api_key="k", max_retries=0, backoff_s=30.0, sleep=sleeps)
        assert client.base_url == f"{a.base_url}/, {b.base_url}/?token=***"
        replies = [client.complete([f"p{i}"]) for i in range(4)]
        assert [len(a.requests), len(b.requests)] == [2, 2]  # one by one: in turn
        a.kill()
        replies += [client.complete([f"p{i}"]) for i in range(4, 7)]
    assert [r.attempts for r in replies] == [1, 1, 1, 1, 2, 1, 1]  # refused once, then a is left alone
    assert sleeps == []  # moving to b waited for nothing
    assert [len(a.requests), len(b.requests)] == [2, 5]
    assert {r.path for r in b.requests} == {f"/v1/completions?token={TOKEN}"}


def test_when_every_replica_fails_the_error_names_them_all():
    urls = [f"http://127.0.0.1:{_closed_port()}/v1" for _ in range(2)]
    sleeps = Sleeps()
    client = CompletionClient("m", api_style="completions", base_url=",".join(urls), api_key="k", max_retries=1,
                              backoff_s=30.0, sleep=sleeps)
    with pytest.raises(GenerationError) as e:
        client.complete(["p"])
    # Both at once (no wait), then one wait and the replica back first: 3 attempts, 1 retry.
    assert str(e.value) == (f"request failed at every replica ({urls[0]}/, {urls[1]}/), 3 attempts in all, the last at "
                            f"{urls[0]}/ with: APIConnectionError: Connection error.; everything kept so far is saved, "
                            "re-run the same command to resume")
    assert len(sleeps) == 1


# ---- the commands, one replica killed mid-run ----


def _answer(req: Request) -> Step:
    """The answer to instruction "... number i.": "answer i" (a misplaced answer would show)."""
    number = re.search(r"number (\d+)\.", req.body["prompt"]).group(1)
    return Step(body=completion_body([f" answer {number}"]))


def _journal(path: Path, kind: str) -> list[dict]:
    return [rec for rec in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if rec["t"] == kind]


def test_eval_outputs_with_a_replica_killed_mid_run_answers_each_instruction_once(tmp_path):
    records = [{"instruction": f"Name a colour, number {i}."} for i in range(24)]
    (tmp_path / "eval.json").write_text(json.dumps(records))
    out = tmp_path / "o" / "m.json"
    with OpenAIStub(default=_answer) as b, DyingStub(answers=5, default=_answer) as a:
        eval_model.main(["outputs", "--instructions_path", str(tmp_path / "eval.json"), "--output_path", str(out),
                         "--base_url", f"{a.base_url},{b.base_url}", "--model_name", "m", "--max_concurrency", "4",
                         "--max_retries", "0", "--request_timeout", "30"])
    assert a.dead and len(a.requests) >= 6 and len(b.requests) >= 12  # a died holding a request; b took the rest
    assert [r["output"] for r in json.loads(out.read_text())] == [f"answer {i}" for i in range(24)]
    assert sorted(rec["i"] for rec in _journal(journal_path(out), "output")) == list(range(24))  # each once
    assert _answered(a) + len(b.requests) == 24  # nothing answered twice
    # Each answer's journal record names the replica that gave it.
    servers = [rec["server"].rstrip("/") for rec in _journal(journal_path(out), "output")]
    by_server = (servers.count(a.base_url.rstrip("/")), servers.count(b.base_url.rstrip("/")))
    assert by_server == (_answered(a), 24 - _answered(a))


def test_eval_outputs_resumed_with_a_replica_added_asks_only_for_what_is_missing(tmp_path):
    """The servers are not part of a run's identity: a run stopped by its only server's death goes on with another."""
    records = [{"instruction": f"Name a fruit, number {i}."} for i in range(10)]
    (tmp_path / "eval.json").write_text(json.dumps(records))
    out = tmp_path / "m.json"
    args = ["outputs", "--instructions_path", str(tmp_path / "eval.json"), "--output_path", str(out),
            "--model_name", "m", "--max_concurrency", "1", "--max_retries", "0", "--request_timeout", "30"]
    with DyingStub(answers=4, default=_answer) as a:
        with pytest.raises(SystemExit) as stopped:
            eval_model.main([*args, "--base_url", a.base_url])
        assert stopped.value.code == 1
        with OpenAIStub(default=_answer) as b:
            eval_model.main([*args, "--base_url", f"{a.base_url},{b.base_url}"])
    assert [r["output"] for r in json.loads(out.read_text())] == [f"answer {i}" for i in range(10)]
    assert sorted(rec["i"] for rec in _journal(journal_path(out), "output")) == list(range(10))
    assert len(b.requests) == 6


def test_judge_with_replicas_listed_in_a_config_file_and_one_killed_judges_each_pair_once(tmp_path):
    n = 10
    (tmp_path / "ref.json").write_text(json.dumps([{"instruction": f"Q{i}", "output": f"weak {i}"} for i in range(n)]))
    (tmp_path / "model.json").write_text(json.dumps(
        [{"instruction": f"Q{i}", "output": f"GOOD {i}", "generator": "m"} for i in range(n)]))

    def verdict(req: Request) -> Step:
        prompt = req.body["messages"][-1]["content"]
        return Step(body=chat_body("a" if "## Output (a)\nGOOD" in prompt else "b"))

    with OpenAIStub(default=verdict) as b, DyingStub(answers=4, default=verdict) as a:
        (tmp_path / "run.yaml").write_text(f"base_url:\n  - {a.base_url}\n  - {b.base_url}\nmax_retries: 0\n")
        eval_model.main(["judge", "--config", str(tmp_path / "run.yaml"), "--judge_model", "j", "--model_outputs",
                         str(tmp_path / "model.json"), "--reference_outputs", str(tmp_path / "ref.json"),
                         "--output_dir", str(tmp_path / "j"), "--leaderboard", str(tmp_path / "board.csv"),
                         "--max_concurrency", "4", "--request_timeout", "30"])
    assert a.dead and len(b.requests) >= n
    verdicts = _journal(tmp_path / "j" / JOURNAL_NAME, "verdict")
    assert sorted((v["pair"], v["order"]) for v in verdicts) == [(p, o) for p in range(n) for o in (0, 1)]
    assert {v["model_won"] for v in verdicts} == {1}
    assert _answered(a) + len(b.requests) == 2 * n
    assert json.loads((tmp_path / "j" / "summary.json").read_text())["n_wins"] == n


def test_generation_with_a_replica_killed_mid_run_writes_what_one_server_writes(tmp_path, monkeypatch):
    tasks = [seed_task(i, f"Write a {w} about the sea.", "", "An output.")
             for i, w in enumerate(["poem", "story", "song", "letter", "joke"])]
    settings = dict(seed_tasks_path=str(write_seed_tasks(tmp_path / "seeds.jsonl", tasks)),
                    prompt_path=str(REPO_ROOT / "prompt.txt"), num_instructions_to_generate=40, model_name="stub-model",
                    api_style="completions", api_key="k", request_batch_size=4, num_cpus=1, seed=5, save_every_s=0)
    with OpenAIStub() as one:
        run_generation(GenerateConfig(output_dir=str(tmp_path / "one"), base_url=one.base_url, **settings),
                       progress=False)
    out = tmp_path / "two"
    with OpenAIStub() as b, DyingStub(answers=2) as a:
        base_url = f"{a.base_url},{b.base_url}?token={TOKEN}"
        monkeypatch.setattr(sys, "argv", ["generate_instruction.py", "generate_instruction_following_data",
                                          f"--output_dir={out}", f"--base_url={base_url}", "--max_retries=0",
                                          "--request_timeout=30", *(f"--{k}={v}" for k, v in settings.items())])
        generate_instruction.main()
    assert a.dead and _answered(a) == 2 and len(b.requests) >= 2
    assert (out / "regen.json").read_bytes() == (tmp_path / "one" / "regen.json").read_bytes()
    state = read_journal(out / REGEN_JOURNAL)
    slots = sorted((r["batch"], slot) for r in state.requests for slot in r["slots"])
    assert slots == sorted(set(slots)) and len(slots) == _answered(a) + len(b.requests) == len(one.requests)
    start = _journal(out / REGEN_JOURNAL, "start")[0]
    assert start["settings"]["base_url"] == f"{a.base_url},{b.base_url}?token=***"
    assert not [p for p in out.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
