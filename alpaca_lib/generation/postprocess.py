"""The self-instruct prompt and the rules that turn a model's reply into instruction records.

    >>> from alpaca_lib.generation.postprocess import encode_prompt, post_process_gpt3_response
    >>> prompt = encode_prompt(seed_records[:3], Path("prompt.txt").read_text())
    >>> post_process_gpt3_response(3, {"text": reply_text, "finish_reason": "stop"})

Every decision here is the original Alpaca generator's: the numbered `Instruction/Input/Output`
layout separated by `###`, `<noinput>` for an empty input, dropping the last item of a reply cut off
by the token limit, the 3 < words <= 150 rule, the whole-word blacklist, "Write a program", and
instructions that start with punctuation or a non-ASCII character. `stats` (optional) counts why
each item was discarded, so a run can report it.

`keep_other_scripts=True` (`--keep_other_scripts`) is the one departure, asked for: instructions may
start with a letter or digit of any script, and each Chinese or Japanese character counts as a word
in the length rule, since those scripts put no spaces between words.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from alpaca_lib.core.errors import UsageError
from alpaca_lib.data.records import RecordMessages, check_record

# Stop sequences of the original request: the prompt asks for 20 tasks, so "20" marks the end.
STOP_SEQUENCES = ["\n20", "20.", "20."]

# Words that point at tasks a text-only model cannot do (images, files, audio, actions).
BLACKLIST = [
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
]

# The blacklist as one pattern: a match of any word, whole, is a match of this (the original searched word by word).
_BLACKLIST_RE = re.compile(r"\b({0})\b".format("|".join(BLACKLIST)), flags=re.IGNORECASE)
# Kana and Han ideographs: scripts written without spaces between words, where a character counts as a word.
_NO_SPACE_LETTERS = "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f"
# Their punctuation (。、「」 and the full-width ，！？：), which separates words and is none.
_NO_SPACE_PUNCTUATION = "\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
# A word, when other scripts are kept: one such letter, or a run of anything but spaces and those.
_WORD_ANY_SCRIPT = re.compile(f"[{_NO_SPACE_LETTERS}]|[^\\s{_NO_SPACE_LETTERS}{_NO_SPACE_PUNCTUATION}]+")

# Discard reasons, in the order the rules are applied; the run summary reports them by these names.
DISCARD_REASONS = (
    "oversized",  # a whole reply longer than --max_reply_chars (counted once per reply; it is not parsed)
    "truncated",  # last item of a reply that hit the token limit
    "malformed",  # item does not split into Instruction / Input / Output
    "too_short",  # 3 words or fewer
    "too_long",  # more than 150 words
    "blacklist",  # mentions a blacklisted word
    "write_a_program",  # starts with "Write a program"
    "punctuation_start",
    "non_ascii_start",  # (with keep_other_scripts: a non-ASCII character that is no letter or digit)
    "similar",  # ROUGE-L > 0.7 against an instruction already kept (counted by the dedup step)
)


def find_word_in_string(w: str, s: str) -> re.Match | None:
    """Finds `w` as a whole word (or phrase) in `s`, ignoring case.

    Args:
        w: the word or phrase (used as a regular expression, as the original did).
        s: the text to search.
    Returns:
        The match, or None.
    """
    return re.compile(r"\b({0})\b".format(w), flags=re.IGNORECASE).search(s)


def encode_prompt(prompt_instructions: Sequence[Mapping[str, str]], prompt_text: str) -> str:
    """Builds the request prompt: the meta-prompt, then the examples as a numbered list.

    Args:
        prompt_instructions: records with "instruction", "input" and "output".
        prompt_text: the meta-prompt (the content of prompt.txt).
    Returns:
        The prompt, ending in "<k+1>. Instruction:" so the model continues the list.
    """
    prompt = prompt_text + "\n"
    idx = -1
    for idx, task_dict in enumerate(prompt_instructions):
        instruction, task_input, output = task_dict["instruction"], task_dict["input"], task_dict["output"]
        instruction = re.sub(r"\s+", " ", instruction).strip().rstrip(":")
        task_input = "<noinput>" if task_input.lower() == "" else task_input
        prompt += "###\n"
        prompt += f"{idx + 1}. Instruction: {instruction}\n"
        prompt += f"{idx + 1}. Input:\n{task_input}\n"
        prompt += f"{idx + 1}. Output:\n{output}\n"
    prompt += "###\n"
    prompt += f"{idx + 2}. Instruction:"
    return prompt


def strip_repeated_header(text: str, num_prompt_instructions: int) -> str:
    """Removes a leading "<k+1>. Instruction:" that a chat model may repeat from the prompt's end.

    Completion models continue after the header; chat models answer afresh and often restate it.
    Both shapes then parse the same way.
    """
    header = re.match(rf"\s*(?:###\s*)?{num_prompt_instructions + 1}\.\s*Instruction:", text)
    return text[header.end() :] if header else text


def post_process_gpt3_response(
    num_prompt_instructions: int,
    response: Mapping[str, Any] | None,
    stats: Counter | None = None,
    keep_other_scripts: bool = False,
) -> list[dict[str, str]]:
    """Splits one reply into instruction records and applies the original filters.

    Args:
        num_prompt_instructions: how many examples the prompt held (the reply starts at k+1).
        response: {"text": ..., "finish_reason": ...}, or None for a failed request.
        stats: if given, incremented by discard reason (see DISCARD_REASONS).
        keep_other_scripts: keep instructions that start with a non-ASCII letter or digit, and count
            each Chinese or Japanese character as a word (the original drops them all).
    Returns:
        The records that pass, each {"instruction", "input", "output"}.
    """
    if response is None:
        return []
    stats = stats if stats is not None else Counter()
    raw_instructions = f"{num_prompt_instructions + 1}. Instruction:" + (response["text"] or "")
    raw_instructions = re.split("###", raw_instructions)
    instructions = []
    for idx, inst in enumerate(raw_instructions):
        # A reply cut off by the token limit most likely ends in a half-written item.
        if idx == len(raw_instructions) - 1 and response["finish_reason"] == "length":
            if inst.strip():  # blank pieces (e.g. after a final "###") are not items; only counts differ
                stats["truncated"] += 1
            continue
        idx += num_prompt_instructions + 1
        splitted_data = re.split(rf"{idx}\.\s+(Instruction|Input|Output):", inst)
        if len(splitted_data) != 7:
            if inst.strip():
                stats["malformed"] += 1
            continue
        inst = splitted_data[2].strip()
        task_input = splitted_data[4].strip()
        task_input = "" if task_input.lower() == "<noinput>" else task_input
        output = splitted_data[6].strip()
        n_words = len(_WORD_ANY_SCRIPT.findall(inst)) if keep_other_scripts else len(inst.split())
        if n_words <= 3:
            stats["too_short"] += 1
            continue
        if n_words > 150:
            stats["too_long"] += 1
            continue
        if _BLACKLIST_RE.search(inst):
            stats["blacklist"] += 1
            continue
        # Models tend to prepend "Write a program" to ordinary tasks, which leaves it unclear
        # whether the answer is a program or the result; the original drops these.
        if inst.startswith("Write a program"):
            stats["write_a_program"] += 1
            continue
        if inst[0] in string.punctuation:
            stats["punctuation_start"] += 1
            continue
        if not inst[0].isascii() and not (keep_other_scripts and inst[0].isalnum()):
            stats["non_ascii_start"] += 1
            continue
        instructions.append({"instruction": inst, "input": task_input, "output": output})
    return instructions


_INSTRUCTION = "{where}: 'instruction' must be a non-empty string; found keys {keys}"
_SEED_TASK = RecordMessages(not_object="{where}: expected a JSON object, found {type}", missing=None,
                            not_string=_INSTRUCTION, blank=_INSTRUCTION)
_SEED_INSTANCE = RecordMessages(missing=None, not_string="{where}: instances[0].{key} must be a string; found {value!r}")


def load_seed_tasks(path: str | Path) -> list[dict[str, str]]:
    """Reads self-instruct seed tasks (JSON lines) into instruction/input/output records.

    Each line is {"id", "name", "instruction", "instances": [{"input", "output"}, ...],
    "is_classification"}; as in the original, the first instance gives the example's input/output.
    Blank lines are skipped.

    Args:
        path: the .jsonl file.
    Returns:
        One record per task, in file order.
    Raises:
        FileNotFoundError / ValueError naming the file and line of the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"seed tasks file {path} not found; pass --seed_tasks_path=PATH to a self-instruct seed file (JSON lines)"
        )
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                task = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON object") from None
            check_record(task, where, ["instruction"], non_blank=["instruction"], messages=_SEED_TASK,
                         error=UsageError)
            instances = task.get("instances")
            if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
                raise UsageError(
                    f"{where}: 'instances' must be a non-empty list of {{\"input\": ..., \"output\": ...}} objects"
                )
            first = check_record(instances[0], where, ["input", "output"], messages=_SEED_INSTANCE,
                                 error=UsageError)
            records.append({"instruction": task["instruction"], "input": first["input"], "output": first["output"]})
    if not records:
        raise UsageError(f"{path}: no seed tasks found; the file is empty")
    return records
