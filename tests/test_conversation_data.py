"""Conversation data: OpenAI `messages` and ShareGPT `conversations` records from every source train.py reads,
their record-numbered errors, `prepare_data.py convert` to `messages`, and the report's turns and loss tokens.

    bash scripts/test.sh tests/test_conversation_data.py

The parquet, save_to_disk and hub-cache inputs are built here; the report's tokenizer is a word-level one with a
chat template (one token per whitespace-separated word), so its numbers can be counted by hand.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alpaca_lib.data.formats import load_prompt_format
from alpaca_lib.data.json_reader import load_records
from alpaca_lib.data.records import DataError
from alpaca_lib.data.sources import open_source
from conftest import REPO_ROOT, run_script

ALPACA = {"instruction": "Name a color.", "input": "", "output": "Blue."}
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! 👋"}, {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Red."}]
CHAT2 = [{"role": "user", "content": "Dis bonjour."}, {"role": "assistant", "content": "Bonjour, ça va ?"}]
EXPECTED = [ALPACA, {"messages": CHAT}, {"messages": CHAT2}]
_SPEAKERS = {"system": "system", "user": "human", "assistant": "gpt"}


def sharegpt(turns: list[dict]) -> list[dict]:
    """OpenAI turns in ShareGPT's form."""
    return [{"from": _SPEAKERS[t["role"]], "value": t["content"]} for t in turns]


def _table(rows: list[dict]) -> pa.Table:
    """Rows with different keys as one Arrow table: every column in every row, null where a row has none."""
    names = list(dict.fromkeys(k for r in rows for k in r))
    return pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows])


def _publish_to_hub_cache(tmp_path: Path, monkeypatch, table: pa.Table, revision: str = "ab" * 20) -> str:
    """'acme/chat-mini' in a private datasets cache, as loading it from the hub once leaves it."""
    import datasets
    from datasets.packaged_modules.parquet.parquet import Parquet

    cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    pq.write_table(table, tmp_path / "hub.parquet")
    builder = Parquet(cache_dir=str(tmp_path / "build"), dataset_name="chat-mini", hash=revision,
                      data_files={"train": [str(tmp_path / "hub.parquet")]})
    builder.download_and_prepare()
    target = cache / "acme___chat-mini" / "default" / "0.0.0" / revision
    target.parent.mkdir(parents=True)
    shutil.move(builder.cache_dir, target)
    return "acme/chat-mini"


def test_every_source_reads_conversations_as_messages(tmp_path, monkeypatch):
    import datasets

    sg = {"conversations": sharegpt(CHAT)}
    sg2 = {"id": "b7", "conversations": sharegpt(CHAT2)}  # extra keys are left out
    (tmp_path / "mixed.json").write_text(json.dumps([ALPACA, {"messages": CHAT}, sg2]), encoding="utf-8")
    lines = [json.dumps(ALPACA), "", json.dumps(sg, ensure_ascii=False), json.dumps(sg2, ensure_ascii=False)]
    (tmp_path / "share.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")  # line 2 is blank
    # --data_columns messages=dialog: either form of turns under another name.
    (tmp_path / "dialog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in
                                                   [ALPACA, {"dialog": CHAT}, {"dialog": sharegpt(CHAT2)}]))
    messages_table = _table([ALPACA, {"messages": CHAT}, {"messages": CHAT2}])
    pq.write_table(messages_table, tmp_path / "mixed.parquet")
    pq.write_table(_table([ALPACA, {"dialog": CHAT}, {"dialog": CHAT2}]), tmp_path / "dialog.parquet")
    pq.write_table(_table([ALPACA, {"conversations": sharegpt(CHAT)}, {"conversations": sharegpt(CHAT2)}]),
                   tmp_path / "share.parquet")
    share = datasets.load_dataset("parquet", data_files=str(tmp_path / "share.parquet"), split="train")
    share.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": share.select([0]), "validation": share}).save_to_disk(str(tmp_path / "saved_dict"))
    hub = _publish_to_hub_cache(tmp_path, monkeypatch, messages_table)
    dialog = "instruction=instruction,input=input,output=output,messages=dialog"
    layouts = {  # name: (path, columns, split, where the first conversation is)
        "json": (tmp_path / "mixed.json", None, "train", f"{tmp_path / 'mixed.json'}: record 1"),
        "jsonl": (tmp_path / "share.jsonl", None, "train", f"{tmp_path / 'share.jsonl'}: record 1 (line 3)"),
        "jsonl_mapped": (tmp_path / "dialog.jsonl", "messages=dialog", "train",
                         f"{tmp_path / 'dialog.jsonl'}: record 1 (line 2)"),
        "parquet": (tmp_path / "mixed.parquet", None, "train", f"{tmp_path / 'mixed.parquet'}: row 1"),
        "parquet_mapped": (tmp_path / "dialog.parquet", "messages=dialog", "train",
                           f"{tmp_path / 'dialog.parquet'} (columns {dialog}): row 1"),
        "save_to_disk": (tmp_path / "saved", None, "train", f"{tmp_path / 'saved'} (split train): row 1"),
        "save_to_disk_split": (tmp_path / "saved_dict", None, "validation",
                               f"{tmp_path / 'saved_dict'} (split validation): row 1"),
        "hub": (hub, None, "train", "acme/chat-mini (split train): row 1"),
    }
    for name, (path, columns, split, first) in layouts.items():
        source = open_source(path, split, columns).check()
        assert (source.num_records, source.num_conversations, source.first_conversation) == (3, 2, first), name
        assert source.records() == EXPECTED, name
        assert [r for batch in source.batches(2) for r in batch] == EXPECTED, name
    # Alpaca data: no conversation, and --data_columns messages=messages changes nothing (nor the cache key).
    alpaca = open_source(tmp_path / "mixed.json").check()
    (tmp_path / "alpaca.json").write_text(json.dumps([ALPACA]), encoding="utf-8")
    plain = open_source(tmp_path / "alpaca.json").check()
    assert (plain.num_records, plain.num_conversations, plain.first_conversation) == (1, 0, None)
    assert open_source(tmp_path / "mixed.json", columns="messages=messages").key() == alpaca.key()
    assert open_source(tmp_path / "mixed.json", columns="messages=dialog").key() != alpaca.key()


def test_csv_cannot_hold_conversations(tmp_path):
    path = tmp_path / "chat.csv"
    path.write_text('messages\n"[{""role"": ""user"", ""content"": ""Hi""}]"\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        open_source(path).check()
    assert str(err.value) == (
        f"{path}: column 'messages' would hold conversations, but a CSV cell holds only text and a conversation is "
        "a list of turns. Write conversations as JSON Lines (one {\"messages\": [{\"role\": ..., \"content\": ...}, "
        "...]} per line) or parquet.")


GOOD = {"messages": CHAT2}
BAD_CONVERSATIONS = [  # (record, the message after "PATH: record 2 (line 3)")
    ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
     " has no assistant turn to learn from (roles: system, user); add the assistant's answer, or leave the record "
     "out."),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "human", "value": "Hello?"},
                        {"from": "gpt", "value": "Hi."}]},
     ": turn 1 is user, expected assistant (roles: user, user, assistant); a conversation is an optional system "
     "turn, then user and assistant turns in turn."),
    ({"messages": [{"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Hi"}]},
     ": turn 0 is assistant, expected user (roles: assistant, user); a conversation is an optional system turn, "
     "then user and assistant turns in turn."),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi."},
                   {"role": "user", "content": "Bye"}]},
     " ends with a user turn that has no answer (roles: user, assistant, user); end it with the assistant's turn, "
     "or drop the last turn."),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " \n"}]},
     ": turn 1 (assistant) is empty; give it some text, or leave the record out."),
    ({"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "Hi."}]},
     ": turn 0 (user) is empty; give it some text, or leave the record out."),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hi."}]},
     ": turn 1 has role 'bot'; expected one of system, user, assistant."),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "model", "value": "Hi."}]},
     ": turn 1 has from 'model'; expected one of assistant, bard, bing, chatgpt, gpt, human, system, user."),
    ({"messages": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hi."}]},
     ": turn 0 is ['from', 'value'], expected an object with 'role' and 'content'. from/value turns belong under "
     "'conversations'."),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "Hi."}]},
     ": turn 0 (user) content is a int (3), expected a string."),
    ({"messages": []}, " field 'messages' is [], expected a non-empty list of turns."),
    ({"messages": "Hi"}, " field 'messages' is a str ('Hi'), expected a non-empty list of turns."),
    ({"messages": CHAT2, "conversations": sharegpt(CHAT2)}, " has both 'messages' and 'conversations'; keep one."),
]


@pytest.mark.parametrize("record,message", BAD_CONVERSATIONS)
def test_a_bad_conversation_is_named_by_its_record(tmp_path, record, message):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [GOOD, ALPACA, record, GOOD]), encoding="utf-8")
    with pytest.raises(DataError) as err:
        open_source(path).check()
    assert str(err.value) == f"{path}: record 2 (line 3){message}"


def test_bad_conversations_in_tables_and_the_readers_that_take_none(tmp_path):
    """A table names the row; a column of conversations may stand alone, but not with a row that has none; the
    evaluation and generator readers (`load_records`) keep reading Alpaca records only."""
    rows = [GOOD, {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}]
    pq.write_table(_table(rows), tmp_path / "empty.parquet")
    with pytest.raises(DataError) as err:
        open_source(tmp_path / "empty.parquet").check()
    assert str(err.value) == f"{tmp_path / 'empty.parquet'}: row 1: turn 1 (assistant) is empty; give it some " \
                             "text, or leave the record out."
    pq.write_table(_table([GOOD, {"messages": None}]), tmp_path / "null.parquet")
    with pytest.raises(DataError) as err:
        open_source(tmp_path / "null.parquet").check()
    assert str(err.value) == (
        f"{tmp_path / 'null.parquet'}: row 1 has no value (null) in column 'messages', and there is no column "
        "'instruction' (instruction) for an Alpaca record. Fill in its conversation, or leave the row out.")
    pq.write_table(_table([GOOD, {"instruction": None, "output": "x"}]), tmp_path / "neither.parquet")
    with pytest.raises(DataError) as err:
        open_source(tmp_path / "neither.parquet").check()
    assert str(err.value) == (
        f"{tmp_path / 'neither.parquet'}: row 1 has no value (null) in column 'instruction' (instruction) (nor a "
        "conversation in 'messages'). Fill it with text, or \"\" for none.")
    with pytest.raises(DataError) as err:
        open_source(tmp_path / "empty.parquet", columns="messages=dialog").check()
    assert str(err.value) == (
        f"{tmp_path / 'empty.parquet'} (columns instruction=instruction,input=input,output=output,messages=dialog): "
        "no column 'dialog' (messages); the columns are ['messages']. Map yours with --data_columns "
        "instruction=COLUMN,input=COLUMN,output=COLUMN.")
    # Conversations under a name of their own, unmapped: the Alpaca error says how to name them.
    path = tmp_path / "named.json"
    path.write_text(json.dumps([ALPACA, {"conversation": CHAT2, "model": "m"}]), encoding="utf-8")
    with pytest.raises(DataError) as err:
        open_source(path).check()
    assert str(err.value) == (
        f"{path}: record 1 has keys ['conversation', 'model']; expected 'instruction' and 'output' (and optionally "
        "'input'). Missing: instruction, output. If 'conversation' holds conversations (lists of turns), name it: "
        "--data_columns messages=conversation.")
    assert open_source(path, columns="messages=conversation").records() == [ALPACA, {"messages": CHAT2}]
    path.write_text(json.dumps([ALPACA, GOOD]), encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value) == (f"{path}: record 1 has keys ['messages']; expected 'instruction' and 'output' (and "
                              "optionally 'input'). Missing: instruction, output.")


def test_prompt_formats_without_turns_refuse_conversations_naming_the_first(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [ALPACA, ALPACA, GOOD, GOOD, ALPACA]), encoding="utf-8")
    template = tmp_path / "plain.json"
    template.write_text(json.dumps({"prompt_input": "Q: {instruction}\n{input}\nA:", "prompt_no_input":
                                    "Q: {instruction}\nA:", "response_split": "A:"}), encoding="utf-8")
    source = open_source(path)
    for fmt in (load_prompt_format("alpaca"), load_prompt_format(str(template))):
        with pytest.raises(DataError) as err:
            source.check_format(fmt)  # reads the data itself when check() has not
        assert str(err.value) == (
            f"{path}: record 2 (line 3) is a conversation (2 of 5 records are), and --prompt_template {fmt.name} "
            "trains on Alpaca records (instruction, input, output) only. Train on conversations with --prompt_template "
            "chat (the model's own chat template).")
    source.check_format(load_prompt_format("chat"))
    path.write_text(json.dumps(ALPACA) + "\n", encoding="utf-8")
    open_source(path).check_format(load_prompt_format("alpaca"))  # no conversation: nothing to refuse


def test_convert_writes_sharegpt_as_messages_byte_for_byte(tmp_path):
    from prepare_data import convert

    src = tmp_path / "sharegpt.jsonl"
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"id": "a1", "conversations": [{"from": "system", "value": "Sois bref."}, {"from": "human", "value": "Salut"},
                                       {"from": "gpt", "value": "Bonjour, ça va ?"}]},  # 7 words: kept
        {"instruction": "Name a color.", "output": "Blue.", "category": "x"},
        {"conversations": [{"from": "human", "value": "one two three four five"},
                           {"from": "gpt", "value": "six seven eight"}]},  # 8 words: left out
    ]) + "\n", encoding="utf-8")
    out = tmp_path / "messages.json"
    assert convert(str(src), str(out), max_words=7) == {"records": 3, "written": 2, "dropped_long": 1}
    assert out.read_bytes() == (
        '[\n'
        '    {\n'
        '        "messages": [\n'
        '            {\n'
        '                "role": "system",\n'
        '                "content": "Sois bref."\n'
        '            },\n'
        '            {\n'
        '                "role": "user",\n'
        '                "content": "Salut"\n'
        '            },\n'
        '            {\n'
        '                "role": "assistant",\n'
        '                "content": "Bonjour, ça va ?"\n'
        '            }\n'
        '        ]\n'
        '    },\n'
        '    {\n'
        '        "instruction": "Name a color.",\n'
        '        "input": "",\n'
        '        "output": "Blue."\n'
        '    }\n'
        ']').encode("utf-8")
    assert open_source(out).records() == [
        {"messages": [{"role": "system", "content": "Sois bref."}, {"role": "user", "content": "Salut"},
                      {"role": "assistant", "content": "Bonjour, ça va ?"}]},
        {"instruction": "Name a color.", "input": "", "output": "Blue."}]


# ---- the report: a word-level tokenizer (a token per word) whose chat template is
#      "<role> content </s> " per turn, and "<assistant> " as the generation prompt.
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </s> {% endfor %}"
                 "{% if add_generation_prompt %}<assistant> {% endif %}")
REPORT_DATA = [
    # 8 tokens: <user> Name a color </s> <assistant> Blue </s>; in the loss: Blue </s>
    {"instruction": "Name a color", "input": "", "output": "Blue"},
    # 22 tokens (4 + 4 + 4 + 5 + 5); in the loss: Hello friend </s>, Red it is </s>; 4 turns, a system turn
    {"conversations": [{"from": "system", "value": "Be brief"}, {"from": "human", "value": "Hi there"},
                       {"from": "gpt", "value": "Hello friend"}, {"from": "human", "value": "Name a color"},
                       {"from": "gpt", "value": "Red it is"}]},
    # 48 tokens (6 + 1 + 40 + 1); 41 in the loss from position 7: cut at 32 (25 of them kept), its </s> lost
    {"messages": [{"role": "user", "content": "Write a long story"},
                  {"role": "assistant", "content": " ".join(["once upon a time"] * 10)}]},
    # 35 tokens (32 + 3): the first token in the loss is at 33, past 32: dropped in training
    {"messages": [{"role": "user", "content": " ".join(["word"] * 30)}, {"role": "assistant", "content": "Fine"}]},
    # 8 tokens, 2 in the loss; its first user turn repeats record 0's instruction (exact and near duplicate)
    {"messages": [{"role": "user", "content": "Name a color"}, {"role": "assistant", "content": "Green"}]},
]


def chat_tokenizer():
    """A word-level fast tokenizer over REPORT_DATA's words, with CHAT_TEMPLATE."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<system>", "<user>", "<assistant>"}
    for r in REPORT_DATA:
        texts = [t.get("value", t.get("content")) for t in r.get("conversations", r.get("messages", []))]
        words.update(w for text in texts + [r.get("instruction", ""), r.get("output", "")] for w in text.split())
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "[PAD]", *sorted(words)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="[PAD]")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_report_counts_turns_and_tokens_in_the_loss(tmp_path):
    from alpaca_lib.data.report import build_report

    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in REPORT_DATA), encoding="utf-8")
    records = open_source(path).records()
    tok = chat_tokenizer()
    report = build_report(records, tok, 32, prompt_format=load_prompt_format("chat"))
    lengths = report.pop("_lengths")
    assert [lengths[k].tolist() for k in ("prompt", "response", "total")] == [
        [6, 15, 7, 33, 6], [2, 7, 41, 2, 2], [8, 22, 48, 35, 8]]
    assert {k: report[k] for k in ("records", "prompt_template", "with_input", "conversations", "with_system",
                                   "tokens_in_loss", "prompt_fills_max_length", "response_truncated",
                                   "boundary_merges", "exact_duplicate_instructions", "near_duplicate_instructions",
                                   "empty_outputs", "blank_instructions", "non_ascii_share")} == {
        "records": 5, "prompt_template": "chat", "with_input": 0, "conversations": 4, "with_system": 1,
        "tokens_in_loss": 2 + 7 + 25 + 2, "prompt_fills_max_length": 1, "response_truncated": 1,
        "boundary_merges": 0, "exact_duplicate_instructions": 1, "near_duplicate_instructions": 1,
        "empty_outputs": 0, "blank_instructions": 0, "non_ascii_share": 0.0}
    assert report["turns"] == {"mean": 2.5, "p50": 2.0, "p90": 3.4, "p95": 3.7, "p99": 3.94, "max": 4}
    assert report["tokens"]["response"]["mean"] == 10.8 and report["tokens"]["total"]["max"] == 48
    # --system_prompt: "<system> Be kind </s> " (4 tokens) before each conversation without a system turn.
    kind = build_report(records, tok, 32, prompt_format=load_prompt_format("chat", system_prompt="Be kind"))
    assert kind["_lengths"]["total"].tolist() == [12, 22, 52, 39, 12]
    # Under Alpaca's template the same file is refused, naming the first conversation.
    from prepare_data import report as report_command

    tok.save_pretrained(tmp_path / "tok")
    with pytest.raises(DataError, match=rf"^{path}: record 1 \(line 2\) is a conversation \(4 of 5 records are\), "
                                        r"and --prompt_template alpaca trains on Alpaca records"):
        report_command(str(path), str(tmp_path / "tok"), output_dir=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_report_cli_with_the_chat_template(tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in REPORT_DATA), encoding="utf-8")
    chat_tokenizer().save_pretrained(tmp_path / "tok")
    log = run_script([sys.executable, str(REPO_ROOT / "prepare_data.py"), "report", "--data_path", str(data),
                      "--tokenizer", str(tmp_path / "tok"), "--model_max_length", "32", "--prompt_template", "chat",
                      "--output_dir", str(tmp_path / "r")], tmp_path)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert (report["conversations"], report["tokens_in_loss"], report["turns"]["max"]) == (4, 36, 4)
    for line in ["conversations: 4 (80.0%); user and assistant turns each: mean 2.5, p50 2, max 4; with a system "
                 "turn of their own: 1",
                 "tokens (model_max_length 32, the tokenizer's chat template):",
                 "  in loss     mean    10.8  p50      2  p90     27  p95     34  p99     40  max 41",
                 "tokens in the loss (within model_max_length, examples kept): 36",
                 "no assistant token within model_max_length (dropped in training): 1 (20.0%)",
                 "last assistant turn cut (its end-of-turn token lost): 1 (20.0%)"]:
        assert line in log.splitlines(), line
    assert (tmp_path / "r" / "lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
