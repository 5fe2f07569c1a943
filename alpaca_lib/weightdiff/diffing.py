"""The engines behind weight_diff.py: diff = tuned - raw and recovered = diff + raw, streamed tensor by tensor.

    manifest = stream_make_diff(path_raw, path_tuned, path_diff)
    path, result = stream_recover(path_raw, path_diff, path_tuned)

Semantics are the original Alpaca script's, operation for operation: every tensor is upcast to float32, the
raw model first gets the special tokens its tokenizer lacks with the new embedding / lm_head rows set to the
mean of the old rows (`plan.py`), then `tuned - raw` (make_diff) or `diff + raw` (recover) is taken element
by element (`streaming.py`). Because these are the same float32 operations on the same values, the results
match the whole-model method bit for bit. `make_diff` also writes the manifest `recover` checks each tensor
against (`manifest.py`). Outputs are built in a staging folder and renamed into place only after every check.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from alpaca_lib.core.fileio import jdump, staging_dir
from alpaca_lib.core.prompt import format_prompt
from alpaca_lib.evaluation.infer import generate_responses
from alpaca_lib.weightdiff.manifest import (
    ALPACA_7B_EXPECTED_SUM,
    MANIFEST_NAME,
    check_manifest_keys,
    load_manifest,
    make_manifest,
    verify_recovered,
)
from alpaca_lib.weightdiff.plan import WeightDiffError, check_compatible, plan_raw
from alpaca_lib.weightdiff.streaming import StreamResult, stream
from alpaca_lib.weightdiff.weights import Checkpoint, CheckpointError, SafetensorsWriter, parse_size

SMOKE_TEST_INSTRUCTION = "List three technologies that make life easier."


def _diff_op(tuned: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # The original computed tuned.add_(-raw); IEEE a + (-b) is a - b exactly, in one pass here.
    diff = torch.sub(tuned, raw)
    return diff, torch.add(diff, raw)  # what recover will compute from this diff


def _recover_op(diff: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rec = torch.add(diff, raw)  # the original's state_dict_recovered[key].add_(state_dict_raw[key])
    return rec, rec


def load_tokenizer_and_config(src: str | os.PathLike, role: str):
    """Loads the tokenizer and config that go with the output, before any tensor work, so a folder
    whose tokenizer cannot be read fails in a second rather than after the whole model streamed."""
    # deferred: transformers takes seconds to import, and `weight_diff.py --help` needs none of it
    from transformers import AutoConfig, AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(src), AutoConfig.from_pretrained(src)
    except (OSError, ValueError) as e:
        raise WeightDiffError(
            f"{role}={src}: cannot read its tokenizer/config ({e}); the folder needs config.json and the tokenizer "
            "files next to the weights"
        ) from e


def save_tokenizer_and_config(src: str | os.PathLike, tokenizer, config, dst: Path) -> None:
    """Saves the tokenizer and config into `dst` (config dtype float32: the weights written are), and
    copies `src`'s generation_config.json if it has one."""
    tokenizer.save_pretrained(dst)
    config.dtype = torch.float32
    config.save_pretrained(dst)
    gen = Path(src) / "generation_config.json"
    if gen.is_file():
        shutil.copyfile(gen, dst / gen.name)


def _open(path: str | os.PathLike, role: str) -> Checkpoint:
    try:
        return Checkpoint(path)
    except CheckpointError as e:
        raise WeightDiffError(f"{role}: {e}") from e


# -- public entry points --------------------------------------------------------------------------
def stream_make_diff(
    path_raw: str | os.PathLike,
    path_tuned: str | os.PathLike,
    path_diff: str | os.PathLike,
    device: str = "cpu",
    max_shard_size: int | str = "2GB",
    overwrite: bool = False,
) -> dict:
    """Writes the float32 diff `tuned - raw` (sharded safetensors), the tuned tokenizer/config and the manifest.

    Returns:
        The manifest written.
    """
    raw, tuned = _open(path_raw, "path_raw"), _open(path_tuned, "path_tuned")
    plan = plan_raw(path_raw)
    keys = check_compatible(tuned, raw, plan, "path_tuned")
    tokenizer, config = load_tokenizer_and_config(path_tuned, "path_tuned")
    items = [(k, tuned.infos[k].shape, torch.float32) for k in keys]
    with staging_dir(path_diff, overwrite=overwrite) as tmp:
        writer = SafetensorsWriter(tmp, items, parse_size(max_shard_size))
        try:
            result = stream(tuned, raw, plan, keys, _diff_op, writer, device, desc="make_diff")
            writer.close()
        except BaseException:
            writer.abort()
            raise
        save_tokenizer_and_config(path_tuned, tokenizer, config, tmp)
        manifest = make_manifest(plan, {k: tuned.infos[k].shape for k in keys}, result)
        with open(tmp / MANIFEST_NAME, "w", encoding="utf-8") as f:  # the staging folder makes it atomic
            jdump(manifest, f, indent=1)
    return manifest


def stream_recover(
    path_raw: str | os.PathLike,
    path_diff: str | os.PathLike,
    path_tuned: str | os.PathLike | None = None,
    device: str = "cpu",
    check_integrity_naively: bool = True,
    expected_sum: float | None = None,
    check_manifest: bool = True,
    max_shard_size: int | str = "2GB",
    overwrite: bool = False,
) -> tuple[Path | None, StreamResult]:
    """Recovers `diff + raw` tensor by tensor, checks it, and writes it to `path_tuned` (if given).

    Returns:
        (the folder written or None, the stream result with digests and the naive sum).
    """
    raw, diff = _open(path_raw, "path_raw"), _open(path_diff, "path_diff")
    plan = plan_raw(path_raw)
    keys = check_compatible(diff, raw, plan, "path_diff")
    tokenizer, config = load_tokenizer_and_config(path_diff, "path_diff")
    manifest = load_manifest(path_diff) if check_manifest else None
    if manifest is not None:
        check_manifest_keys(manifest, diff, keys, Path(path_diff))
    if expected_sum is None and manifest is not None:
        # The per-tensor digests are the real check; a float32 sum can also drift by a few ulps with the
        # number of threads a reduction uses, so it is compared only when asked for explicitly.
        check_integrity_naively = False
    elif expected_sum is None:
        expected_sum = ALPACA_7B_EXPECTED_SUM

    def run(writer: SafetensorsWriter | None) -> StreamResult:
        result = stream(diff, raw, plan, keys, _recover_op, writer, device, desc="recover", sum_derived_buffers=True)
        verify_recovered(result, manifest, keys, plan, path_diff, check_integrity_naively, expected_sum)
        return result

    if path_tuned is None:
        return None, run(None)
    items = [(k, diff.infos[k].shape, torch.float32) for k in keys]
    with staging_dir(path_tuned, overwrite=overwrite) as tmp:
        writer = SafetensorsWriter(tmp, items, parse_size(max_shard_size))
        try:
            result = run(writer)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        save_tokenizer_and_config(path_diff, tokenizer, config, tmp)
    return Path(path_tuned), result


def smoke_test(path: str | os.PathLike, device: str = "cpu", max_new_tokens: int = 100) -> str:
    """Generates (greedily, as the original) from a recovered model with the project's Alpaca template.

    Returns:
        The completion text (the prompt is not included).
    """
    # deferred: transformers takes seconds to import, and `weight_diff.py --help` needs none of it
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    example = {"instruction": SMOKE_TEST_INSTRUCTION, "input": ""}
    (completion,) = generate_responses(model, tokenizer, [example], max_new_tokens=max_new_tokens)
    print(f"Input: {format_prompt(example)}\nCompletion: {completion}")
    return completion
