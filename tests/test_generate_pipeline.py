"""The whole generator against a loopback OpenAI-compatible server: output, accounting, resume.

    .venv/bin/python -m pytest tests/test_generate_pipeline.py -q
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from alpaca_lib.core.locking import LOCK_NAME
from alpaca_lib.data.json_reader import load_records
from alpaca_lib.generation.export import export_alpaca
from alpaca_lib.generation.journal import JOURNAL_NAME, read_journal
from alpaca_lib.generation.runner import GenerateConfig, run_generation
from alpaca_lib.llm.client import GenerationError
from conftest import REPO_ROOT, seed_task, write_seed_tasks
from openai_stub import OpenAIStub, Step, chat, completion, fake_model, fake_reply

SEED_INSTRUCTIONS = [
    "Give three tips for staying healthy.",
    "Translate the sentence into French.",
    "Summarize the paragraph in one sentence.",
    "Classify the review as positive or negative.",
    "Suggest a name for a bakery.",
    "Explain why the sky is blue.",
    "Rewrite the text in a formal tone.",
    "List the prime numbers below twenty.",
]


@pytest.fixture
def seeds(tmp_path) -> Path:
    tasks = [seed_task(i, ins, "Some input text." if i % 3 == 0 else "", "An output.")
             for i, ins in enumerate(SEED_INSTRUCTIONS)]
    return write_seed_tasks(tmp_path / "seeds.jsonl", tasks)


def _cfg(out, seeds, stub, **kw) -> GenerateConfig:
    base = dict(
        output_dir=str(out),
        seed_tasks_path=str(seeds),
        prompt_path=str(REPO_ROOT / "prompt.txt"),
        num_instructions_to_generate=40,
        model_name="stub-model",
        api_style="completions",
        base_url=stub.base_url,
        api_key="k",
        request_batch_size=3,
        num_cpus=2,
        seed=7,
        backoff_s=0.01,
        save_every_s=0,
    )
    base.update(kw)
    return GenerateConfig(**base)


def _fake_usage(req) -> tuple[int, int]:
    prompts = [req.body["messages"][-1]["content"]] if "messages" in req.body else (
        req.body["prompt"] if isinstance(req.body["prompt"], list) else [req.body["prompt"]]
    )
    texts = [fake_reply(p, repeat_header="messages" in req.body) for p in prompts]
    return sum(len(p.split()) for p in prompts), sum(len(t.split()) for t in texts)


def _regen(out) -> list[dict]:
    return json.loads((Path(out) / "regen.json").read_text(encoding="utf-8"))


def _check_accounting(summary, stub_requests, items):
    assert summary["raw_items"] == summary["kept"] + sum(summary["discarded"].values())
    assert summary["candidates"] == summary["kept"] + summary["discarded"]["similar"]
    assert summary["kept"] == len(items)
    prompt_tokens = sum(_fake_usage(r)[0] for r in stub_requests)
    completion_tokens = sum(_fake_usage(r)[1] for r in stub_requests)
    assert (summary["prompt_tokens"], summary["completion_tokens"]) == (prompt_tokens, completion_tokens)
    assert summary["total_tokens"] == prompt_tokens + completion_tokens


@pytest.mark.parametrize("api_style", ["completions", "chat"])
def test_end_to_end_output_and_accounting(tmp_path, seeds, api_style):
    with OpenAIStub() as stub:
        summary = run_generation(_cfg(tmp_path / "out", seeds, stub, api_style=api_style), progress=False)
    items = _regen(tmp_path / "out")
    assert len(items) >= 40
    assert all(list(it) == ["instruction", "input", "output", "most_similar_instructions", "avg_similarity_score"] for it in items)
    # Item i was compared with the 8 seeds and the i items kept before it.
    assert [len(it["most_similar_instructions"]) for it in items] == [min(10, 8 + i) for i in range(len(items))]
    assert all(0 < it["avg_similarity_score"] < 0.7 for it in items)
    assert len({it["instruction"] for it in items}) == len(items)
    assert not set(SEED_INSTRUCTIONS) & {it["instruction"] for it in items}
    _check_accounting(summary, stub.requests, items)
    assert summary["requests"] == len(stub.requests) == summary["prompts"] and summary["retries"] == 0
    assert summary["discarded"]["similar"] > 0  # the fake model copies examples now and then
    path = "/v1/chat/completions" if api_style == "chat" else "/v1/completions"
    assert {r.path for r in stub.requests} == {path}
    kinds = [json.loads(line)["t"] for line in (tmp_path / "out" / JOURNAL_NAME).read_text().splitlines()]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("request") == len(stub.requests)


def test_chat_replies_with_and_without_the_repeated_header_give_the_same_data(tmp_path, seeds):
    def no_header(req):
        prompt = req.body["messages"][-1]["content"]
        return chat(fake_reply(prompt, repeat_header=False))

    with OpenAIStub() as stub:
        run_generation(_cfg(tmp_path / "a", seeds, stub, api_style="chat"), progress=False)
    with OpenAIStub(default=no_header) as stub:
        run_generation(_cfg(tmp_path / "b", seeds, stub, api_style="chat"), progress=False)
    assert _regen(tmp_path / "a") == _regen(tmp_path / "b")


def test_same_seed_same_data_and_batched_prompts_change_nothing(tmp_path, seeds):
    with OpenAIStub() as stub:
        run_generation(_cfg(tmp_path / "a", seeds, stub), progress=False)
        run_generation(_cfg(tmp_path / "b", seeds, stub, prompts_per_request=3), progress=False)
        n_before = len(stub.requests)
        run_generation(_cfg(tmp_path / "c", seeds, stub, seed=8), progress=False)
    assert (tmp_path / "a" / "regen.json").read_bytes() == (tmp_path / "b" / "regen.json").read_bytes()
    assert _regen(tmp_path / "a") != _regen(tmp_path / "c")
    assert any(isinstance(r.body["prompt"], list) and len(r.body["prompt"]) == 3 for r in stub.requests[:n_before])


def test_truncated_and_malformed_replies_are_counted(tmp_path, seeds):
    good = " Name the largest ocean on the planet.\n9. Input:\n<noinput>\n9. Output:\nThe Pacific.\n###\n"
    cut = good + "10. Instruction: Describe the taste of a lemon to a child.\n10. Input:\n<noinput>\n10. Output:\nSour and"
    script = [
        completion([cut], ["length"]),  # last item dropped
        completion(["I cannot help with that."]),  # no item structure at all
        completion([good + "10. Instruction: Hi\n10. Input:\n<noinput>\n10. Output:\nHello\n###\n"]),  # too short
    ]
    with OpenAIStub(script) as stub:
        summary = run_generation(_cfg(tmp_path / "out", seeds, stub, num_prompt_instructions=8, max_batches=1), progress=False)
    assert summary["discarded"]["truncated"] == 1
    assert summary["discarded"]["malformed"] == 1
    assert summary["discarded"]["too_short"] == 1
    assert summary["discarded"]["similar"] == 1  # the same "largest ocean" instruction twice in one batch
    assert [it["instruction"] for it in _regen(tmp_path / "out")] == ["Name the largest ocean on the planet."]


def test_price_table_gives_the_cost(tmp_path, seeds):
    with OpenAIStub() as stub:
        summary = run_generation(_cfg(tmp_path / "out", seeds, stub, price_table={"stub-model": [1.0, 2.0]}, max_batches=2), progress=False)
    expected = (summary["prompt_tokens"] * 1.0 + summary["completion_tokens"] * 2.0) / 1e6
    assert summary["cost_usd"] == round(expected, 6) and summary["cost_usd"] > 0
    with OpenAIStub() as stub:
        summary = run_generation(_cfg(tmp_path / "out2", seeds, stub, max_batches=1), progress=False)
    assert summary["cost_usd"] is None and summary["unpriced_models"] == ["stub-model"]


def test_requests_run_concurrently_up_to_the_limit(tmp_path, seeds):
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    def slow(req):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.15)
        with lock:
            state["now"] -= 1
        return fake_model(req)

    with OpenAIStub(default=slow) as stub:
        run_generation(_cfg(tmp_path / "a", seeds, stub, request_batch_size=4, max_batches=1), progress=False)
        assert state["max"] == 4
        state["max"] = 0
        run_generation(_cfg(tmp_path / "b", seeds, stub, request_batch_size=4, max_concurrency=2, max_batches=1), progress=False)
        assert state["max"] == 2


def _cli(out, seeds, base_url, *extra) -> list[str]:
    return [
        sys.executable, "-m", "generate_instruction", "generate_instruction_following_data",
        f"--output_dir={out}", f"--seed_tasks_path={seeds}", "--num_instructions_to_generate=60",
        "--model_name=stub-model", "--api_style=completions", f"--base_url={base_url}", "--api_key=k",
        "--request_batch_size=3", "--num_cpus=1", "--seed=3", "--save_every_s=0", *extra,
    ]


def _reference_run(tmp_path, seeds) -> tuple[bytes, int]:
    """regen.json of an uninterrupted run with _cli's settings, and the requests it took."""
    with OpenAIStub() as stub:
        run_generation(_cfg(tmp_path / "ref", seeds, stub, num_instructions_to_generate=60, seed=3, num_cpus=1), progress=False)
        return (tmp_path / "ref" / "regen.json").read_bytes(), len(stub.requests)


def _journaled_requests(journal: Path) -> int:
    return sum('"t": "request"' in line for line in journal.read_text().splitlines()) if journal.exists() else 0


def _wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def _summary_counts(stdout: str) -> tuple[int, int]:
    """(kept, instructions in regen.json) from the summary lines a run prints."""
    kept = int(re.search(r"^items parsed: \d+, kept: (\d+) ", stdout, flags=re.MULTILINE).group(1))
    return kept, _file_count(stdout)


def _file_count(stdout: str) -> int:
    return int(re.search(r"^(\d+) instructions in \S*regen.json", stdout, flags=re.MULTILINE).group(1))


def _exports(tmp_path, out) -> list[list[dict]]:
    """What to_alpaca makes of the folder, its regen.json and its journal."""
    got = []
    for i, src in enumerate((out, out / "regen.json", out / JOURNAL_NAME)):
        export_alpaca(src, tmp_path / f"export{i}.json")
        got.append(json.loads((tmp_path / f"export{i}.json").read_text()))
    return got


def test_kill_mid_run_and_resume_loses_and_repeats_nothing(tmp_path, seeds):
    ref_regen, ref_requests = _reference_run(tmp_path, seeds)
    out = tmp_path / "out"
    journal = out / JOURNAL_NAME
    # Killed: the server answers 7 requests (2 whole batches of 3 and 1 of the third), then hangs.
    with OpenAIStub(hang_after=7) as stub:
        proc = subprocess.Popen(_cli(out, seeds, stub.base_url), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert stub.hung.wait(60), "the run never reached the 8th request"
            _wait_until(lambda: _journaled_requests(journal) >= 7, "7 requests are journaled")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    state = read_journal(journal)
    assert state.next_batch == 2 and len(state.pending) == 1 and state.pending_size == 3
    kept_before = [it["instruction"] for it in state.items]
    assert kept_before  # two batches were committed
    assert (out / LOCK_NAME).exists()  # left by the killed run, but no longer locked
    # Resumed: the same command.
    with OpenAIStub() as stub:
        done = subprocess.run(_cli(out, seeds, stub.base_url), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        resumed_requests = len(stub.requests)
    assert f"Loaded {len(kept_before)} machine-generated instructions" in done.stdout
    items = _regen(out)
    assert [it["instruction"] for it in items[: len(kept_before)]] == kept_before
    assert len({it["instruction"] for it in items}) == len(items)
    # Same data as the uninterrupted run, and no request paid for twice.
    assert (out / "regen.json").read_bytes() == ref_regen
    assert resumed_requests == ref_requests - 7
    # What the summary reports is what the file holds, and every way of exporting gives the same records.
    assert _summary_counts(done.stdout) == (len(items), len(items))
    from_folder, from_regen, from_journal = _exports(tmp_path, out)
    assert from_folder == from_regen == from_journal and len(from_folder) == len(items)
    assert not (out / LOCK_NAME).exists()


def _gated_stub(after: int) -> tuple[OpenAIStub, threading.Event]:
    """A stub whose fake model answers the first `after` requests, then holds each later one until the event is set."""
    gate = threading.Event()
    count = itertools.count(1)

    def answer(req):
        if next(count) > after:
            gate.wait(60)
        return fake_model(req)

    return OpenAIStub(default=answer), gate


def test_a_second_concurrent_run_is_refused_naming_the_holder_and_changes_nothing(tmp_path, seeds):
    ref_regen, _ = _reference_run(tmp_path, seeds)
    out = tmp_path / "out"
    stub, gate = _gated_stub(after=4)  # batch 0 and the first request of batch 1 are answered, then it waits
    with stub:
        first = subprocess.Popen(_cli(out, seeds, stub.base_url), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            _wait_until(lambda: _journaled_requests(out / JOURNAL_NAME) >= 4 and len(stub.requests) >= 6,
                        "the first run waits for its 5th and 6th replies")
            before = {p.name: p.read_bytes() for p in out.iterdir()}
            second = subprocess.run(_cli(out, seeds, stub.base_url), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
            assert second.returncode == 1
            holder = json.loads((out / LOCK_NAME).read_text())
            assert second.stderr.startswith(
                f"error: {out} is in use by pid {first.pid} on {socket.gethostname()} (generate_instruction "
                f"generate_instruction_following_data, started {holder['started']}); only one run may write"
            ), second.stderr
            assert "run this command again to resume, or choose another output." in second.stderr
            assert {p.name: p.read_bytes() for p in out.iterdir()} == before
            assert len(stub.requests) == 6  # the refused run asked the server nothing
        finally:
            gate.set()
        stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert (out / "regen.json").read_bytes() == ref_regen
    assert [json.loads(line)["t"] for line in (out / JOURNAL_NAME).read_text().splitlines()].count("start") == 1
    assert sorted(p.name for p in out.iterdir()) == [JOURNAL_NAME, "regen.json"]


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_saves_and_reports_what_the_file_holds(tmp_path, seeds, signum, status):
    out = tmp_path / "out"
    stub, gate = _gated_stub(after=4)
    with stub:
        # SIGINT as on a terminal, even when the tests themselves run in the background (where it is ignored).
        run = subprocess.Popen(_cli(out, seeds, stub.base_url), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            _wait_until(lambda: _journaled_requests(out / JOURNAL_NAME) >= 4 and len(stub.requests) >= 6,
                        "the run waits for its 5th and 6th replies")
            run.send_signal(signum)
            time.sleep(0.5)
        finally:
            gate.set()  # the replies in flight end, so the interrupted process can exit
        stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == status, stderr
    assert ("interrupted; everything kept so far is in the journal" in stderr) == (signum == signal.SIGINT)
    items = _regen(out)
    assert len(items) == len(read_journal(out / JOURNAL_NAME).items) > 0
    assert f"{len(items)} instructions in {out / 'regen.json'} (the same as in the journal); re-run the same command to resume" in stdout
    from_folder, from_regen, from_journal = _exports(tmp_path, out)
    assert from_folder == from_regen == from_journal


def test_torn_last_journal_line_is_cut_off_on_resume(tmp_path, seeds):
    out = tmp_path / "out"
    with OpenAIStub() as stub:
        run_generation(_cfg(out, seeds, stub, max_batches=1), progress=False)
        n = len(_regen(out))
        with open(out / JOURNAL_NAME, "a") as f:
            f.write('{"t": "request", "batch": 1, "batch_si')
        run_generation(_cfg(out, seeds, stub, max_batches=1), progress=False)
    lines = (out / JOURNAL_NAME).read_text().splitlines()
    assert all(json.loads(line) for line in lines)
    assert len(_regen(out)) > n


def test_a_failed_request_stops_the_run_and_the_rerun_resumes(tmp_path, seeds):
    out = tmp_path / "out"
    with OpenAIStub() as stub:
        run_generation(_cfg(out, seeds, stub, max_batches=1), progress=False)
    kept = _regen(out)
    with OpenAIStub(default=lambda req: Step(status=503, body={"error": {"message": "down"}})) as stub:
        with pytest.raises(GenerationError, match="re-run the same command"):
            run_generation(_cfg(out, seeds, stub, max_retries=1), progress=False)
    assert _regen(out) == kept
    with OpenAIStub() as stub:
        run_generation(_cfg(out, seeds, stub), progress=False)
    assert _regen(out)[: len(kept)] == kept and len(_regen(out)) >= 40


def test_resume_refuses_a_different_seed_or_seed_file(tmp_path, seeds):
    out = tmp_path / "out"
    with OpenAIStub() as stub:
        run_generation(_cfg(out, seeds, stub, max_batches=1), progress=False)
        with pytest.raises(ValueError, match=r"different seed \(7, now 8\).*new --output_dir"):
            run_generation(_cfg(out, seeds, stub, seed=8), progress=False)
        seeds.write_text(seeds.read_text().replace("bakery", "cafe"))
        with pytest.raises(ValueError, match="different seed tasks file"):
            run_generation(_cfg(out, seeds, stub, seed=None), progress=False)


def test_legacy_regen_json_is_kept_and_joins_the_pool(tmp_path, seeds):
    out = tmp_path / "out"
    out.mkdir()
    legacy = [{"instruction": "Describe a rainbow to someone who has never seen one.", "input": "", "output": "Arcs of colour."}]
    (out / "regen.json").write_text(json.dumps(legacy))
    with OpenAIStub() as stub:
        run_generation(_cfg(out, seeds, stub, num_instructions_to_generate=5, max_batches=1), progress=False)
    items = _regen(out)
    assert items[0] == legacy[0] and len(items) > 1
    # The first new item was compared with the 8 seeds and the imported one.
    assert len(items[1]["most_similar_instructions"]) == 9
    assert legacy[0]["instruction"] in items[1]["most_similar_instructions"]
    assert read_journal(out / JOURNAL_NAME).items[0] == legacy[0]


def test_to_alpaca_from_directory_journal_or_regen(tmp_path, seeds):
    out = tmp_path / "out"
    with OpenAIStub() as stub:
        run_generation(_cfg(out, seeds, stub, max_batches=2), progress=False)
    expected = [{"instruction": it["instruction"], "input": it["input"], "output": it["output"]} for it in _regen(out)]
    for src in (out, out / JOURNAL_NAME, out / "regen.json"):
        dst = tmp_path / "alpaca_data.json"
        assert export_alpaca(src, dst) == len(expected)
        assert json.loads(dst.read_text()) == expected
    (tmp_path / "bad.json").write_text(json.dumps([{"instruction": "x", "output": "y"}, {"instruction": 3, "output": "y"}]))
    with pytest.raises(ValueError, match="bad.json: item 1 has no string 'instruction'"):
        export_alpaca(tmp_path / "bad.json", tmp_path / "never.json")
    assert not (tmp_path / "never.json").exists()


def test_cli_bad_seed_file_exits_nonzero_naming_the_line(tmp_path):
    bad = tmp_path / "seeds.jsonl"
    bad.write_text('{"instruction": "ok", "instances": [{"input": "", "output": "o"}]}\n{"instruction": \n')
    out = tmp_path / "out"
    done = subprocess.run(_cli(out, bad, "http://127.0.0.1:9/v1"), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"error: {bad}:2: not valid JSON" in done.stderr
    assert not out.exists()


def test_cli_to_alpaca(tmp_path, seeds):
    out = tmp_path / "out"
    with OpenAIStub() as stub:
        run_generation(_cfg(out, seeds, stub, max_batches=1), progress=False)
    dst = tmp_path / "train.json"
    done = subprocess.run(
        [sys.executable, "-m", "generate_instruction", "to_alpaca", f"--input_path={out}", f"--output_path={dst}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(dst.read_text())
    assert len(data) == len(_regen(out)) and all(sorted(r) == ["input", "instruction", "output"] for r in data)


def test_exported_file_loads_with_the_training_loader(tmp_path, seeds):
    out = tmp_path / "out"
    with OpenAIStub() as stub:
        run_generation(_cfg(out, seeds, stub, max_batches=1), progress=False)
    n = export_alpaca(out, tmp_path / "alpaca_data.json")
    records = load_records(tmp_path / "alpaca_data.json")
    assert len(records) == n == len(_regen(out))
    assert records[0]["instruction"] == _regen(out)[0]["instruction"]


def test_regen_json_is_written_as_jdump_writes_it(tmp_path):
    from alpaca_lib.generation.regen import RegenFile
    from utils import jdump

    items = [
        {"instruction": "Say \"hi\"\n\tto them.", "input": "", "output": "Hi! 你好 \u2028 \\ end",
         "most_similar_instructions": {"A \u00e9": 0.30769230769230765, "B": 0.0, "C": 1.0}, "avg_similarity_score": 1e-17},
        {"instruction": "Imported from the original script.", "input": "x", "output": "y"},
        {"instruction": "Odd values.", "input": "", "output": "", "most_similar_instructions": {},
         "avg_similarity_score": 3, "extra": [1, [], {"k": None}, True, float("nan")]},
    ]
    regen = RegenFile(tmp_path / "regen.json")
    regen.save([])
    assert (tmp_path / "regen.json").read_text() == "[]"
    for n in (1, 3):  # the second save encodes only the items added since the first
        regen.save(items[:n])
        jdump(items[:n], tmp_path / "reference.json")
        assert (tmp_path / "regen.json").read_bytes() == (tmp_path / "reference.json").read_bytes()


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)])
def test_a_signal_during_a_batch_commit_takes_effect_after_it(signum, raised):
    from alpaca_lib.core.signals import StopSignals

    signals, committed = StopSignals(), []
    # As in a terminal's foreground process, even when the tests run in the background (SIGINT ignored).
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    signals.install()
    try:
        with pytest.raises(raised) as stop:
            with signals.deferred():
                os.kill(os.getpid(), signum)
                time.sleep(0.05)  # the handler has run by now, and must not have stopped this block
                committed.append("journal line and state")
        assert committed == ["journal line and state"]
        assert raised is KeyboardInterrupt or stop.value.code == 143
    finally:
        signals.restore()
        restored = signal.signal(signal.SIGINT, outer)
    assert restored is signal.default_int_handler and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_each_item_is_encoded_once_and_the_journal_read_once(tmp_path, seeds, monkeypatch):
    # What grows with the data is done once per item: with regen.json saved after every batch
    # (save_every_s=0), each kept item is still encoded only once, and the journal is read once, at start.
    from alpaca_lib.generation import regen, runner

    encoded, reads = [], []
    real_encode, real_read = regen._json_indented, runner.read_journal
    monkeypatch.setattr(regen, "_json_indented", lambda obj, level: (level == 1 and encoded.append(obj["instruction"]),
                                                                       real_encode(obj, level))[1])
    monkeypatch.setattr(runner, "read_journal", lambda *a, **kw: (reads.append(a[0]), real_read(*a, **kw))[1])
    out = tmp_path / "out"
    with OpenAIStub() as stub:
        run_generation(_cfg(out, seeds, stub, num_instructions_to_generate=500, max_batches=3), progress=False)
        first = len(_regen(out))
        run_generation(_cfg(out, seeds, stub, num_instructions_to_generate=500, max_batches=3), progress=False)
    items = _regen(out)
    assert len(read_journal(out / JOURNAL_NAME).batches) == 6 and len(items) > first > 0
    assert reads == [out / JOURNAL_NAME]  # the first run found no journal; the resumed one read it once
    # regen.json was saved after each of the 6 batches, yet each item was encoded once per run: the first
    # run's items by it, then all of them by the resumed run, which starts from the journal.
    assert encoded == [it["instruction"] for it in items[:first]] + [it["instruction"] for it in items]
