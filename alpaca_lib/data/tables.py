"""Sources read through the `datasets` library: parquet and CSV files, `save_to_disk` folders, hub datasets.

    from alpaca_lib.data.tables import load_table
    dataset = load_table("data.parquet", "parquet")       # what DataSource.dataset() returns; iterate in batches

Parquet and CSV files are streamed from the file itself (no converted copy to go stale; every CSV cell stays
the text it is), a `save_to_disk` folder and a hub dataset are memory-mapped Arrow. What cannot be read
raises `DataError` saying what to do. `alpaca_lib.data.sources.open_source` decides which kind a path is.
"""

from __future__ import annotations

import csv
import os

from alpaca_lib.core.preflight import hub_unreachable
from alpaca_lib.data.records import DataError


def load_table(path: str, kind: str, split: str = "train"):
    """The `datasets` object behind a source that is not JSON (what `DataSource.dataset()` returns).

    Args:
        path: the file, folder or hub id.
        kind: "parquet" or "csv" (streamed from the file: an IterableDataset), "disk" (a `save_to_disk`
            folder) or "hub" (a hub dataset id, from the local `datasets` cache when offline).
        split: the split of a saved DatasetDict or a hub dataset.
    Raises:
        DataError: a file the library cannot read, a folder it cannot load, no such split, a hub dataset that
            cannot be loaded (offline: one that is not in the local cache), each with what to do.
    """
    import datasets  # here, not at the top: seconds to import, and JSON sources never need it

    datasets.disable_progress_bars()
    if kind in ("parquet", "csv"):
        # Streamed from the file itself: no converted copy is made, so none can go stale.
        extra = {}
        try:
            if kind == "csv":  # every cell stays the text it is ("" stays "", "12" stays "12")
                with open(path, newline="", encoding="utf-8-sig") as f:
                    header = next(csv.reader(f), [])
                extra = {"features": datasets.Features({c: datasets.Value("string") for c in header}),
                         "na_filter": False}
            return datasets.load_dataset(kind, data_files=path, split="train", streaming=True, **extra)
        except Exception as e:  # the library's own reading errors
            raise DataError(f"{path}: could not be read as {kind} ({type(e).__name__}: {e}). Re-save it as UTF-8 "
                            f"{kind}.") from None
    if kind == "disk":
        try:
            loaded = datasets.load_from_disk(path)
        except Exception as e:
            raise DataError(
                f"{path}: could not be loaded with datasets.load_from_disk ({type(e).__name__}: {e})."
            ) from None
        if isinstance(loaded, datasets.DatasetDict):
            return _pick_split(loaded, path, split)
        return loaded
    return _load_hub(path, split)


def _pick_split(dataset_dict, path: str, split: str):
    if split not in dataset_dict:
        raise DataError(
            f"{path}: no split '{split}'; it has {sorted(dataset_dict)}. Choose one with --data_split."
        )
    return dataset_dict[split]


def _in_datasets_cache(path: str, cache_dir: str) -> bool:
    """Whether `datasets` holds a prepared copy of hub dataset `path`: the folder where its own fallback to the
    cache looks (`<cache>/<owner>___<name in snake_case>`, see datasets.load.CachedDatasetModuleFactory)."""
    from datasets.naming import camelcase_to_snakecase

    parts = path.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    return os.path.isdir(os.path.join(os.path.expanduser(str(cache_dir)), "___".join(parts)))


def _load_hub(path: str, split: str):
    import datasets  # deferred as in load_table
    from datasets import config as ds_config

    # Without a network, datasets retries the hub for half a minute before it fails: ask once, briefly.
    unreachable = None if ds_config.HF_HUB_OFFLINE else hub_unreachable()
    if unreachable and not _in_datasets_cache(path, ds_config.HF_DATASETS_CACHE):
        raise DataError(
            f"{path}: no such local file or folder, and no network to the Hugging Face hub ({unreachable}) to load "
            f"the dataset '{path}' from, nor a copy in the local cache ({ds_config.HF_DATASETS_CACHE}). Fix: download "
            f"it first where there is a network (python -c \"import datasets; datasets.load_dataset('{path}')\") or "
            "pass a local file; for a dataset already in the cache, set HF_HUB_OFFLINE=1."
        )
    try:
        return datasets.load_dataset(path, split=split)
    except ValueError as e:
        if "split" in str(e).lower() and split in str(e):
            raise DataError(f"{path}: {e} Choose another with --data_split.") from None
        raise
    except (ConnectionError, FileNotFoundError) as e:
        if ds_config.HF_HUB_OFFLINE:
            raise DataError(
                f"{path}: no such local file or folder, and the Hugging Face dataset '{path}' is not in the local "
                f"cache ({ds_config.HF_DATASETS_CACHE}) while offline (HF_HUB_OFFLINE=1). Fetch it once on a "
                f"machine with internet (python -c \"import datasets; datasets.load_dataset('{path}')\"), unset "
                "HF_HUB_OFFLINE, or pass a local file."
            ) from None
        raise DataError(
            f"{path}: no such local file or folder, and not a Hugging Face dataset that could be loaded "
            f"({type(e).__name__}: {e})."
        ) from None
