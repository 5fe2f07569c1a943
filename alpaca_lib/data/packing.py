"""Padding-free packing: several examples per row, position ids restarting at each example.

    dataset = PackedDataset(examples, lengths, row_tokens=512)     # train.py --packing True --model_max_length 512
    collator = DataCollatorForPackedRows(tokenizer.pad_token_id, supervised_logits_only=True)

Rows are filled best-fit decreasing up to `row_tokens` (train.py passes `--model_max_length`), once,
before training; the Trainer's sampler then shuffles whole rows each epoch, so every step sees
`per_device_train_batch_size` nearly full rows: the same work per step, and no padding apart from the few
tokens that even a full row leaves over. Inside a row, examples are laid end to end by transformers'
`DataCollatorWithFlattening`: position ids restart at 0 for each example, and the first label of each
example is -100, so no label is predicted across a boundary. The batches carry no attention mask: the model
keeps the examples apart by their position ids (`alpaca_lib.training.packed_model` checks that it does, and
`alpaca_lib.training.packed_attention` runs the attention). Why rows are `--model_max_length` long, and what
packing and the LM head on loss-bearing positions gain: docs/packed_attention.md.
"""

from __future__ import annotations

import bisect
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import DataCollatorWithFlattening

from alpaca_lib.core.modeling import IGNORE_INDEX


def pack_rows(lengths: Sequence[int], row_tokens: int) -> List[List[int]]:
    """Groups examples into rows of at most `row_tokens` tokens, best-fit decreasing.

    Examples are placed longest first, each into the open row it fills most tightly (a new row when none
    has room), which leaves close to the least possible free space for this kind of greedy packing.

    Args:
        lengths: token count of each example.
        row_tokens: capacity of a row; every length must fit.
    Returns:
        Rows as lists of example indices, in the order the rows were opened. Deterministic.
    Raises:
        ValueError: an example longer than `row_tokens`.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and lengths.max() > row_tokens:
        i = int(lengths.argmax())
        raise ValueError(f"example {i} has {int(lengths[i])} tokens, more than a packed row holds ({row_tokens}).")
    # Longest first; ties keep dataset order so the result does not depend on the sort's stability.
    order = np.lexsort((np.arange(len(lengths)), -lengths))
    rows: List[List[int]] = []
    by_free: List[tuple] = []  # (free tokens, row index), sorted: bisect finds the tightest row that fits
    for i in order:
        n = int(lengths[i])
        k = bisect.bisect_left(by_free, (n, -1))
        if k == len(by_free):
            rows.append([int(i)])
            bisect.insort(by_free, (row_tokens - n, len(rows) - 1))
            continue
        free, r = by_free.pop(k)
        rows[r].append(int(i))
        bisect.insort(by_free, (free - n, r))
    return rows


class PackedDataset(Dataset):
    """Rows of packed examples over a dataset whose items are {"input_ids", "labels"} tensors.

    Each item is one row, already flattened: `input_ids`, `labels` (the first label of each example set
    to -100) and `position_ids` restarting at 0 for each example, as `DataCollatorWithFlattening` makes them.
    """

    def __init__(self, examples: Dataset, lengths: Sequence[int], row_tokens: int):
        self.examples = examples
        self.row_tokens = row_tokens
        self.rows = pack_rows(lengths, row_tokens)
        self._flatten = DataCollatorWithFlattening(separator_id=IGNORE_INDEX, return_tensors="pt")
        lengths = np.asarray(lengths, dtype=np.int64)
        self.tokens = int(lengths.sum())
        self.row_lengths = np.array([int(lengths[r].sum()) for r in self.rows], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i) -> Dict[str, torch.Tensor]:
        batch = self._flatten([self.examples[j] for j in self.rows[i]])
        return {key: batch[key][0] for key in ("input_ids", "labels", "position_ids")}

    @property
    def fill(self) -> float:
        """Fraction of the rows' capacity holding real tokens."""
        return self.tokens / max(1, len(self.rows) * self.row_tokens)


class DataCollatorForPackedRows:
    """Stacks packed rows (or plain examples) into a batch with no attention mask.

    Rows shorter than the longest in the batch are padded at the end with the pad id, label -100 and
    position ids that start again at 0, so the padding forms its own block that no real token attends to.
    A plain example (no `position_ids`, e.g. from the evaluation set) is a row of one example, so the
    evaluation loss is computed with the same masking as in the padded path.

    With `supervised_logits_only`, the batch also carries `logits_to_keep` (a boolean mask of the positions
    whose next token is in the loss) and `shift_labels` (those next tokens): the model then projects only
    those positions onto the vocabulary, and the loss, the same sum over the same tokens, skips the prompt.
    `alpaca_lib.training.packed_model.supports_supervised_logits` decides whether the model takes them.
    """

    def __init__(self, pad_token_id: int, supervised_logits_only: bool = False):
        self.pad_token_id = pad_token_id
        self.supervised_logits_only = supervised_logits_only

    def __call__(self, instances: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        width = max(len(x["input_ids"]) for x in instances)
        n = len(instances)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((n, width), dtype=torch.long)
        for r, x in enumerate(instances):
            k = len(x["input_ids"])
            input_ids[r, :k] = x["input_ids"]
            labels[r, :k] = x["labels"]
            position_ids[r, :k] = x["position_ids"] if "position_ids" in x else torch.arange(k)
            position_ids[r, k:] = torch.arange(width - k)
        batch = dict(input_ids=input_ids, labels=labels, position_ids=position_ids)
        if self.supervised_logits_only:
            batch.update(supervised_positions(labels))
        return batch


def supervised_positions(labels: torch.Tensor) -> Dict[str, torch.Tensor]:
    """`logits_to_keep` and `shift_labels` for a causal LM: the positions whose next label is in the loss.

    Position t predicts label t+1 (the shift every causal LM loss makes), so the mask is that of the labels
    shifted left by one; `shift_labels` holds those labels, flat, in the order the model gathers the
    positions (row by row), as transformers' `slice_logits_to_keep` and `ForCausalLMLoss` expect.
    """
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    keep = shifted != IGNORE_INDEX
    return dict(logits_to_keep=keep, shift_labels=shifted[keep])
