"""The evaluation commands' settings: one typed config per command, the only place where a default lives.

    python eval_model.py outputs --help     # lists OutputsConfig's fields (likewise judge, chat)

`eval_model.py` builds each command's flags from these (`cli_signature`, `cli_docstring`), as
`generate_instruction.py` does from `GenerateConfig`. A setting shared with another config takes its
default and help from there (`same_as`): the client's timeouts and retries from `ClientConfig`, the
decoding settings from `GenerationSettings` (alpaca_lib/evaluation/settings.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from alpaca_lib.core.commands import check_text, flag, is_int, same_as
from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.fileio import expand_home_fields
from alpaca_lib.evaluation.settings import DEFAULT_LEADERBOARD, GenerationSettings
from alpaca_lib.llm.config import ClientConfig


def _check_positive(cfg: Any, *names: str) -> None:
    """Refuses a count flag below 1 as the user's mistake, before anything loads (a thread pool of 0 workers
    would raise ValueError only once the run is under way)."""
    for name in names:
        value = getattr(cfg, name)
        if not is_int(value) or value < 1:
            raise UsageError(f"--{name} must be a positive integer; got {value!r}")


@dataclass(kw_only=True)
class OutputsConfig:
    """`eval_model.py outputs`: a model's answers to an evaluation set, in AlpacaEval's format."""

    instructions_path: str = flag("AlpacaEval JSON ({\"instruction\", \"dataset\"?, ...}) or Alpaca JSON / JSON Lines.")
    output_path: str = flag("The JSON to write; its journal goes beside it (re-run the command to continue).")
    model_dir: Optional[str] = flag("A local model (train.py's --output_dir, or a folder holding --gguf_file).", None)
    gguf_file: Optional[str] = flag("A GGUF file inside --model_dir to load instead of safetensors.", None)
    base_url: Optional[str] = flag(
        "Instead of --model_dir, an OpenAI-compatible server (vLLM, transformers serve, llama.cpp); several servers "
        "of the model, comma-separated, share the requests (--max_concurrency counts them all).", None)
    model_name: Optional[str] = flag("The served model's name (with --base_url).", None)
    api_style: Optional[str] = flag(
        "completions (the prompt as text) or chat (the request as a user message; the server applies the model's "
        "chat template). Default: chat with --prompt_template chat, else completions.", None)
    api_key: Optional[str] = flag("For the server; default OPENAI_API_KEY (a local server needs none).", None)
    generator: Optional[str] = flag("The name recorded in each record; default the model folder's name or --model_name.",
                                    None)
    batch_size: int = flag("Prompts generated together by a local model.", 16)
    max_concurrency: int = flag("Requests in flight at once to a server.", 8)
    max_new_tokens: int = same_as(GenerationSettings, "max_new_tokens", "Most tokens per answer.")
    do_sample: bool = same_as(GenerationSettings, "do_sample",
                              "Sample instead of greedy decoding (then --temperature, --top_p, --seed).")
    temperature: float = same_as(GenerationSettings, "temperature")
    top_p: float = same_as(GenerationSettings, "top_p")
    seed: int = same_as(GenerationSettings, "seed")
    dtype: str = flag("A local model's weights: auto (bfloat16 where this device runs it natively, else float16 "
                      "on a GPU and float32 on a CPU), float32, bfloat16, float16.", "auto")
    request_timeout: float = same_as(ClientConfig, "request_timeout",
                                     "Seconds before a request to the server counts as failed (it is then retried).")
    max_retries: int = same_as(ClientConfig, "max_retries",
                               "Retries of one request after 429/5xx/timeouts/connection errors.")
    # Last, so that the fields given by position keep their places.
    prompt_template: Optional[str] = flag(
        "How each instruction is put to the model: alpaca (the Alpaca template, as train.py writes it by default), "
        "chat (the model's own chat template, from its tokenizer; a served model gets it as chat messages), or a "
        "JSON template file (prompt_input, prompt_no_input, response_split). Default: the format the model was "
        "trained in, as its folder records it (prompt_format.json, written by train.py; its system prompt too), "
        "else alpaca (a base model; a served model, which has no folder).", None)
    system_prompt: Optional[str] = flag("A system turn before each request (chat format only). Default: the one the "
                                        "model folder's prompt_format.json records, if any.", None)

    def __post_init__(self):
        expand_home_fields(self, "instructions_path", "output_path", "model_dir")
        _check_positive(self, "max_concurrency")
        check_text(prompt_template=self.prompt_template, system_prompt=self.system_prompt)

    def generation_settings(self) -> GenerationSettings:
        """The decoding part, which is also part of the run's identity."""
        return GenerationSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(GenerationSettings)})


@dataclass(kw_only=True)
class JudgeConfig:
    """`eval_model.py judge`: model outputs against reference outputs, pairwise."""

    model_outputs: str = flag("The model's outputs (`eval_model.py outputs`, or any AlpacaEval-format JSON).")
    reference_outputs: str = flag("The outputs it is compared with, on the same instructions.")
    output_dir: str = flag("summary.json, annotations.json, report.md, judge.png and the journal.")
    judge_model: Optional[str] = flag("The judge's name on the server (or --judge_model_dir).", None)
    judge_model_dir: Optional[str] = flag(
        "Instead of --judge_model, a local model folder run in-process: each order's verdict is the probability of "
        "the letters a and b after one forward pass (weighting logprobs, never unreadable).", None)
    judge_gguf_file: Optional[str] = flag("A GGUF file inside --judge_model_dir to load instead of safetensors.", None)
    judge_dtype: str = same_as(OutputsConfig, "dtype", "The local judge's weights (as outputs' --dtype).")
    judge_batch_size: int = flag("Prompts the local judge reads in one forward pass.", 8)
    leaderboard: str = flag("The leaderboard CSV this run's row goes to; runs that name the same file share it.",
                            DEFAULT_LEADERBOARD)
    base_url: Optional[str] = flag("An OpenAI-compatible server; default OPENAI_BASE_URL, else OpenAI. Several "
                                   "servers of the judge, comma-separated, share the requests.", None)
    api_key: Optional[str] = same_as(OutputsConfig, "api_key", "Default OPENAI_API_KEY (a local server needs none).")
    api_style: str = flag("chat or completions.", "chat")
    max_concurrency: int = same_as(OutputsConfig, "max_concurrency", "Requests in flight at once.")
    logprobs: bool = flag("Ask for the verdict letter's log probabilities (weighting used when every reply has them).",
                          True)
    max_unreadable_retries: int = flag(
        "Asks again this often (a firmer follow-up, at temperature 0.7) when a reply names no single output; then "
        "the pair is left out, and asked again when the command is run again.", 2)
    price_table: Any = flag("{model: [prompt, completion] USD per 1M tokens} (JSON or a path) for the cost estimate.",
                            None)
    request_timeout: float = same_as(ClientConfig, "request_timeout",
                                     "Seconds before a request counts as failed (it is then retried).")
    max_retries: int = same_as(OutputsConfig, "max_retries")

    def __post_init__(self):
        expand_home_fields(self, "model_outputs", "reference_outputs", "output_dir", "judge_model_dir", "leaderboard")
        _check_positive(self, "max_concurrency", "judge_batch_size")


@dataclass(kw_only=True)
class ScoreConfig:
    """`eval_model.py score`: numbers from files, no judge asked: AlpacaEval's from an annotations file, and
    ROUGE-L of model outputs against an eval set's reference outputs."""

    output_dir: str = flag("Where summary.json, report.md and judge.png (and rouge.json) go.")
    annotations: Optional[str] = flag(
        "Annotations in AlpacaEval's layout: a judge run's annotations.json, or one AlpacaEval published "
        "(results/<model>/<annotator>/annotations.json).", None)
    model_outputs: Optional[str] = flag("Model outputs to score against --references with ROUGE-L.", None)
    references: Optional[str] = flag("An eval set whose records carry the reference answer as `output` (paired "
                                     "with --model_outputs by instruction and input).", None)
    leaderboard: str = same_as(JudgeConfig, "leaderboard")

    def __post_init__(self):
        expand_home_fields(self, "output_dir", "annotations", "model_outputs", "references", "leaderboard")


@dataclass(kw_only=True)
class ChatConfig:
    """`eval_model.py chat` (and `python -m alpaca_lib.evaluation.infer --chat`): talk to a model in its prompt format:
    an Alpaca instruction (and input) per turn, or, in the chat format, a conversation."""

    model_dir: str = flag("A saved model (train.py's --output_dir).")
    gguf_file: Optional[str] = flag("A GGUF file inside --model_dir to load instead.", None)
    max_new_tokens: int = same_as(GenerationSettings, "max_new_tokens", "Most tokens per answer.")
    do_sample: bool = same_as(GenerationSettings, "do_sample", "Sample instead of greedy decoding.")
    temperature: float = same_as(GenerationSettings, "temperature")
    top_p: float = same_as(GenerationSettings, "top_p")
    prompt_template: Optional[str] = flag(
        "alpaca (an instruction and an optional input per turn, each turn on its own), chat (the model's chat "
        "template: one message per turn, the conversation kept while it fits the model's context), or a JSON "
        "template file (as alpaca). Default: the format the model was trained in, as its folder records it "
        "(prompt_format.json, written by train.py), else alpaca.", None)
    system_prompt: Optional[str] = same_as(OutputsConfig, "system_prompt")

    def __post_init__(self):
        expand_home_fields(self, "model_dir")
        check_text(prompt_template=self.prompt_template, system_prompt=self.system_prompt)
