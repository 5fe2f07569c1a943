"""Chat templates at their edges: templates that write earlier turns differently, templates that refuse a turn,
truncation at a turn boundary, and Alpaca records that carry a stray `messages` key.

    bash scripts/test.sh tests/test_chat_edges.py
"""

from __future__ import annotations

import csv
import json
import random

import pytest

from alpaca_lib.data.conversations import assistant_spans, encode_chat, encode_chats, mask_from_offsets
from alpaca_lib.data.formats import ChatTemplateError, PromptFormatError, load_prompt_format
from alpaca_lib.data.sources import open_source
from alpaca_lib.data.tokenizing import DropOptions, tokenize_records

CHAT = load_prompt_format("chat")
# Like some instruction models' templates: the system prompt goes into the last user turn, so a conversation
# rendered up to an earlier answer is not a prefix of the whole; and the first question quotes its answer.
SYSTEM_IN_LAST_USER = (
    "{% set sys = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
    "{% set last_user = (messages | selectattr('role', 'equalto', 'user') | list | last) %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
    "{% if m is sameas last_user and sys %}{{ sys }}\n\n{% endif %}{{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}</s>{% endif %}{% endfor %}"
)
NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}</s>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>"
    "{% endif %}"
)
CHATML = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
QUOTED = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say Yes or No: is 2>1? Yes"}, {"role": "assistant", "content": "Yes"},
    {"role": "user", "content": "And 1>2?"}, {"role": "assistant", "content": "No"},
]


def test_a_template_that_rewrites_earlier_turns_trains_on_the_answers_not_on_their_quotes(tokenizer):
    tokenizer.chat_template = SYSTEM_IN_LAST_USER
    text, spans, consistent = assistant_spans(QUOTED, tokenizer)
    assert text == "[INST] Say Yes or No: is 2>1? Yes [/INST]Yes</s>[INST] Be brief.\n\nAnd 1>2? [/INST]No</s>"
    assert consistent is False
    assert spans == [(41, 48), (82, 88)]
    assert [text[a:b] for a, b in spans] == ["Yes</s>", "No</s>"]


def test_a_template_that_refuses_a_system_turn_is_a_clear_error_before_and_while_tokenizing(tokenizer):
    tokenizer.chat_template = NO_SYSTEM
    with pytest.raises(PromptFormatError) as e:
        load_prompt_format("chat", "Be brief.").check_tokenizer(tokenizer, "models/x")
    assert str(e.value) == (
        "models/x: the model's chat template refused a conversation of roles [system, user, assistant]: "
        "TemplateError: System role not supported. Drop --system_prompt: this template takes no system turn.")
    CHAT.check_tokenizer(tokenizer, "models/x")  # without a system prompt it renders
    with pytest.raises(ChatTemplateError) as e:
        tokenize_records([{"instruction": "q", "output": "a"}, {"messages": QUOTED}], tokenizer, prompt_format=CHAT)
    assert str(e.value) == (
        "record 1: the model's chat template refused a conversation of roles [system, user, assistant, user, "
        "assistant]: TemplateError: System role not supported. Fix or leave out that record.")


def test_a_cut_between_turns_is_not_a_truncated_response(tokenizer):
    tokenizer.chat_template = CHATML
    two = {"messages": QUOTED[1:]}
    full = tokenize_records([two], tokenizer, prompt_format=CHAT)
    mask = full.loss_mask.tolist()
    first_end = mask.index(True) + mask[mask.index(True):].index(False)  # the token after the first answer's </s>
    between = tokenize_records([two], tokenizer, max_length=first_end, prompt_format=CHAT,
                               drop=DropOptions(truncated_responses=True))
    assert (between.stats["kept"], between.stats["response_truncated"], between.stats["dropped_truncated"]) == (1, 0, 0)
    assert between.loss_mask.tolist() == mask[:first_end]
    inside = tokenize_records([two], tokenizer, max_length=first_end - 1, prompt_format=CHAT)
    assert (inside.stats["kept"], inside.stats["response_truncated"]) == (1, 1)


def test_an_alpaca_record_with_a_stray_messages_key_is_still_an_alpaca_record(tmp_path):
    records = [{"instruction": "Say hi.", "input": "", "output": "Hi.", "messages": [{"role": "user"}]},
               {"instruction": "Count.", "input": "1", "output": "2", "messages": None}]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    source = open_source(str(path)).check()
    assert source.num_conversations == 0
    assert source.records() == [{"instruction": "Say hi.", "input": "", "output": "Hi."},
                                {"instruction": "Count.", "input": "1", "output": "2"}]
    table = tmp_path / "data.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["instruction", "input", "output", "messages"])
        writer.writerow(["Say hi.", "", "Hi.", "notes"])
    assert open_source(str(table)).check().records() == [{"instruction": "Say hi.", "input": "", "output": "Hi."}]


def test_the_mask_is_every_token_that_overlaps_an_assistant_turn():
    """`mask_from_offsets` against its definition, on random tokenizations (tokens of length 0 included) and turns:
    a token is in the loss when it overlaps a turn, and crosses an edge when it is in the loss but not inside one."""
    rng = random.Random(0)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, 60), rng.randint(0, 12)))
        bounds = [0, *cuts, 60]
        offsets = [(a, b) for a, b in zip(bounds, bounds[1:])]
        offsets += [(k, k) for k in rng.sample(range(60), 2)]
        offsets.sort()
        edges = sorted(rng.sample(range(60), 2 * rng.randint(0, 4)))
        spans = list(zip(edges[::2], edges[1::2]))
        overlaps = [[s for s in spans if a < s[1] and b > s[0]] for a, b in offsets]
        mask, crossing = mask_from_offsets(offsets, spans)
        assert mask.tolist() == [bool(o) for o in overlaps], (offsets, spans)
        assert crossing == sum(bool(o) and not any(s[0] <= a and b <= s[1] for s in o)
                               for (a, b), o in zip(offsets, overlaps)), (offsets, spans)


def test_many_conversations_encode_as_each_alone_and_a_refusal_names_its_conversation(tokenizer):
    tokenizer.chat_template = NO_SYSTEM
    talks = [QUOTED[1:], QUOTED[1:3], [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]]
    together = encode_chats(talks, tokenizer)
    alone = [encode_chat(t, tokenizer) for t in talks]
    assert [(ids, mask.tolist(), flags) for ids, mask, flags in together] == [
        (ids, mask.tolist(), flags) for ids, mask, flags in alone]
    with pytest.raises(ChatTemplateError) as refused:
        encode_chats([*talks, QUOTED], tokenizer)
    assert refused.value.conversation == 3 and "System role not supported" in str(refused.value)


def test_a_template_that_does_not_end_its_answers_is_warned_about(tokenizer):
    """train.py logs it: trained in such a template, the model is never shown where an answer ends."""
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
                               "{% if add_generation_prompt %}assistant: {% endif %}")
    assert CHAT.unended_answers(tokenizer, "models/m") == (
        "models/m: the chat template writes nothing after an assistant turn (no end-of-turn token, no EOS), so "
        "training does not teach the model where an answer ends: it will run on to the answer budget. A template "
        "that closes each assistant turn (as ChatML's <|im_end|> does) avoids this.")
    assert load_prompt_format("alpaca").unended_answers(tokenizer, "models/m") is None  # Alpaca's EOS: always
    tokenizer.chat_template = CHATML
    assert CHAT.unended_answers(tokenizer, "models/m") is None
