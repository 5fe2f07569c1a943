"""Instructions in other scripts: the opt-in filter, character-level ROUGE-L and a meta-prompt in Chinese.

    .venv/bin/python -m pytest tests/test_generate_languages.py -q

The default stays the original filter (an instruction that starts with a non-ASCII character is
dropped, and one written without spaces is one "word", too short). `--keep_other_scripts` keeps them;
`--rouge_tokenizer=chars` lets the ROUGE-L dedup see their characters, which rouge_score's tokenizer
drops. Each case checks the exact instructions kept.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from alpaca_lib.generation import postprocess
from alpaca_lib.generation.postprocess import BLACKLIST, find_word_in_string, post_process_gpt3_response
from alpaca_lib.generation.runner import GenerateConfig, run_generation
from conftest import seed_task, write_seed_tasks
from openai_stub import OpenAIStub, Step, completion_body

CHINESE_PROMPT = "你的任务是写出20条不同的任务指令。\n\n20条任务的列表：\n"
# The reply, after "4. Instruction:": four Chinese instructions (the second a near-copy of the first),
# one English one, and one that opens with a Chinese quotation mark.
ITEMS = [
    ("写一首关于秋天的诗。", "<noinput>", "秋风起，落叶飞。"),
    ("写一首关于秋天的短诗。", "<noinput>", "金黄的叶子。"),
    ("列出三种常见的蔬菜。", "<noinput>", "白菜、萝卜、土豆。"),
    ("把这句话翻译成英文。", "今天天气很好。", "The weather is nice today."),
    ("Explain why leaves change colour in autumn.", "<noinput>", "Less chlorophyll."),
    ("「春晓」这首诗的作者是谁？", "<noinput>", "孟浩然。"),
]


def _reply() -> str:
    parts = [f"{' ' if n == 4 else f'{n}. Instruction: '}{ins}\n{n}. Input:\n{inp}\n{n}. Output:\n{out}\n"
             for n, (ins, inp, out) in enumerate(ITEMS, start=4)]
    return "###\n".join(parts).lstrip() + "###\n"


@pytest.fixture
def seeds(tmp_path) -> Path:
    tasks = [seed_task(i, ins, "", "out") for i, ins in enumerate(
        ["Give three tips for staying healthy.", "Translate the sentence into French.", "Suggest a name for a bakery.",
         "Explain why the sky is blue."])]
    return write_seed_tasks(tmp_path / "seeds.jsonl", tasks)


def _run(tmp_path, seeds, name, **kw):
    prompt = tmp_path / "prompt_zh.txt"
    prompt.write_text(CHINESE_PROMPT, encoding="utf-8")
    with OpenAIStub(default=lambda req: Step(body=completion_body([_reply()]))) as stub:
        cfg = GenerateConfig(output_dir=str(tmp_path / name), seed_tasks_path=str(seeds), prompt_path=str(prompt),
                             num_instructions_to_generate=100, model_name="stub-model", api_style="completions",
                             base_url=stub.base_url, api_key="k", request_batch_size=1, num_cpus=1, seed=1,
                             max_batches=1, save_every_s=0, **kw)
        summary = run_generation(cfg, progress=False)
    items = json.loads((tmp_path / name / "regen.json").read_text(encoding="utf-8"))
    return summary, items, stub.requests


def test_default_keeps_the_original_filter_and_sends_the_given_meta_prompt(tmp_path, seeds):
    summary, items, requests = _run(tmp_path, seeds, "default")
    assert [it["instruction"] for it in items] == [ITEMS[4][0]]
    # Written without spaces, each Chinese instruction is one "word"; the quoted one too.
    assert {k: v for k, v in summary["discarded"].items() if v} == {"too_short": 5}
    prompt = requests[0].body["prompt"]
    assert prompt.startswith(CHINESE_PROMPT + "\n###\n1. Instruction: ") and prompt.endswith("\n###\n4. Instruction:")


def test_keep_other_scripts_keeps_them_and_rouge_words_sees_no_similarity(tmp_path, seeds):
    summary, items, _ = _run(tmp_path, seeds, "words", keep_other_scripts=True)
    assert [it["instruction"] for it in items] == [ITEMS[i][0] for i in (0, 1, 2, 3, 4)]
    assert items[3]["input"] == "今天天气很好。"
    assert {k: v for k, v in summary["discarded"].items() if v} == {"non_ascii_start": 1}  # 「 is no letter
    # rouge_score's tokens hold nothing of a Chinese text: every score is 0, the near-copy is kept.
    assert items[1]["most_similar_instructions"] == dict.fromkeys([ITEMS[0][0], *reversed(_seed_texts(seeds))], 0.0)
    assert items[1]["avg_similarity_score"] == 0.0


def test_rouge_chars_drops_the_near_copy_and_scores_english_as_before(tmp_path, seeds):
    _, words, _ = _run(tmp_path, seeds, "words", keep_other_scripts=True)
    summary, items, _ = _run(tmp_path, seeds, "chars", keep_other_scripts=True, rouge_tokenizer="chars")
    assert [it["instruction"] for it in items] == [ITEMS[i][0] for i in (0, 2, 3, 4)]
    assert summary["discarded"]["similar"] == 1
    # "列出三种常见的蔬菜" shares 的 with the autumn poem (1 of 9 and 9 characters): 2/18.
    assert items[1]["most_similar_instructions"][ITEMS[0][0]] == 0.1111111111111111
    # The English instruction scores against the English seeds as with words, and 0 against the Chinese.
    english = {k: v for k, v in items[3]["most_similar_instructions"].items() if k.isascii()}
    assert english == {k: v for k, v in words[4]["most_similar_instructions"].items() if k.isascii()}
    # "explain why": an LCS of 2 between 7 and 6 tokens; 2PR/(P+R) in rouge_score's float order, not 4/13.
    assert english["Explain why the sky is blue."] == 0.30769230769230765


def test_resume_refuses_another_tokenizer_or_meta_prompt(tmp_path, seeds):
    _run(tmp_path, seeds, "run", keep_other_scripts=True)
    with pytest.raises(ValueError, match=r"different rouge_tokenizer \('words', now 'chars'\).*--rouge_tokenizer"):
        _run(tmp_path, seeds, "run", keep_other_scripts=True, rouge_tokenizer="chars")
    with pytest.raises(ValueError, match=r"different keep_other_scripts \(True, now False\)"):
        _run(tmp_path, seeds, "run")
    (tmp_path / "other.txt").write_text("Another prompt.\n", encoding="utf-8")
    cfg = GenerateConfig(output_dir=str(tmp_path / "run"), seed_tasks_path=str(seeds), keep_other_scripts=True,
                         prompt_path=str(tmp_path / "other.txt"), base_url="http://127.0.0.1:9/v1", seed=1)
    with pytest.raises(ValueError, match=r"different meta-prompt .*--prompt_path"):
        run_generation(cfg, progress=False)


def test_bad_tokenizer_and_missing_prompt_are_usage_errors(tmp_path, seeds):
    with pytest.raises(ValueError, match="--rouge_tokenizer must be one of words, chars; got 'bytes'"):
        GenerateConfig(rouge_tokenizer="bytes").check()
    with pytest.raises(ValueError, match="--keep_other_scripts must be True or False; got 'yes'"):
        GenerateConfig(keep_other_scripts="yes").check()
    cfg = GenerateConfig(output_dir=str(tmp_path / "out"), seed_tasks_path=str(seeds), prompt_path=str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match=r"nope.txt not found; pass --prompt_path=FILE"):
        run_generation(cfg, progress=False)
    assert not (tmp_path / "out").exists()


def _seed_texts(seeds: Path) -> list[str]:
    return [json.loads(line)["instruction"] for line in seeds.read_text().splitlines()]


@pytest.mark.parametrize(
    "instruction, keep, reason",
    [
        ("写一首诗。", False, "too_short"),  # 4 characters but one "word" by spaces
        ("写一首诗。", True, None),  # 4 words, one a character
        ("写首诗。", True, "too_short"),  # 3: the full stop is no word
        ("東京タワーの高さは？", True, None),
        ("Напишите короткое стихотворение об осени.", False, "non_ascii_start"),
        ("Напишите короткое стихотворение об осени.", True, None),
        ("«Quote» this sentence back to me.", True, "non_ascii_start"),  # a quotation mark, not a letter
        ('"Quote" this sentence back to me.', True, "punctuation_start"),
        ("Describe the image in one sentence.", True, "blacklist"),
        ("Say hi now", True, "too_short"),
    ],
)
def test_filter_with_and_without_other_scripts(instruction, keep, reason):
    stats = Counter()
    reply = {"text": f" {instruction}\n1. Input:\n<noinput>\n1. Output:\nok", "finish_reason": "stop"}
    got = post_process_gpt3_response(0, reply, stats, keep_other_scripts=keep)
    assert ([r["instruction"] for r in got], stats) == (([], Counter({reason: 1})) if reason else ([instruction], Counter()))


def test_blacklist_pattern_decides_as_the_word_by_word_search():
    rng = random.Random(0)
    words = BLACKLIST + ["imagery", "Files", "go", "to", "goto", "mapping", "draws", "the", "IMAGE", "a-file", "music!"]
    for _ in range(3000):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        expected = any(find_word_in_string(w, text) for w in BLACKLIST)
        assert bool(postprocess._BLACKLIST_RE.search(text)) == expected, text
