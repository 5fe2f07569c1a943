"""Evaluate a tuned model, the other half of Alpaca: its answers to an evaluation set, and a chat.

    python eval_model.py outputs --model_dir runs/demo --instructions_path eval_instructions.json \\
        --output_path runs/demo/model_outputs.json
    python eval_model.py outputs --base_url http://127.0.0.1:8000/v1 --model_name M \\
        --instructions_path eval_instructions.json --output_path runs/M/model_outputs.json
    python eval_model.py judge --model_outputs runs/demo/model_outputs.json \\
        --reference_outputs runs/base/model_outputs.json --judge_model M --base_url URL --output_dir runs/judge/demo
    python eval_model.py score --annotations runs/judge/demo/annotations.json --output_dir runs/judge/demo_rescored
    python eval_model.py chat --model_dir runs/demo
    python eval_model.py outputs --model_dir models/smollm2-135m-instruct --prompt_template chat \\
        --instructions_path eval_instructions.json --output_path runs/base/model_outputs.json

`outputs` writes AlpacaEval's format (alpaca_lib/evaluation/outputs.py): batched generation for a local model, any
OpenAI-compatible server for a served one, a journal that makes a killed run continue where it stopped; `outputs` and
`chat` prompt the model in the format it was trained in (`--prompt_template alpaca|chat|FILE`; by default the one its
folder records, train.py's prompt_format.json, else alpaca; a served model: alpaca).
(The name does not shadow the `evaluate` or `alpaca_eval` packages when run from this folder.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from alpaca_lib.core.cli import run_fire
from alpaca_lib.core.commands import cli_command
from alpaca_lib.core.signals import on_interrupt
from alpaca_lib.evaluation.config import ChatConfig, JudgeConfig, OutputsConfig, ScoreConfig
from alpaca_lib.llm.client import GenerationError

# Each command imports its implementation when it runs, so --help and a mistyped flag skip about 0.25 s of
# imports (numpy, alpaca_lib's evaluation modules).


def _kept(journal: Path, kind: str, key: Callable[[dict], Any], usable: Callable[[dict], bool] = lambda rec: True) -> str:
    """What Ctrl-C left of a run: how many `kind` records of `journal` a rerun keeps (the latest one per `key`, if
    `usable`), and how to go on."""
    from alpaca_lib.core.journal import iter_records  # deferred: see above

    latest = {}
    if journal.is_file():
        latest = {key(rec): rec for _, rec in iter_records(journal, repair=False) if rec["t"] == kind}
    kept = sum(map(usable, latest.values()))
    return f"{kept} {kind}s kept in {journal}; run the same command again to continue from them"


def _outputs(cfg: OutputsConfig) -> None:
    from alpaca_lib.evaluation.outputs import run_outputs  # deferred: see above
    from alpaca_lib.evaluation.settings import journal_path

    with on_interrupt(lambda: _kept(journal_path(cfg.output_path), "output", key=lambda rec: rec["i"])):
        result = run_outputs(cfg)
    stopped = sum(r["stop_reason"] == "length" for r in result.records)
    print(f"wrote {len(result.records)} outputs of {result.generator} to {result.output_path}"
          + (f" ({stopped} hit --max_new_tokens {cfg.max_new_tokens})" if stopped else ""))


def _print_result(result) -> None:
    from alpaca_lib.evaluation.report import headline  # deferred: see above

    print(headline(result.summary) + f"; report: {result.report_path}")
    for warning in result.summary["judge_warnings"]:
        print(f"warning: {warning}")


def _judge(cfg: JudgeConfig) -> None:
    from alpaca_lib.evaluation.judge import JOURNAL_NAME, run_judge  # deferred: see above

    journal = Path(cfg.output_dir) / JOURNAL_NAME
    # A rerun asks again for an unreadable verdict: only readable ones are kept.
    with on_interrupt(lambda: _kept(journal, "verdict", key=lambda rec: (rec["pair"], rec["order"]),
                                    usable=lambda rec: rec["letter"] is not None)):
        result = run_judge(cfg)
    _print_result(result)


def _score(cfg: ScoreConfig) -> None:
    from alpaca_lib.evaluation.score import run_score  # deferred: see above

    result = run_score(cfg)
    if result is not None:
        _print_result(result)


def _chat(cfg: ChatConfig) -> None:
    from alpaca_lib.evaluation.infer import chat_loop  # deferred: see above

    with on_interrupt("the chat ended."):
        chat_loop(cfg)


# Each command's flags, defaults and help come from its config (alpaca_lib/evaluation/config.py).
outputs = cli_command(OutputsConfig, _outputs, "outputs", "Writes the model's answer to every instruction of an "
                      "evaluation set, in AlpacaEval's format.", positional=True)
judge = cli_command(JudgeConfig, _judge, "judge", "Judges model outputs against reference outputs pairwise: win "
                    "rate, summary, report, leaderboard.", positional=True)
chat = cli_command(ChatConfig, _chat, "chat", "Talk to a model in its prompt format: an instruction (and optionally an "
                   "input) per turn through the Alpaca template, or a conversation through its chat template "
                   "(--prompt_template chat, or a model trained in it).", positional=True)
score = cli_command(ScoreConfig, _score, "score", "Recomputes summary.json, the leaderboard row and the report from an "
                    "annotations file (this project's or AlpacaEval's), asking no judge; ROUGE-L against "
                    "reference answers.", positional=True)
COMMANDS = {"outputs": outputs, "judge": judge, "score": score, "chat": chat}


def main(argv: Optional[list] = None) -> None:
    run_fire(COMMANDS, "eval_model.py", argv, quiet=True, errors=(GenerationError,))


if __name__ == "__main__":
    main()
