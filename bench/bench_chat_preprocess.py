"""Preprocessing in the chat format against the Alpaca format, on the same records and tokenizer.

    .venv/bin/python bench/bench_chat_preprocess.py [--n 5000] [--tokenizer smollm2|tiny] [--turns 1]

Builds `--n` Alpaca records of realistic lengths (`benchutil.synthesize_records`), then times in one run:
  1. `--prompt_template alpaca`: the batched path of the original masking (`tokenize_records`);
  2. `--prompt_template chat`: each record rendered by the chat template, its assistant turn found by rendering
     prefixes, the texts tokenized with offsets in one call (`alpaca_lib.data.conversations.encode_chats`);
  3. chat with `--turns` user/assistant exchanges per record (the records' texts chained into conversations),
     per assistant turn, since each turn but the last renders the conversation up to it twice.
Prints the times, the chat/alpaca ratio and the tokens in the loss of each.
"""

from __future__ import annotations

import argparse
import time

from bench_preprocess import load_tokenizer
from benchutil import synthesize_records, with_machine

from alpaca_lib.data.formats import load_prompt_format
from alpaca_lib.data.tokenizing import tokenize_records

# A ChatML template like SmolLM2's, for a tokenizer that ships none (the tiny one).
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def conversations(records: list[dict], turns: int) -> list[dict]:
    """The records chained `turns` at a time into conversations of user/assistant exchanges."""
    out = []
    for start in range(0, len(records) - turns + 1, turns):
        messages = []
        for r in records[start:start + turns]:
            user = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]
        out.append({"messages": messages})
    return out


def timed(records, tokenizer, fmt) -> tuple[float, dict]:
    start = time.perf_counter()
    data = tokenize_records(records, tokenizer, prompt_format=fmt)
    return time.perf_counter() - start, data.stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--tokenizer", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--turns", type=int, default=4, help="exchanges per conversation in the multi-turn case")
    args = parser.parse_args()
    tokenizer, name = load_tokenizer(args.tokenizer, args.max_length)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML
    records = synthesize_records(args.n)
    alpaca_s, alpaca = timed(records, tokenizer, load_prompt_format("alpaca"))
    chat_s, chat = timed(records, tokenizer, load_prompt_format("chat"))
    multi = conversations(records, args.turns)
    multi_s, multi_stats = timed(multi, tokenizer, load_prompt_format("chat"))
    per_turn_ms = 1000 * multi_s / max(1, len(multi) * args.turns)
    print(f"tokenizer: {name}; {len(records)} records, max length {args.max_length}")
    print(f"alpaca: {alpaca_s:.2f} s ({1000 * alpaca_s / len(records):.3f} ms a record), "
          f"{alpaca['tokens']} tokens ({alpaca['loss_tokens']} in the loss)")
    print(f"chat:   {chat_s:.2f} s ({1000 * chat_s / len(records):.3f} ms a record), "
          f"{chat['tokens']} tokens ({chat['loss_tokens']} in the loss); {chat_s / alpaca_s:.2f}x alpaca's time")
    print(f"chat, {args.turns} exchanges a record: {multi_s:.2f} s for {len(multi)} conversations "
          f"({per_turn_ms:.3f} ms an assistant turn), {multi_stats['loss_tokens']} tokens in the loss")
    print(with_machine(f"RESULT records={len(records)} alpaca_s={alpaca_s:.3f} chat_s={chat_s:.3f} "
                       f"chat_x={chat_s / alpaca_s:.2f} multi_turn_s={multi_s:.3f} per_turn_ms={per_turn_ms:.3f} "
                       f"alpaca_loss_tokens={alpaca['loss_tokens']} chat_loss_tokens={chat['loss_tokens']}"))


if __name__ == "__main__":
    main()
