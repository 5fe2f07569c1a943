"""The self-instruct prompt, reply filters and seed loading, pinned rule by rule.

    .venv/bin/python -m pytest tests/test_generate_postprocess.py -q
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

import pytest

import generate_instruction as gi
from alpaca_lib.core.errors import UsageError
from alpaca_lib.generation.postprocess import (
    STOP_SEQUENCES,
    load_seed_tasks,
    post_process_gpt3_response,
    strip_repeated_header,
)
from alpaca_lib.llm.client import default_logit_bias, infer_api_style
from conftest import REPO_ROOT, seed_task

EXPECTED_PROMPT_TXT = """\
Your job is to write a set of 20 varied task instructions. These instructions will be given to a GPT model, and we will judge how well the model carries them out.

Follow these requirements:
1. Vary the verbs: avoid using the same verb in more than one instruction, so that the set is as diverse as possible.
2. Vary the phrasing too: mix questions with imperative instructions.
3. Vary the kinds of task: the list should cover many task types, such as open-ended generation, classification, editing and so on.
4. Every instruction must be something a GPT language model can do. For example, do not ask for visual or audio output, and do not ask it to wake you up at 5pm or to set a reminder, because it cannot take actions.
5. Write the instructions in English.
6. Keep each instruction to 1 or 2 sentences. Either an imperative sentence or a question is fine.
7. Write a fitting input for the instruction: a specific example for that instruction, made of realistic data rather than simple placeholders. The input should carry enough substance to make the task challenging, but ideally no more than 100 words.
8. Not every instruction needs an input. For example, an instruction that asks for general knowledge, such as "what is the highest peak in the world", needs no specific context. In that case, put "<noinput>" in the input field.
9. The output must be a fitting response to the instruction and the input, in fewer than 100 words.

List of 20 tasks:
"""


def test_prompt_txt_is_pinned_and_numbered_in_order():
    text = (REPO_ROOT / "prompt.txt").read_text(encoding="utf-8")
    assert text == EXPECTED_PROMPT_TXT
    numbers = [int(n) for n in re.findall(r"^(\d+)\. ", text, flags=re.MULTILINE)]
    assert numbers == list(range(1, 10))
    assert "<noinput>" in text and text.rstrip().endswith("List of 20 tasks:")


def test_encode_prompt_layout_is_byte_exact():
    examples = [
        {"instruction": "Sort  these\nnumbers:", "input": "3, 1, 2", "output": "1, 2, 3"},
        {"instruction": "Name a primary colour.", "input": "", "output": "Red."},
    ]
    got = gi.encode_prompt(examples, prompt_text="META")
    assert got == (
        "META\n"
        "###\n1. Instruction: Sort these numbers\n1. Input:\n3, 1, 2\n1. Output:\n1, 2, 3\n"
        "###\n2. Instruction: Name a primary colour.\n2. Input:\n<noinput>\n2. Output:\nRed.\n"
        "###\n3. Instruction:"
    )
    # The default reads prompt.txt next to the script.
    assert gi.encode_prompt(examples).startswith(EXPECTED_PROMPT_TXT + "\n###\n1. Instruction: Sort")


def _item(n, instruction, task_input="<noinput>", output="An answer."):
    return f"{n}. Instruction: {instruction}\n{n}. Input:\n{task_input}\n{n}. Output:\n{output}\n"


def test_reply_parsing_noinput_and_continuation():
    text = " Give three tips for staying healthy.\n4. Input:\n<noinput>\n4. Output:\nSleep, eat, move.\n###\n" + _item(
        5, "Translate the sentence into French.", "I like tea.", "J'aime le thé."
    )
    stats = Counter()
    got = post_process_gpt3_response(3, {"text": text, "finish_reason": "stop"}, stats)
    assert got == [
        {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Sleep, eat, move."},
        {"instruction": "Translate the sentence into French.", "input": "I like tea.", "output": "J'aime le thé."},
    ]
    assert sum(stats.values()) == 0
    assert post_process_gpt3_response(3, None) == []


def test_length_finish_drops_last_item_only():
    text = " Give three tips for staying healthy.\n4. Input:\n<noinput>\n4. Output:\nSleep.\n###\n" + _item(
        5, "Describe the water cycle briefly."
    )
    full = post_process_gpt3_response(3, {"text": text, "finish_reason": "stop"})
    stats = Counter()
    cut = post_process_gpt3_response(3, {"text": text, "finish_reason": "length"}, stats)
    assert [r["instruction"] for r in full] == ["Give three tips for staying healthy.", "Describe the water cycle briefly."]
    assert [r["instruction"] for r in cut] == ["Give three tips for staying healthy."]
    assert stats == Counter(truncated=1)


@pytest.mark.parametrize(
    "instruction, reason",
    [
        ("Say hi now", "too_short"),  # 3 words
        (" ".join(["word"] * 151), "too_long"),
        ("Describe the image in one sentence.", "blacklist"),
        ("Summarize the attached FILES for me.", "blacklist"),  # case-insensitive
        ("Explain how to go to the station from here.", "blacklist"),  # a phrase
        ("Write a program that prints the numbers.", "write_a_program"),
        ('"Quote" this sentence back to me.', "punctuation_start"),
        ("Éxplain the rules of chess briefly.", "non_ascii_start"),
    ],
)
def test_each_filter_rule(instruction, reason):
    stats = Counter()
    assert post_process_gpt3_response(0, {"text": " " + _item(1, instruction)[len("1. Instruction:"):], "finish_reason": "stop"}, stats) == []
    assert stats == Counter({reason: 1})


@pytest.mark.parametrize(
    "instruction",
    [
        "Say hi to them",  # 4 words pass
        " ".join(["word"] * 150),  # 150 words pass
        "Describe the imagery in this poem.",  # "imagery" is not the word "image"
        "Write a poem about programming.",  # only "Write a program" at the start is dropped
        "Please write a program that adds numbers.",
        "Explain how to get to the station.",
    ],
)
def test_near_misses_are_kept(instruction):
    got = post_process_gpt3_response(0, {"text": " " + _item(1, instruction)[len("1. Instruction:"):], "finish_reason": "stop"})
    assert [r["instruction"] for r in got] == [instruction]


# The original generate_instruction.py's blacklist, copied here word for word: the list in postprocess.py
# must not lose (or gain) a word unseen.
ORIGINAL_BLACKLIST = [
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
]


def test_blacklist_is_the_originals_and_each_word_drops_an_instruction():
    from alpaca_lib.generation.postprocess import BLACKLIST

    assert BLACKLIST == ORIGINAL_BLACKLIST
    for word in ORIGINAL_BLACKLIST:
        stats = Counter()
        instruction = f"Please describe the {word} in two short sentences."
        got = post_process_gpt3_response(0, {"text": " " + _item(1, instruction)[len("1. Instruction:"):],
                                             "finish_reason": "stop"}, stats)
        assert (got, stats) == ([], Counter(blacklist=1)), word


def test_malformed_items_are_counted_and_skipped():
    text = " Describe a sunny day at the beach.\n1. Output:\nno input header\n###\n" + _item(2, "List five kinds of fruit please.")
    stats = Counter()
    got = post_process_gpt3_response(0, {"text": text, "finish_reason": "stop"}, stats)
    assert [r["instruction"] for r in got] == ["List five kinds of fruit please."]
    assert stats == Counter(malformed=1)
    # Wrong numbering is malformed too (item 3 where 2 is expected).
    stats = Counter()
    assert post_process_gpt3_response(0, {"text": " " + _item(1, "x y z w")[16:] + "###\n" + _item(3, "List five kinds of fruit please."), "finish_reason": "stop"}, stats) == [
        {"instruction": "x y z w", "input": "", "output": "An answer."}
    ]
    assert stats == Counter(malformed=1)


def test_chat_reply_with_or_without_repeated_header_parses_the_same():
    body = " Name the largest planet in the solar system.\n4. Input:\n<noinput>\n4. Output:\nJupiter.\n###\n"
    plain = strip_repeated_header(body, 3)
    repeated = strip_repeated_header("4. Instruction:" + body, 3)
    spaced = strip_repeated_header("\n  4.  Instruction:" + body, 3)
    expected = [{"instruction": "Name the largest planet in the solar system.", "input": "", "output": "Jupiter."}]
    for text in (plain, repeated, spaced):
        assert post_process_gpt3_response(3, {"text": text, "finish_reason": "stop"}) == expected
    assert strip_repeated_header("5. Instruction: x", 3) == "5. Instruction: x"


def test_stop_sequences_and_api_style_table():
    assert STOP_SEQUENCES == ["\n20", "20.", "20."]
    assert [infer_api_style(m) for m in ("gpt-3.5-turbo-instruct", "davinci-002", "babbage-002", "text-davinci-003", "openai/gpt-3.5-turbo-instruct")] == ["completions"] * 5
    assert [infer_api_style(m) for m in ("gpt-4o-mini", "SmolLM2-135M-Instruct", "llama3", "davinci-003")] == ["chat"] * 4
    assert default_logit_bias("text-davinci-003", "completions") == {"50256": -100}
    assert default_logit_bias("davinci", "completions") == {"50256": -100}
    assert default_logit_bias("gpt-3.5-turbo-instruct", "completions") == {"100257": -100}
    assert default_logit_bias("my-local-instruct", "completions") is None
    assert default_logit_bias("gpt-4o-mini", "chat") is None


def test_seed_loader_reads_first_instance_and_skips_blank_lines(tmp_path):
    p = tmp_path / "seeds.jsonl"
    p.write_text(json.dumps(seed_task(0, "Add the numbers.", "1 2", "3")) + "\n\n" + json.dumps(
        {**seed_task(1, "Name a colour."), "instances": [{"input": "", "output": "Red"}, {"input": "x", "output": "y"}]}
    ) + "\n", encoding="utf-8")
    assert load_seed_tasks(p) == [
        {"instruction": "Add the numbers.", "input": "1 2", "output": "3"},
        {"instruction": "Name a colour.", "input": "", "output": "Red"},
    ]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"instruction": "x", ', r"seeds.jsonl:2: not valid JSON"),
        ('["a list"]', r"seeds.jsonl:2: expected a JSON object"),
        ('{"instances": [{"input": "", "output": "o"}]}', r"seeds.jsonl:2: 'instruction' must be a non-empty string"),
        ('{"instruction": "x", "instances": []}', r"seeds.jsonl:2: 'instances' must be a non-empty list"),
        ('{"instruction": "x", "instances": [{"input": "", "output": 3}]}', r"seeds.jsonl:2: instances\[0\].output must be a string"),
    ],
)
def test_malformed_seed_line_is_named(tmp_path, line, message):
    p = tmp_path / "seeds.jsonl"
    p.write_text(json.dumps(seed_task(0, "Fine task here.")) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_seed_tasks(p)


def test_missing_or_empty_seed_file(tmp_path):
    with pytest.raises(UsageError, match="seed_tasks_path"):
        load_seed_tasks(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no seed tasks"):
        load_seed_tasks(tmp_path / "empty.jsonl")


def test_shipped_seed_file_loads_unchanged():
    path = REPO_ROOT / "seed_tasks.jsonl"
    records = load_seed_tasks(path)
    assert len(records) == 175
    assert records[1] == {
        "instruction": "Explain photosynthesis to a ten-year-old in three or four sentences.",
        "input": "",
        "output": "Plants make their own food using sunlight. Their leaves catch light and use its energy to combine "
        "water from the roots with carbon dioxide from the air. This makes a kind of sugar that the plant uses to "
        "grow, and it gives off oxygen as a leftover. That oxygen is part of the air we breathe.",
    }
    # Every record is its line's instruction and first instance, byte for byte (no stripping or rewriting).
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert records == [{"instruction": t["instruction"], **t["instances"][0]} for t in lines]


def test_project_seed_file_loads():
    records = load_seed_tasks(REPO_ROOT / "seed_tasks.jsonl")
    assert len(records) == 175
    assert len({r["instruction"] for r in records}) == 175


def test_importing_the_script_does_not_import_openai():
    code = "import sys, generate_instruction, utils; print('openai' in sys.modules, 'rapidfuzz' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
