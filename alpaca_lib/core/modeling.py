"""Model and tokenizer helpers shared by train.py and weight_diff.py."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict

IGNORE_INDEX = -100
DEFAULT_PAD_TOKEN = "[PAD]"
DEFAULT_EOS_TOKEN = "</s>"
DEFAULT_BOS_TOKEN = "<s>"
DEFAULT_UNK_TOKEN = "<unk>"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def model_folder_digest(folder: str | os.PathLike, times: bool = True) -> str:
    """What identifies a model folder without loading it: one rule for a training resume and for a run's outputs.

    The sha256 of config.json's bytes and of each weight file's name, size and modification time (in whole
    seconds): retraining into the folder changes it, a copy that keeps the files' times (`cp -a`, `rsync -a`,
    `shutil.copytree`) does not, whatever its path.

    Args:
        times: count the weight files' times; without them, copies made at other times (each node's own copy of
            a model) are alike, as are weights retrained to the same size.
    Returns:
        64 hex digits.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    if (folder / "config.json").is_file():
        digest.update((folder / "config.json").read_bytes())
    for path in sorted(folder.iterdir()):
        if path.suffix in WEIGHT_SUFFIXES and path.is_file():
            st = path.stat()
            digest.update(f"{path.name}:{st.st_size}{f':{int(st.st_mtime)}' if times else ''}\n".encode())
    return digest.hexdigest()


def missing_special_tokens(tokenizer) -> Dict[str, str]:
    """The special tokens Alpaca adds when a tokenizer lacks them (LLaMA's lacks only the pad token)."""
    special_tokens_dict = {}
    if tokenizer.pad_token is None:
        special_tokens_dict["pad_token"] = DEFAULT_PAD_TOKEN
    if tokenizer.eos_token is None:
        special_tokens_dict["eos_token"] = DEFAULT_EOS_TOKEN
    if tokenizer.bos_token is None:
        special_tokens_dict["bos_token"] = DEFAULT_BOS_TOKEN
    if tokenizer.unk_token is None:
        special_tokens_dict["unk_token"] = DEFAULT_UNK_TOKEN
    return special_tokens_dict


def smart_tokenizer_and_embedding_resize(special_tokens_dict: Dict[str, str], tokenizer, model) -> int:
    """Adds special tokens and resizes the embeddings; new rows are the mean of the old ones.

    Same semantics as the original Alpaca function, so LLaMA-7B plus `[PAD]` ends at vocabulary
    32001, the shape the released weight diff expects. The resize is not padded to a multiple of 64.

    Args:
        special_tokens_dict: e.g. {"pad_token": "[PAD]"}.
        tokenizer: the tokenizer to extend (in place).
        model: the model whose input and output embeddings are resized (in place).
    Returns:
        The number of tokens added.
    """
    import torch  # modeling's other helpers are used by commands that never load torch

    num_new_tokens = tokenizer.add_special_tokens(special_tokens_dict)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if num_new_tokens > 0:
        with torch.no_grad():
            input_embeddings = model.get_input_embeddings().weight
            input_embeddings[-num_new_tokens:] = input_embeddings[:-num_new_tokens].mean(dim=0, keepdim=True)
            output = model.get_output_embeddings()
            # Tied embeddings share one tensor: it is already set.
            if output is not None and output.weight.data_ptr() != input_embeddings.data_ptr():
                output.weight[-num_new_tokens:] = output.weight[:-num_new_tokens].mean(dim=0, keepdim=True)
    return num_new_tokens
