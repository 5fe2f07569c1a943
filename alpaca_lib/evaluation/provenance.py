"""Where judged outputs came from, and how the model was prompted: the leaderboard's `model_source` column.

    from alpaca_lib.evaluation.provenance import model_source, prompt_format_of
    model_source("runs/demo/model_outputs.json")   # '/abs/runs/demo (trained from <base model> on alpaca_data.json)'
    model_source("runs/base/model_outputs.json")   # '/abs/models/smollm2-135m-instruct; prompt_template chat'
    prompt_format_of("runs/demo/model_outputs.json")   # 'alpaca', 'chat', a template file, or None (not known)

`eval_model.py outputs` journals the model it answered with (a folder, or a served model's name). When that
folder is a train.py `--output_dir`, what the model was trained from is read from train.py's own records:

1. `training_finished.json` (`alpaca_lib.training.start.mark_finished`), written with the final model.
   It describes the weights in the folder itself, which are what `outputs --model_dir` loaded, so it comes
   first; it is also the only record of a run saved without checkpoints (`--save_strategy no`, as the demo).
2. Otherwise the manifest of the newest checkpoint, by step number (`checkpoint-10` is newer than
   `checkpoint-9`): a run that has checkpoints but no finished final model (killed, or still running).

The prompt format the outputs were made in is their journal's (`--prompt_template`; a journal without one is
alpaca's), else the records' own `prompt_template` key; `model_source` names it when it is not alpaca (a board's
rows of alpaca outputs read as they did before formats existed). The format a train.py folder was trained in is its
`prompt_format.json`'s, else its run record's (`trained_format`), so `eval_model.py outputs`, `chat` and
`alpaca_lib.evaluation.infer` can say when `--prompt_template` (or `--system_prompt`) asks for another one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from alpaca_lib.data.formats import ALPACA, FORMAT_FILE, PromptFormat, PromptFormatError, saved_format
from alpaca_lib.evaluation.prompting import FORMAT_KEYS, format_flags
from alpaca_lib.evaluation.settings import journal_path
from alpaca_lib.training.checkpoints import MANIFEST_NAME, list_checkpoints, manifest_run
from alpaca_lib.training.start import finished_record


def model_source(model_outputs: Optional[str]) -> str:
    """What is known of the model that wrote `model_outputs` (`eval_model.py outputs`): the folder or served
    model its journal names and, for a train.py folder, the base model and data it was trained from; then the
    prompt format, when it is not alpaca. "" when nothing is known (outputs made elsewhere)."""
    run = _journal_run(model_outputs)
    source = str((run or {}).get("model") or "")
    trained = trained_from(Path(source)) if source and Path(source).is_dir() else {}
    if trained.get("model"):
        source += f" (trained from {trained['model']} on {trained.get('data')})"
    prompted = prompt_format_of(model_outputs)
    if prompted not in (None, ALPACA):
        source += ("; " if source else "") + f"prompt_template {prompted}"
    return source


def trained_from(folder: Path) -> dict:
    """The run record (`model`, `data`, ...) train.py left in `folder`: its finished record's, else its newest
    checkpoint's (see the module's docstring); {} when there is neither."""
    finished = finished_record(folder) or {}
    run = finished.get("run")
    if isinstance(run, dict) and run.get("model"):
        return run
    with_manifest = [path for _, path in list_checkpoints(folder) if (path / MANIFEST_NAME).is_file()]
    run = manifest_run(with_manifest[-1]) if with_manifest else {}  # list_checkpoints: oldest step first
    return run if isinstance(run, dict) else {}


def _journal_run(model_outputs: Optional[str]) -> Optional[dict]:
    """The run (model, settings) the outputs' journal starts with; None without a readable journal."""
    if not model_outputs:
        return None
    try:
        with open(journal_path(model_outputs), encoding="utf-8") as f:
            run = json.loads(f.readline()).get("run")
    except (OSError, ValueError, AttributeError):
        return None
    return run if isinstance(run, dict) else None


def prompt_format_of(model_outputs: Optional[str]) -> Optional[str]:
    """The `--prompt_template` that `eval_model.py outputs` wrote `model_outputs` with ("alpaca", "chat" or a
    template file): its journal's, else the one every record names; None when that is not known (outputs
    made elsewhere)."""
    run = _journal_run(model_outputs)
    if run is not None:
        return str(run.get("prompt_template") or ALPACA)
    try:
        with open(str(model_outputs), encoding="utf-8") as f:
            records = json.load(f)
        named = {r.get("prompt_template") for r in records}
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return named.pop() if len(named) == 1 and None not in named else None


def trained_format(folder: str | Path) -> Optional[dict[str, Any]]:
    """The prompt format the model in `folder` was trained in, as `PromptFormat.settings()`: its
    `prompt_format.json` (train.py writes it beside the model), else its train.py run record's settings (alpaca's
    for a run trained before formats were recorded); None when `folder` holds neither (or an unreadable one)."""
    if not Path(folder).is_dir():
        return None
    try:
        saved = saved_format(folder)
    except PromptFormatError:
        saved = None
    if saved is not None:
        return saved.settings()
    run = trained_from(Path(folder))
    if not run:
        return None
    settings = run.get("settings") if isinstance(run.get("settings"), dict) else {}
    if settings.get("prompt_template"):
        return {k: settings[k] for k in FORMAT_KEYS if settings.get(k)}
    return {"prompt_template": ALPACA}


def format_mismatch_warning(model_dir: str, prompt_format: PromptFormat) -> Optional[str]:
    """One line when the model in `model_dir` was trained in another prompt format than this run's (another
    template, or another system prompt), else None. A template file counts as the same under another path when
    its bytes are the same."""
    trained = trained_format(model_dir)
    now, compared = prompt_format.settings(), ("prompt_template", "system_prompt")
    if trained is None or [trained.get(k) for k in compared] == [now.get(k) for k in compared] or (
            prompt_format.digest and trained.get("prompt_template_sha256") == prompt_format.digest):
        return None
    with_system = trained.get("system_prompt") or now.get("system_prompt")
    flags = "--prompt_template and --system_prompt" if with_system else "--prompt_template"
    default = (f"Leave out {flags} (the default: the format its {FORMAT_FILE} records) or pass "
               if (Path(model_dir) / FORMAT_FILE).is_file() else "Pass ")
    return (f"warning: {model_dir} was trained with {format_flags(trained)}, and this run prompts it with "
            f"{format_flags(now)}: its answers may not show what it learned. {default}{format_flags(trained)} to "
            "prompt it as it was trained.")
