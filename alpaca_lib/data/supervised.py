"""Alpaca's supervised data for train.py: tokenized examples with the prompt masked, the collator, the data module.

    data_module = make_supervised_data_module(tokenizer, data_args, training_args=training_args)
    trainer = transformers.Trainer(model=model, args=training_args, **data_module)

`preprocess`, `SupervisedDataset`, `DataCollatorForSupervisedDataset` and `make_supervised_data_module` keep
the original's names and signatures (train.py re-exports them); the examples are encoded (and cached) by
`alpaca_lib.data.tokenizing` and `alpaca_lib.data.cache`, held out by `alpaca_lib.data.split` and packed by
`alpaca_lib.data.packing`. Log lines go to the "train" logger.

The prompt format (`--prompt_template`, `alpaca_lib.data.formats`) decides the text: alpaca (the default) and
template files mask a prompt prefix; chat examples carry a loss mask on every assistant turn and their own
`attention_mask` (all ones), which the collator pads: a mask read off the pad id would hide every end-of-turn
token inside a conversation where the pad token is the end-of-turn token (SmolLM2's `<|im_end|>`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import transformers
from torch.utils.data import Dataset

from alpaca_lib.core.modeling import IGNORE_INDEX
from alpaca_lib.data.cache import encode_file
from alpaca_lib.data.formats import PromptFormat, load_prompt_format
from alpaca_lib.data.packing import DataCollatorForPackedRows, PackedDataset
from alpaca_lib.data.records import DataError
from alpaca_lib.data.sources import DataSource
from alpaca_lib.data.split import hold_out
from alpaca_lib.data.tokenizing import DropOptions, EncodedData, RecordFormatError, encode_pairs, labels_for

__all__ = ["preprocess", "SupervisedDataset", "DataCollatorForSupervisedDataset", "make_supervised_data_module"]

logger = logging.getLogger("train")


def preprocess(sources: Sequence[str], targets: Sequence[str], tokenizer: transformers.PreTrainedTokenizer) -> Dict:
    """Tokenizes `source + target` with the source masked: the original function, computed in batches.

    Returns:
        dict(input_ids=[LongTensor], labels=[LongTensor]) with one entry per example, none dropped.
    """
    example_ids, source_lens, _ = encode_pairs(list(sources), list(targets), tokenizer, tokenizer.model_max_length)
    input_ids = [torch.tensor(ids, dtype=torch.long) for ids in example_ids]
    labels = [torch.from_numpy(labels_for(ids.numpy(), n)) for ids, n in zip(input_ids, source_lens)]
    return dict(input_ids=input_ids, labels=labels)


class SupervisedDataset(Dataset):
    """Dataset for supervised fine-tuning: tokenized examples with the prompt masked in the labels."""

    def __init__(
        self,
        data_path: str,
        tokenizer: transformers.PreTrainedTokenizer,
        cache_dir: Optional[str] = None,
        records: Optional[Sequence[dict] | DataSource] = None,
        encoded: Optional[EncodedData] = None,
        drop: DropOptions = DropOptions(),
        prompt_format: Optional[PromptFormat] = None,
    ):
        super().__init__()
        if encoded is None:
            # `records`: the checked records, or the checked `DataSource` of data_path (read in batches).
            source = records if isinstance(records, DataSource) else data_path
            try:
                encoded = encode_file(source, tokenizer, tokenizer.model_max_length, cache_dir,
                                      None if isinstance(records, DataSource) else records, drop,
                                      prompt_format=prompt_format)
            except RecordFormatError as e:
                raise RecordFormatError(f"{data_path}: {e}") from None
        self.encoded: EncodedData = encoded
        self.chat = encoded.loss_mask is not None
        stats = self.encoded.stats
        logger.info(
            "%s: %d examples, %d kept, %d tokens (%d in the loss); preprocessing cache: %s",
            data_path, stats["examples"], stats["kept"], stats["tokens"], stats["loss_tokens"], stats["cache"],
        )
        if stats["dropped_no_response"]:
            logger.warning(
                "%s: dropped %d of %d examples whose %s fills model_max_length=%d (no response token "
                "left to learn; first indices %s). Raise --model_max_length to keep them.",
                data_path, stats["dropped_no_response"], stats["examples"],
                "conversation up to its first assistant turn" if self.chat else "prompt alone",
                tokenizer.model_max_length, stats["dropped_indices"],
            )
        if self.chat:
            _log_chat_boundaries(data_path, stats)
        elif stats["boundary_merges"]:
            logger.warning(
                "%s: in %d examples the tokenizer merges tokens across the prompt/response boundary (the tokenized "
                "prompt is not a prefix of the tokenized example); the masked length is still the prompt's token "
                "count, as in the original.", data_path, stats["boundary_merges"],
            )
        _log_data_quality(data_path, stats, tokenizer.model_max_length)
        if len(self.encoded) == 0:
            raise DataError(f"{data_path}: no example has a response token left after truncation.")

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i) -> Dict[str, torch.Tensor]:
        ids = self.encoded.example(i)[0].astype(np.int64)
        item = dict(input_ids=torch.from_numpy(ids), labels=torch.from_numpy(self.encoded.labels(i)))
        if self.chat:  # its own attention mask: a pad-based one would hide end-of-turn tokens that are the pad token
            item["attention_mask"] = torch.ones(len(ids), dtype=torch.bool)
        return item

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.encoded.offsets)


def _log_chat_boundaries(data_path, stats: Dict) -> None:
    """Warns about conversations whose assistant turns were not cleanly found (chat)."""
    if stats.get("prefix_mismatches"):
        logger.warning(
            "%s: in %d examples the chat template renders the conversation up to an assistant turn differently from "
            "the whole conversation (not a prefix of it); their assistant turns were found by their text instead, "
            "and one the template rewrote is left out of the loss.", data_path, stats["prefix_mismatches"],
        )
    if stats["boundary_merges"]:
        logger.warning(
            "%s: in %d examples the tokenizer merges tokens across the edge of an assistant turn; such a token is "
            "in the loss.", data_path, stats["boundary_merges"],
        )


def _log_data_quality(data_path, stats: Dict, max_length: int) -> None:
    """Warns about examples that train to little: truncated responses, empty outputs, blank instructions, repeats."""
    if stats.get("response_truncated"):
        dropped = stats.get("dropped_truncated", 0)
        logger.warning(
            "%s: %d examples have their response cut at model_max_length=%d (the EOS is lost, so they teach the "
            "model not to stop); %s", data_path, stats["response_truncated"], max_length,
            f"dropped {dropped} of them (--drop_truncated_responses)." if dropped else
            "trained on as in the original. --drop_truncated_responses True leaves them out.",
        )
    useless = {k: stats.get(k, 0) for k in ("empty_outputs", "blank_instructions", "duplicates")}
    if any(useless.values()):
        dropped = stats.get("dropped_empty_or_duplicate", 0)
        logger.warning(
            "%s: %d records with an empty output, %d with a blank instruction, %d exact repeats of an earlier "
            "record; %s", data_path, useless["empty_outputs"], useless["blank_instructions"], useless["duplicates"],
            f"dropped {dropped} (--drop_empty_or_duplicate_records)." if dropped else
            "trained on as in the original. --drop_empty_or_duplicate_records True leaves them out.",
        )


@dataclass
class DataCollatorForSupervisedDataset:
    """Pads a batch to its longest example: pad id for inputs, -100 for labels.

    The attention mask is the examples' own, padded with zeros, when they carry one (chat); otherwise, as the
    original, every position that does not hold the pad id.
    """

    tokenizer: transformers.PreTrainedTokenizer

    def __call__(self, instances: Sequence[Dict]) -> Dict[str, torch.Tensor]:
        input_ids, labels = tuple([instance[key] for instance in instances] for key in ("input_ids", "labels"))
        input_ids = torch.nn.utils.rnn.pad_sequence(
            input_ids, batch_first=True, padding_value=self.tokenizer.pad_token_id
        )
        labels = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)
        if "attention_mask" in instances[0]:
            attention_mask = torch.nn.utils.rnn.pad_sequence(
                [instance["attention_mask"] for instance in instances], batch_first=True, padding_value=False)
        else:
            attention_mask = input_ids.ne(self.tokenizer.pad_token_id)
        return dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask)


def make_supervised_data_module(
    tokenizer: transformers.PreTrainedTokenizer, data_args, records=None, training_args=None, eval_records=None,
    supervised_logits_only: bool = False, prompt_format: Optional[PromptFormat] = None,
) -> Dict:
    """Make the training (and evaluation) datasets and the collator for supervised fine-tuning.

    Args:
        tokenizer: the training tokenizer (pad token set).
        data_args: `DataArguments`.
        records: the already loaded records of `data_args.data_path`, or its checked `DataSource`.
        training_args: `TrainingArguments` (for --packing and --seed); None trains as the original.
        eval_records: the same for `data_args.eval_data_path`.
        supervised_logits_only: packed batches ask the model for the logits of loss-bearing positions only
            (`alpaca_lib.training.packed_model.supports_supervised_logits`).
        prompt_format: the records' prompt format; None: `data_args.prompt_template` and `system_prompt`
            (alpaca when it has none).
    Returns:
        dict(train_dataset, eval_dataset, data_collator) for `transformers.Trainer`.
    """
    cache_dir = data_args.preprocessing_cache_dir or None
    drop = DropOptions(getattr(data_args, "drop_truncated_responses", False),
                       getattr(data_args, "drop_empty_or_duplicate_records", False))
    if prompt_format is None:
        prompt_format = load_prompt_format(getattr(data_args, "prompt_template", None),
                                           getattr(data_args, "system_prompt", None))
    train_dataset = SupervisedDataset(data_args.data_path, tokenizer, cache_dir=cache_dir, records=records, drop=drop,
                                      prompt_format=prompt_format)
    eval_dataset = None
    if getattr(data_args, "val_set_size", 0):
        seed = training_args.seed if training_args is not None else 42
        train_part, eval_part = hold_out(train_dataset.encoded, data_args.val_set_size, seed)
        train_dataset = SupervisedDataset(f"{data_args.data_path} (training part)", tokenizer, encoded=train_part)
        eval_dataset = SupervisedDataset(f"{data_args.data_path} (held out)", tokenizer, encoded=eval_part)
    elif getattr(data_args, "eval_data_path", None):
        eval_dataset = SupervisedDataset(data_args.eval_data_path, tokenizer, cache_dir=cache_dir, records=eval_records,
                                         drop=drop, prompt_format=prompt_format)

    if training_args is not None and training_args.packing:
        packed = PackedDataset(train_dataset, train_dataset.lengths, tokenizer.model_max_length)
        logger.info(
            "packing: %d examples into %d rows of up to %d tokens (%.1f examples and %.1f%% of the capacity used "
            "per row); a batch is %d row(s)", len(train_dataset), len(packed), packed.row_tokens,
            len(train_dataset) / max(1, len(packed)), 100 * packed.fill, training_args.per_device_train_batch_size,
        )
        return dict(train_dataset=packed, eval_dataset=eval_dataset,
                    data_collator=DataCollatorForPackedRows(tokenizer.pad_token_id, supervised_logits_only))
    data_collator = DataCollatorForSupervisedDataset(tokenizer=tokenizer)
    return dict(train_dataset=train_dataset, eval_dataset=eval_dataset, data_collator=data_collator)
