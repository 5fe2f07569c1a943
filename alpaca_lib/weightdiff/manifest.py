"""The integrity checks of a weight diff: its manifest of per-tensor SHA-256 sums, and the original naive sum.

    manifest = make_manifest(plan, shapes, result)           # make_diff: written beside the diff
    manifest = load_manifest(path_diff)                      # recover: None for a diff without one (2023's)
    verify_recovered(result, manifest, keys, plan, path_diff, check_integrity_naively, expected_sum)

`make_diff` computes `diff + raw` itself (float32 `(tuned - raw) + raw` is not always `tuned`) and records the
SHA-256 of every tensor `recover` will produce, so `recover` can name each tensor that came out wrong; the
original's check, the sum of all recovered parameters, stays for diffs without a manifest.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from alpaca_lib.core.fileio import jload
from alpaca_lib.weightdiff.plan import RawPlan, WeightDiffError
from alpaca_lib.weightdiff.streaming import StreamResult
from alpaca_lib.weightdiff.weights import Checkpoint

MANIFEST_NAME = "weight_diff_manifest.json"
MANIFEST_FORMAT = "alpaca-weight-diff-manifest/1"
# The original script's expected sum of all recovered Alpaca-7B parameters (float32, atol 1e-2).
ALPACA_7B_EXPECTED_SUM = 50637.1836
NAIVE_SUM_ATOL = 1e-2


def make_manifest(plan: RawPlan, shapes: dict[str, tuple[int, ...]], result: StreamResult) -> dict:
    """The manifest of a diff whose tensors have `shapes`, from the digests `stream` took of what recover produces."""
    return {
        "format": MANIFEST_FORMAT,
        "about": "SHA-256 of each float32 tensor (C order, little-endian bytes) that `weight_diff.py recover` "
        "produces from this diff and the raw model; recovered_sum is the original naive check value.",
        "num_added_tokens": plan.num_new_tokens,
        "added_tokens": plan.special_tokens,
        "vocab_size": plan.vocab_size,
        "recovered_sum": result.recovered_sum,
        "tensors": {k: {"shape": list(shape), "sha256": result.digests[k]} for k, shape in shapes.items()},
    }


def load_manifest(path_diff: str | os.PathLike) -> dict | None:
    """The manifest beside the diff in `path_diff`, or None if it has none; raises WeightDiffError if unreadable."""
    path = Path(path_diff) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = jload(path)
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("tensors"), dict):
            raise ValueError(f"format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    except ValueError as e:
        raise WeightDiffError(f"{path}: not a valid manifest ({e}); re-download the diff or pass --check_manifest=False") from e
    return manifest


def check_manifest_keys(manifest: dict, diff: Checkpoint, keys: list[str], path: Path) -> None:
    """Raises WeightDiffError unless `manifest` lists exactly the diff's tensors `keys`, with their shapes."""
    listed = manifest["tensors"]
    problems = [f"    {k}: in the diff but not in the manifest" for k in keys if k not in listed]
    problems += [f"    {k}: in the manifest but not in the diff" for k in listed if k not in diff.infos]
    problems += [
        f"    {k}: manifest shape {listed[k]['shape']} vs diff {list(diff.infos[k].shape)}"
        for k in keys
        if k in listed and list(listed[k]["shape"]) != list(diff.infos[k].shape)
    ]
    if problems:
        raise WeightDiffError(
            f"{path / MANIFEST_NAME} does not describe the diff in {path}:\n" + "\n".join(problems) + "\n"
            "Likely cause: an incomplete download or files from two different diffs. Fix: re-download the diff folder."
        )


def verify_recovered(result: StreamResult, manifest: dict | None, keys: list[str], plan: RawPlan,
                     path_diff: str | os.PathLike, check_integrity_naively: bool, expected_sum: float | None) -> None:
    """Raises WeightDiffError naming every recovered tensor whose digest is not the manifest's, and a naive
    sum off `expected_sum` (when `check_integrity_naively`); the caller then writes nothing."""
    errors = []
    if manifest is not None:
        bad = [k for k in keys if manifest["tensors"][k]["sha256"] != result.digests[k]]
        if bad:
            hint = ""
            if set(bad) <= set(plan.row_keys):
                hint = (
                    " Only the embedding/lm_head differ: the raw base may have a different vocabulary order, or the "
                    "mean row of the added token was computed differently (another torch build)."
                )
            errors.append(
                f"{len(bad)} of {len(keys)} recovered tensor(s) differ from {Path(path_diff) / MANIFEST_NAME}:\n"
                + "\n".join(f"    {k}" for k in bad)
                + "\nLikely cause: a corrupted or different base model file (or diff shard) holding these tensors. "
                "Fix: re-download / re-convert the files that hold them (see the index files)." + hint
            )
    if check_integrity_naively and not math.isclose(result.recovered_sum, expected_sum, rel_tol=0, abs_tol=NAIVE_SUM_ATOL):
        errors.append(
            f"naive integrity check failed: the recovered parameters sum to {result.recovered_sum:.4f}, expected "
            f"{expected_sum:.4f} (atol {NAIVE_SUM_ATOL}). The sum cannot say which tensor is wrong, and bases converted "
            "with other transformers versions can fail it while being valid. Pass --expected_sum=VALUE for another "
            "diff, or --check_integrity_naively=False to rely on the manifest."
        )
    if errors:
        raise WeightDiffError("\n".join(errors) + "\nNothing was written.")
