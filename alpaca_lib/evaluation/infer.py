"""Answer instructions with a tuned model, through the Alpaca prompt template.

    python -m alpaca_lib.evaluation.infer --model_dir runs/demo --instruction "Give three tips for staying healthy."
    python -m alpaca_lib.evaluation.infer --model_dir runs/demo --instruction "Translate to French." --input "Good night."
    python -m alpaca_lib.evaluation.infer --model_dir runs/demo --data_path alpaca_data.json --num_examples 3
    python -m alpaca_lib.evaluation.infer --model_dir runs/demo --chat       # or: python eval_model.py chat --model_dir ...
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence, TextIO

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import expand_home
from alpaca_lib.core.signals import on_interrupt
from alpaca_lib.data.json_reader import load_records
from alpaca_lib.evaluation.config import ChatConfig
from alpaca_lib.evaluation.outputs import LocalModel, prompt_of
from alpaca_lib.evaluation.settings import GenerationSettings


def generate_responses(
    model,
    tokenizer,
    examples: Sequence[dict],
    max_new_tokens: int = 128,
    do_sample: bool = False,
    batch_size: int = 8,
) -> list[str]:
    """Generates a response for each {"instruction", "input"} record (batched, in the records' order).

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        examples: records with "instruction" and optionally "input".
        max_new_tokens: generation budget per response.
        do_sample: sample instead of greedy decoding.
        batch_size: prompts generated together.
    Returns:
        The decoded responses (the text after "### Response:", special tokens removed, stripped).
    """
    settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=do_sample)
    responses: list[str] = [""] * len(examples)
    for idx, answers in LocalModel(model, tokenizer).answer([prompt_of(e) for e in examples], settings, batch_size):
        for i, a in zip(idx, answers):
            responses[i] = a.output
    return responses


def chat_loop(cfg: ChatConfig, stdin: Optional[TextIO] = None, stdout: Optional[TextIO] = None,
              stderr: Optional[TextIO] = None) -> None:
    """An interactive loop: reads an instruction, then an optional input (an empty line for none), and streams
    the answer. Ends at end of input (Ctrl-D). Prompts go to stderr, answers to stdout (one turn per line).
    The one chat of the project: `eval_model.py chat` and `python -m alpaca_lib.evaluation.infer --chat` both run it.

    Args:
        cfg: the model and the decoding settings (alpaca_lib/evaluation/config.py, where their defaults live).
    """
    import torch  # deferred: --help and a bad flag answer without loading torch
    from transformers import TextStreamer

    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr

    lm = LocalModel.load(cfg.model_dir, cfg.gguf_file)
    sampling = GenerationSettings(do_sample=cfg.do_sample, temperature=cfg.temperature, top_p=cfg.top_p).sampling_kwargs()

    class _Streamer(TextStreamer):  # here, as its base class is imported only when a chat starts
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            stdout.write(text if not stream_end else text.rstrip("\n") + "\n")
            stdout.flush()

    print("Alpaca chat: an instruction per turn, then an optional input (Enter for none); Ctrl-D quits.",
          file=stderr, flush=True)
    context = getattr(lm.model.config, "max_position_embeddings", None)
    if context is not None and cfg.max_new_tokens >= context:
        raise UsageError(f"--max_new_tokens {cfg.max_new_tokens} leaves no room for a question: the model reads "
                         f"{context} tokens at most, answer included. Give a smaller --max_new_tokens.")
    while True:
        instruction = _ask("Instruction: ", stdin, stderr)
        if not instruction:
            break
        if not instruction.strip():
            continue
        input_text = _ask("Input (optional): ", stdin, stderr)
        record = {"instruction": instruction.rstrip("\n"), "input": input_text.rstrip("\n")}
        if context is not None:
            record = _fit_to_context(lm.tokenizer, record, context - cfg.max_new_tokens, stderr)
        batch = lm.tokenizer(prompt_of(record), return_tensors="pt").to(lm.device)
        with torch.no_grad():
            lm.model.generate(**batch, max_new_tokens=cfg.max_new_tokens, eos_token_id=lm.eos_ids, pad_token_id=lm.pad_id,
                              streamer=_Streamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True), **sampling)
        if not input_text:
            break
    print("", file=stderr, flush=True)


def _ask(question: str, stdin: TextIO, stderr: TextIO) -> str:
    """Asks `question` on stderr and reads one line ("" at end of input). A line that is not UTF-8 (the terminal
    or the pipe sent other bytes) is reported in one line and the question asked again."""
    while True:
        print(question, end="", file=stderr, flush=True)
        raw = stdin.buffer.readline() if hasattr(stdin, "buffer") else stdin.readline()
        try:  # bytes from a real stdin; a str (a test's StringIO) may hold the surrogates of undecodable bytes
            if isinstance(raw, bytes):
                return raw.decode("utf-8")
            raw.encode("utf-8")
            return raw
        except UnicodeError as e:
            bad = raw[e.start] if isinstance(raw, bytes) else ord(raw[e.start]) - 0xDC00
            print(f"error: that line could not be decoded as UTF-8 (byte 0x{bad:02x} at position {e.start}); "
                  "nothing was sent to the model: type it again in UTF-8.", file=stderr, flush=True)


def _fit_to_context(tokenizer, record: dict, limit: int, stderr: TextIO) -> dict:
    """`record` with its instruction, then its input, cut to their first tokens so that the prompt holds at most
    `limit` tokens (the model's context less the answer's budget); a cut is said in one line on stderr."""
    n = len(tokenizer(prompt_of(record))["input_ids"])
    if n <= limit:
        return record
    # What the template takes, and a few tokens' room: decoded cut text can tokenize a little longer.
    template = len(tokenizer(prompt_of({"instruction": "", "input": "x" if record["input"] else ""}))["input_ids"])
    budget = max(1, limit - template - 8)
    cut, said = dict(record), []
    for field in ("instruction", "input"):
        ids = tokenizer(record[field], add_special_tokens=False)["input_ids"]
        keep = min(len(ids), budget)
        if keep < len(ids):
            cut[field] = tokenizer.decode(ids[:keep])
            said.append(f"the {field} to its first {keep} of {len(ids)} tokens")
        budget -= keep
    print(f"warning: this turn's prompt is {n} tokens and the model reads {limit} at most (its context less "
          f"--max_new_tokens): cut {' and '.join(said)}.", file=stderr, flush=True)
    return cut


def main(
    model_dir: str,
    instruction: Optional[str] = None,
    input: str = "",  # noqa: A002 - the Alpaca field name, as on the command line
    data_path: Optional[str] = None,
    num_examples: int = 3,
    max_new_tokens: Optional[int] = None,
    gguf_file: Optional[str] = None,
    chat: bool = False,
) -> None:
    """Prints the model's answer to one instruction, or to the first records of an Alpaca file; or chats.

    Args:
        model_dir: a saved model and tokenizer (e.g. train.py's --output_dir).
        instruction: the instruction to answer (with --input for the optional input).
        data_path: instead of --instruction, answer the first `num_examples` records of this file (an
            Alpaca file, or instructions only, as eval_instructions.json) and show each record's reference
            output, if it has one, beside the model's.
        max_new_tokens: generation budget per response (default 128; with --chat, eval_model.py chat's).
        gguf_file: a GGUF file inside `model_dir` to load instead of safetensors.
        chat: talk to the model turn by turn instead (see `chat_loop`).
    """
    model_dir, data_path = expand_home(model_dir), expand_home(data_path)
    budget = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}  # else each path's default
    if chat:
        with on_interrupt("the chat ended."):
            chat_loop(ChatConfig(model_dir=model_dir, gguf_file=gguf_file, **budget))
        return
    if instruction:
        examples = [{"instruction": instruction, "input": input}]
    elif data_path:
        # An instruction file (eval_instructions.json) has no outputs; a training file's are shown beside the answers.
        examples = load_records(data_path, required=("instruction",), optional=("input", "output"))[:num_examples]
    else:
        raise UsageError("give --instruction TEXT (and optionally --input TEXT), --data_path FILE, or --chat.")
    lm = LocalModel.load(model_dir, gguf_file)
    responses = generate_responses(lm.model, lm.tokenizer, examples, **budget)
    for example, response in zip(examples, responses):
        print(f"### Instruction:\n{example['instruction']}")
        if example.get("input"):
            print(f"### Input:\n{example['input']}")
        print(f"### Response:\n{response}")
        if "output" in example:
            print(f"### Reference output:\n{example['output']}")
        print()


if __name__ == "__main__":
    from alpaca_lib.core.cli import run_fire

    run_fire(main, "python -m alpaca_lib.evaluation.infer", config_file=False, quiet=True)
