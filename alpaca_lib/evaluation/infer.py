"""Answer instructions with a tuned model, in the prompt format it was trained in (its folder's prompt_format.json,
else the Alpaca template).

    python -m alpaca_lib.evaluation.infer --model_dir runs/demo --instruction "Give three tips for staying healthy."
    python -m alpaca_lib.evaluation.infer --model_dir runs/demo --instruction "Translate to French." --input "Good night."
    python -m alpaca_lib.evaluation.infer --model_dir runs/demo --data_path alpaca_data.json --num_examples 3
    python -m alpaca_lib.evaluation.infer --model_dir runs/demo --chat       # or: python eval_model.py chat --model_dir ...
    python eval_model.py chat --model_dir models/smollm2-135m-instruct --prompt_template chat   # a conversation

`--prompt_template` picks the format (alpaca_lib/data/formats.py): alpaca, chat (the model's own chat template) or
a JSON template file; without it, the format the model folder records (`prompt_format.json`, written by train.py,
its system prompt included), else alpaca (`choose_format`), said in the first line on stderr when it is not alpaca.
In the chat format `chat` keeps the conversation (the oldest exchanges are dropped once it no longer fits the
model's context); in the others each turn is one prompt on its own.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence, TextIO

from alpaca_lib.core.commands import check_text
from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import expand_home
from alpaca_lib.core.signals import on_interrupt
from alpaca_lib.data.formats import PromptFormat
from alpaca_lib.data.json_reader import load_records
from alpaca_lib.evaluation.config import ChatConfig
from alpaca_lib.evaluation.outputs import LocalModel, prompt_of
from alpaca_lib.evaluation.prompting import choose_format
from alpaca_lib.evaluation.provenance import format_mismatch_warning
from alpaca_lib.evaluation.settings import GenerationSettings


def generate_responses(
    model,
    tokenizer,
    examples: Sequence[dict],
    max_new_tokens: int = 128,
    do_sample: bool = False,
    batch_size: int = 8,
    prompt_format: Optional[PromptFormat] = None,
) -> list[str]:
    """Generates a response for each {"instruction", "input"} record (batched, in the records' order).

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        examples: records with "instruction" and optionally "input".
        max_new_tokens: generation budget per response.
        do_sample: sample instead of greedy decoding.
        batch_size: prompts generated together.
        prompt_format: the prompts' format (default: the Alpaca template).
    Returns:
        The decoded responses (the text after the prompt, special tokens removed, stripped).
    """
    settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=do_sample)
    responses: list[str] = [""] * len(examples)
    prompts = [prompt_of(e, prompt_format, tokenizer) for e in examples]
    for idx, answers in LocalModel(model, tokenizer, prompt_format).answer(prompts, settings, batch_size):
        for i, a in zip(idx, answers):
            responses[i] = a.output
    return responses


def chat_loop(cfg: ChatConfig, stdin: Optional[TextIO] = None, stdout: Optional[TextIO] = None,
              stderr: Optional[TextIO] = None) -> None:
    """An interactive loop that streams the model's answers; ends at end of input (Ctrl-D). Prompts go to stderr,
    answers to stdout (one turn per line). The one chat of the project: `eval_model.py chat` and
    `python -m alpaca_lib.evaluation.infer --chat` both run it.

    Alpaca (and a template file): reads an instruction, then an optional input (an empty line for none); each
    turn is a prompt on its own. Chat: reads one message per turn and answers the whole conversation, through the
    model's chat template; the oldest exchanges are left out once it no longer fits the model's context.

    Args:
        cfg: the model, the prompt format and the decoding settings (alpaca_lib/evaluation/config.py, where
            their defaults live).
    """
    import torch  # deferred: --help and a bad flag answer without loading torch
    from transformers import TextStreamer

    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr

    fmt = _chosen_format(cfg.prompt_template, cfg.system_prompt, cfg.model_dir, stderr)
    lm = LocalModel.load(cfg.model_dir, cfg.gguf_file, prompt_format=fmt)
    sampling = GenerationSettings(do_sample=cfg.do_sample, temperature=cfg.temperature, top_p=cfg.top_p).sampling_kwargs()

    class _Streamer(TextStreamer):  # here, as its base class is imported only when a chat starts
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            stdout.write(text if not stream_end else text.rstrip("\n") + "\n")
            stdout.flush()

    def reply(prompt: str) -> str:
        """Streams the answer to `prompt` and returns it (as `outputs` would write it)."""
        batch = lm.tokenizer(prompt, return_tensors="pt", add_special_tokens=lm.add_special_tokens).to(lm.device)
        with torch.no_grad():
            out = lm.model.generate(**batch, max_new_tokens=cfg.max_new_tokens, eos_token_id=lm.eos_ids,
                                    pad_token_id=lm.pad_id, **sampling,
                                    streamer=_Streamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True))
        return lm._answer(out[0, batch["input_ids"].shape[1]:].tolist(), cfg.max_new_tokens).output

    print("Chat in the model's chat template: a message per turn, the conversation kept while it fits; Ctrl-D quits."
          if fmt.is_chat else "Alpaca chat: an instruction per turn, then an optional input (Enter for none); Ctrl-D "
          "quits.", file=stderr, flush=True)
    context = getattr(lm.model.config, "max_position_embeddings", None)
    if context is not None and cfg.max_new_tokens >= context:
        raise UsageError(f"--max_new_tokens {cfg.max_new_tokens} leaves no room for a question: the model reads "
                         f"{context} tokens at most, answer included. Give a smaller --max_new_tokens.")
    limit = None if context is None else context - cfg.max_new_tokens
    messages: list[dict] = []  # the chat format's conversation so far
    while True:
        if fmt.is_chat:
            text = _ask("You: ", stdin, stderr)
            if not text:
                break
            if text.strip():
                messages.append({"role": "user", "content": text.rstrip("\n")})
                answer = reply(_fit_conversation(lm.tokenizer, fmt, messages, limit, stderr))
                messages.append({"role": "assistant", "content": answer})
            continue
        instruction = _ask("Instruction: ", stdin, stderr)
        if not instruction:
            break
        if not instruction.strip():
            continue
        input_text = _ask("Input (optional): ", stdin, stderr)
        record = {"instruction": instruction.rstrip("\n"), "input": input_text.rstrip("\n")}
        if limit is not None:
            record = _fit_to_context(lm.tokenizer, record, limit, stderr, fmt)
        reply(prompt_of(record, fmt))
        if not input_text:
            break
    print("", file=stderr, flush=True)


def _chosen_format(prompt_template: Optional[str], system_prompt: Optional[str], model_dir: str,
                   stderr: TextIO) -> PromptFormat:
    """The format `model_dir` is prompted in (`choose_format`: the flag, else the folder's record, else alpaca),
    with a line on stderr saying where it came from (when not alpaca) and one when the model was trained in
    another."""
    fmt, chosen = choose_format(prompt_template, system_prompt, model_dir)
    for line in (chosen, format_mismatch_warning(model_dir, fmt)):
        if line:
            print(line, file=stderr, flush=True)
    return fmt


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


def _fit_to_context(tokenizer, record: dict, limit: int, stderr: TextIO, fmt: Optional[PromptFormat] = None) -> dict:
    """`record` with its instruction, then its input, cut to their first tokens so that the prompt (in `fmt`,
    default alpaca) holds at most `limit` tokens (the model's context less the answer's budget); a cut is said in
    one line on stderr."""
    n = len(tokenizer(prompt_of(record, fmt))["input_ids"])
    if n <= limit:
        return record
    # What the template takes, and a few tokens' room: decoded cut text can tokenize a little longer.
    template = len(tokenizer(prompt_of({"instruction": "", "input": "x" if record["input"] else ""}, fmt))["input_ids"])
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


def _fit_conversation(tokenizer, fmt: PromptFormat, messages: list[dict], limit: Optional[int],
                      stderr: TextIO) -> str:
    """The chat prompt for `messages` (the conversation so far, ending with the user's new message) in at most
    `limit` tokens (the model's context less the answer's budget): the oldest exchanges (a message and its
    answer) are dropped from `messages`, then the new message is cut to its first tokens if it alone is too
    long; either is said in one line on stderr."""
    def size(prompt: str) -> int:
        return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])

    prompt = fmt.prompt({"messages": messages}, tokenizer)
    if limit is None or size(prompt) <= limit:
        return prompt
    n, dropped = size(prompt), 0
    while len(messages) > 1 and size(prompt) > limit:
        del messages[:2]  # the oldest message and its answer
        dropped += 1
        prompt = fmt.prompt({"messages": messages}, tokenizer)
    said = [f"left out the first {dropped} exchange(s)"] if dropped else []
    if size(prompt) > limit:  # the new message alone: keep its first tokens, with room for the template
        ids = tokenizer(messages[0]["content"], add_special_tokens=False)["input_ids"]
        keep = max(1, limit - size(fmt.prompt({"messages": [{"role": "user", "content": ""}]}, tokenizer)) - 8)
        messages[0]["content"] = tokenizer.decode(ids[:keep])
        said.append(f"cut this message to its first {keep} of {len(ids)} tokens")
        prompt = fmt.prompt({"messages": messages}, tokenizer)
    print(f"warning: the conversation is {n} tokens and the model reads {limit} at most (its context less "
          f"--max_new_tokens): {' and '.join(said)}.", file=stderr, flush=True)
    return prompt


def main(
    model_dir: str,
    instruction: Optional[str] = None,
    input: str = "",  # noqa: A002 - the Alpaca field name, as on the command line
    data_path: Optional[str] = None,
    num_examples: int = 3,
    max_new_tokens: Optional[int] = None,
    gguf_file: Optional[str] = None,
    chat: bool = False,
    prompt_template: Optional[str] = None,
    system_prompt: Optional[str] = None,
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
        prompt_template: the prompt format: alpaca, chat (the model's chat template) or a JSON template file;
            default the one `model_dir` records (its prompt_format.json, written by train.py), else alpaca.
        system_prompt: a system turn before each request (chat format only; default the one `model_dir` records).
    """
    model_dir, data_path = expand_home(model_dir), expand_home(data_path)
    budget = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}  # else each path's default
    formats = dict(prompt_template=prompt_template, system_prompt=system_prompt)
    check_text(instruction=instruction, input=input, **formats)
    if chat:
        with on_interrupt("the chat ended."):
            chat_loop(ChatConfig(model_dir=model_dir, gguf_file=gguf_file, **formats, **budget))
        return
    if not (instruction or data_path):
        raise UsageError("give --instruction TEXT (and optionally --input TEXT), --data_path FILE, or --chat.")
    fmt = _chosen_format(prompt_template, system_prompt, model_dir, sys.stderr)
    if instruction:
        examples = [{"instruction": instruction, "input": input}]
    elif data_path:
        # An instruction file (eval_instructions.json) has no outputs; a training file's are shown beside the answers.
        examples = load_records(data_path, required=("instruction",), optional=("input", "output"))[:num_examples]
    lm = LocalModel.load(model_dir, gguf_file, prompt_format=fmt)
    responses = generate_responses(lm.model, lm.tokenizer, examples, prompt_format=fmt, **budget)
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
