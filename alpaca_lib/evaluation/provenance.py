"""Where judged outputs came from: the leaderboard's `model_source` column.

    from alpaca_lib.evaluation.provenance import model_source
    model_source("runs/demo/model_outputs.json")   # '/abs/runs/demo (trained from <base model> on alpaca_data.json)'

`eval_model.py outputs` journals the model it answered with (a folder, or a served model's name). When that
folder is a train.py `--output_dir`, what the model was trained from is read from train.py's own records:

1. `training_finished.json` (`alpaca_lib.training.start.mark_finished`), written with the final model.
   It describes the weights in the folder itself, which are what `outputs --model_dir` loaded, so it comes
   first; it is also the only record of a run saved without checkpoints (`--save_strategy no`, as the demo).
2. Otherwise the manifest of the newest checkpoint, by step number (`checkpoint-10` is newer than
   `checkpoint-9`): a run that has checkpoints but no finished final model (killed, or still running).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from alpaca_lib.evaluation.settings import journal_path
from alpaca_lib.training.checkpoints import MANIFEST_NAME, list_checkpoints, manifest_run
from alpaca_lib.training.start import finished_record


def model_source(model_outputs: Optional[str]) -> str:
    """What is known of the model that wrote `model_outputs` (`eval_model.py outputs`): the folder or served
    model its journal names and, for a train.py folder, the base model and data it was trained from.
    "" when nothing is known (outputs made elsewhere)."""
    if not model_outputs:
        return ""
    try:
        with open(journal_path(model_outputs), encoding="utf-8") as f:
            run = json.loads(f.readline()).get("run") or {}
    except (OSError, ValueError, AttributeError):
        return ""
    source = str(run.get("model") or "")
    trained = trained_from(Path(source)) if source and Path(source).is_dir() else {}
    if trained.get("model"):
        source += f" (trained from {trained['model']} on {trained.get('data')})"
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
