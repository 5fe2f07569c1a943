"""Tokenizing records with the prompt masked, as the original `preprocess()` does, in batches.

    from alpaca_lib.data.tokenizing import tokenize_records
    encoded = tokenize_records(records, tokenizer)   # same ids and labels as the original preprocess()
    ids, source_len = encoded.example(0)             # labels: encoded.labels(0)

The masking is the original algorithm: labels are the input ids of `source + target` with the first
`len(tokenize(source))` positions set to -100, where both strings are tokenized separately, truncated
to `model_max_length`, and a source's length counts its non-pad tokens. It is computed here in
batches (one call per batch instead of two calls per example), and the examples are kept in flat arrays
(`EncodedData`); `alpaca_lib.data.cache.encode_file` does the same for a whole data source and caches the
result on disk. A template file (`--prompt_template my.json`) only changes the prompt text.

Under `--prompt_template chat` each record (an Alpaca record as one user and one assistant turn, a
conversation with its own turns) is rendered by the tokenizer's chat template and encoded by
`alpaca_lib.data.conversations.encode_chats`; the loss is on every assistant turn, so the examples carry a
per-token loss mask (`EncodedData.loss_mask`) instead of a masked prefix.
"""

from __future__ import annotations

import itertools
import json
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Dict, Iterable, List, Optional, Sequence

import numpy as np

from alpaca_lib.core.modeling import IGNORE_INDEX
from alpaca_lib.core.prompt import format_prompt
from alpaca_lib.data.conversations import check_conversation, encode_chats, is_conversation
from alpaca_lib.data.formats import ChatTemplateError, PromptFormat, has_generation_marks
from alpaca_lib.data.records import DataError

TOKENIZE_BATCH_SIZE = 1024


class RecordFormatError(DataError):
    """A conversation record under a format that takes Alpaca records only (alpaca, a template file)."""


def sources_and_targets(records: Sequence[dict], eos_token: str,
                        prompt_format: Optional[PromptFormat] = None) -> tuple[List[str], List[str]]:
    """The original's strings: the formatted prompt, and `output + eos_token`.

    Args:
        prompt_format: a template file's format to write the prompts with; None (or alpaca): Alpaca's own.
    """
    if prompt_format is None or prompt_format.templates is None:
        sources = [format_prompt(r) for r in records]
    else:
        sources = [prompt_format.prompt(r) for r in records]
    targets = [f"{r['output']}{eos_token}" for r in records]
    return sources, targets


@dataclass
class EncodedData:
    """Tokenized examples in flat arrays: example i is `input_ids[offsets[i]:offsets[i+1]]`."""

    input_ids: np.ndarray  # int32, all examples concatenated
    offsets: np.ndarray  # int64, len = n + 1
    source_lens: np.ndarray  # int32, masked prefix length of each example (chat: tokens before its first loss token)
    stats: Dict[str, Any] = field(default_factory=dict)
    loss_mask: Optional[np.ndarray] = None  # chat: bool per token of input_ids, True where it is in the loss

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def example(self, i: int) -> tuple[np.ndarray, int]:
        return self.input_ids[self.offsets[i] : self.offsets[i + 1]], int(self.source_lens[i])

    def labels(self, i: int) -> np.ndarray:
        """Example i's labels (int64): its ids, IGNORE_INDEX outside the loss (the masked prefix, or the mask)."""
        ids, source_len = self.example(i)
        if self.loss_mask is None:
            return labels_for(ids, source_len)
        mask = np.asarray(self.loss_mask[self.offsets[i] : self.offsets[i + 1]], dtype=bool)
        return np.where(mask, ids.astype(np.int64), IGNORE_INDEX)


def loss_tokens(offsets: np.ndarray, source_lens: np.ndarray, loss_mask: Optional[np.ndarray]) -> int:
    """How many tokens of the examples are in the loss: those after each masked prefix, or those the mask marks."""
    if loss_mask is not None:
        return int(loss_mask.sum())
    return int(offsets[-1] - source_lens.astype(np.int64).sum())


def _batched_encodings(tokenizer, texts: Sequence[str], max_length: int):
    """Yields (ids, encoding) per text, truncated like `tokenizer(text, max_length=..., truncation=True)`.

    `encoding` is the fast tokenizer's `tokenizers.Encoding` (token/char alignment), or None.
    """
    for start in range(0, len(texts), TOKENIZE_BATCH_SIZE):
        batch = list(texts[start : start + TOKENIZE_BATCH_SIZE])
        enc = tokenizer(batch, max_length=max_length, truncation=True, return_attention_mask=False)
        encodings = enc.encodings if getattr(enc, "_encodings", None) else [None] * len(batch)
        yield from zip(enc["input_ids"], encodings)


def _batched_ids(tokenizer, texts: Sequence[str], max_length: int) -> List[List[int]]:
    """Token ids of each text, truncated like `tokenizer(text, max_length=..., truncation=True)`."""
    return [ids for ids, _ in _batched_encodings(tokenizer, texts, max_length)]


_LOCAL_NORMALIZERS = {"Replace", "Prepend", "Sequence"}
_WORD_PRE_TOKENIZERS = {"ByteLevel", "Metaspace", "Split", "Sequence"}


def _component_types(component) -> set:
    if component is None:
        return set()
    state = json.loads(component.__getstate__())
    found, stack = set(), [state]
    while stack:
        node = stack.pop()
        found.add(node.get("type"))
        for key in ("normalizers", "pretokenizers", "processors"):
            stack.extend(node.get(key) or [])
    return found


def prompt_tokens_readable_from_example(tokenizer) -> bool:
    """Whether a prompt's tokens can be read off its example's tokens where a token boundary falls at its end.

    That holds for BPE: merges only ever grow tokens, so if no token of `source + target` crosses the end
    of `source`, no merge crossed it, and the merges left of it are exactly those of `source` alone —
    provided normalization and pre-tokenization are character-local (LLaMA, OPT/GPT-2, SmolLM2
    tokenizers) and special tokens are added only in front. Then each example is tokenized once, not
    twice; examples without such a clean boundary still get the second tokenization.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(backend.model).__name__ != "BPE" or getattr(backend.model, "dropout", None):
        return False
    if not _component_types(backend.normalizer) <= _LOCAL_NORMALIZERS:
        return False
    if not _component_types(backend.pre_tokenizer) <= _WORD_PRE_TOKENIZERS:
        return False
    with_special = tokenizer("a b")["input_ids"]
    plain = tokenizer("a b", add_special_tokens=False)["input_ids"]
    return with_special[len(with_special) - len(plain):] == plain  # specials only in front


def encode_pairs(
    sources: Sequence[str], targets: Sequence[str], tokenizer, max_length: int
) -> tuple[List[List[int]], List[int], int]:
    """The original masking, batched: ids of `source + target` and each example's masked prefix length.

    Returns:
        (example ids, source lengths, number of examples whose tokenized source is not a prefix of the
        tokenized example, i.e. the tokenizer merged tokens across the prompt/response boundary).
    """
    pad_id = tokenizer.pad_token_id
    fast = prompt_tokens_readable_from_example(tokenizer)
    example_ids, source_lens, pending = [], [], []
    texts = [s + t for s, t in zip(sources, targets)]
    for i, (ids, encoding) in enumerate(_batched_encodings(tokenizer, texts, max_length)):
        example_ids.append(ids)
        source_lens.append(None)
        p = len(sources[i])
        if fast and encoding is not None and p > 0 and not sources[i][-1].isspace():
            k = encoding.char_to_token(p)
            if k is not None and encoding.token_to_chars(k)[0] == p and encoding.char_to_token(p - 1) == k - 1:
                prefix = ids[:k]
                source_lens[i] = k if pad_id is None or pad_id not in prefix else sum(t != pad_id for t in prefix)
                continue
        pending.append(i)

    # The rest (merged or truncated boundaries, other tokenizers): tokenize the source too, as the original.
    merges = 0
    source_ids = _batched_ids(tokenizer, [sources[i] for i in pending], max_length)
    for i, src in zip(pending, source_ids):
        # As the original: the masked length counts the non-pad tokens of the truncated source.
        source_lens[i] = len(src) if pad_id is None else sum(1 for t in src if t != pad_id)
        merges += example_ids[i][: len(src)] != src
    return example_ids, source_lens, merges


@dataclass(frozen=True)
class DropOptions:
    """Which examples to leave out beyond the original's (prompt fills the max length); all off by default.

    truncated_responses: examples whose response is cut at the max length (their EOS is lost, so the
        model would learn never to stop on them).
    empty_or_duplicate: records that train to nothing useful: an empty or whitespace-only output, a
        blank instruction, or an exact repeat of an earlier record.
    """

    truncated_responses: bool = False
    empty_or_duplicate: bool = False


class BatchEncoder:
    """Tokenizes batches of records as they come, keeping only flat arrays (or writing the ids to a file).

    `add` each batch, then `finish`; with a `sink`, the ids (int32) go to the file as they come and their
    CRC-32 is kept in `crc` (the preprocessing cache writes its entries so). Under chat the loss masks are
    kept in memory (one byte a token) and returned by `finish`.
    """

    def __init__(self, tokenizer, max_length: int, drop: DropOptions, sink: Optional[BinaryIO] = None,
                 prompt_format: Optional[PromptFormat] = None):
        self.tokenizer, self.max_length, self.drop, self.sink = tokenizer, max_length, drop, sink
        self.format = prompt_format
        self.chat = prompt_format is not None and prompt_format.is_chat
        if self.chat:
            prompt_format.check_tokenizer(tokenizer, getattr(tokenizer, "name_or_path", "") or "the model")
        self.generation_marks = self.chat and has_generation_marks(tokenizer)
        self.eos_id = tokenizer.eos_token_id
        self.chunks: List[np.ndarray] = []  # in memory when there is no sink
        self.lengths: List[np.ndarray] = []
        self.source_lens: List[np.ndarray] = []
        self.masks: List[np.ndarray] = []  # chat only
        self.crc = 0
        self.seen: set = set()
        self.count = dict(examples=0, dropped_no_response=0, boundary_merges=0, response_truncated=0,
                          dropped_truncated=0, empty_outputs=0, blank_instructions=0, duplicates=0,
                          dropped_empty_or_duplicate=0)
        if self.chat:  # alpaca's stats (and so its cache entries) stay as they were
            self.count["prefix_mismatches"] = 0
        self.dropped_indices: List[int] = []

    def add(self, records: Sequence[dict]) -> None:
        if self.chat:
            self._add_chat(records)
            return
        count, base = self.count, self.count["examples"]
        self._refuse_conversations(records, base)
        sources, targets = sources_and_targets(records, self.tokenizer.eos_token, self.format)
        example_ids, source_lens, merges = encode_pairs(sources, targets, self.tokenizer, self.max_length)
        count["examples"] += len(records)
        count["boundary_merges"] += merges
        kept_ids, kept_source_lens = [], []
        for i, (record, ids, source_len) in enumerate(zip(records, example_ids, source_lens)):
            empty = not record["output"].strip()
            blank = not record["instruction"].strip()
            identity = hash((record["instruction"], record.get("input", ""), record["output"]))
            if not self._keep(base + i, ids, source_len >= len(ids), len(ids) >= self.max_length and ids[-1] !=
                              self.eos_id, empty, blank, identity):
                continue
            kept_ids.append(ids)
            kept_source_lens.append(source_len)
        self._store(kept_ids, kept_source_lens)

    def _refuse_conversations(self, records: Sequence[dict], base: int) -> None:
        for i, record in enumerate(records):
            if "instruction" not in record and is_conversation(record):
                key = "messages" if "messages" in record else "conversations"
                name = self.format.name if self.format is not None else "alpaca"
                raise RecordFormatError(
                    f"record {base + i} is a conversation ('{key}'), and --prompt_template {name} trains on Alpaca "
                    "records (instruction, input, output) only. Train on conversations with --prompt_template chat "
                    "(the model's own chat template).")

    def _keep(self, index: int, ids: Sequence[int], no_response: bool, truncated: bool, empty: bool, blank: bool,
              identity: int) -> bool:
        """Counts one example's oddities and says whether it is kept."""
        count = self.count
        duplicate = identity in self.seen
        self.seen.add(identity)
        count["empty_outputs"] += empty
        count["blank_instructions"] += blank
        count["duplicates"] += duplicate
        if no_response:  # nothing of the response survives truncation: no label to learn (as the original)
            count["dropped_no_response"] += 1
            if len(self.dropped_indices) < 20:
                self.dropped_indices.append(index)
            return False
        if truncated:
            count["response_truncated"] += 1
            if self.drop.truncated_responses:
                count["dropped_truncated"] += 1
                return False
        if self.drop.empty_or_duplicate and (empty or blank or duplicate):
            count["dropped_empty_or_duplicate"] += 1
            return False
        return True

    def _add_chat(self, records: Sequence[dict]) -> None:
        """Encodes each record with the chat template: the loss on every assistant turn, its end of turn included;
        truncated to the max length."""
        count, base = self.count, self.count["examples"]
        kept_ids, kept_source_lens, kept_masks = [], [], []
        conversations = [self.format.messages(check_conversation(record, f"record {base + i}")
                                              if "instruction" not in record and is_conversation(record) else record)
                         for i, record in enumerate(records)]
        try:
            encoded = encode_chats(conversations, self.tokenizer, self.generation_marks)
        except ChatTemplateError as e:
            raise ChatTemplateError(f"record {base + e.conversation}: {e}. Fix or leave out that record.") from None
        for i, (messages, (ids, mask, flags)) in enumerate(zip(conversations, encoded)):
            count["examples"] += 1
            count["prefix_mismatches"] += flags["prefix_mismatch"]
            count["boundary_merges"] += flags["boundary_merges"] > 0
            ids, mask, cut = ids[: self.max_length], mask[: self.max_length], mask[self.max_length:]
            said = [m["content"] for m in messages if m["role"] == "assistant"]
            asked = [m["content"] for m in messages if m["role"] == "user"]
            identity = hash(tuple((m["role"], m["content"]) for m in messages))
            # Cut inside an assistant turn (it loses its end of turn), not merely before later turns.
            cut_mid_turn = len(cut) > 0 and bool(cut[0]) and bool(mask[-1])
            if not self._keep(base + i, ids, not mask.any(), cut_mid_turn, any(not t.strip() for t in said),
                              any(not t.strip() for t in asked), identity):
                continue
            kept_ids.append(ids)
            kept_source_lens.append(int(mask.argmax()))
            kept_masks.append(mask)
        self._store(kept_ids, kept_source_lens)
        self.masks.append(np.concatenate(kept_masks) if kept_masks else np.zeros(0, bool))

    def _store(self, kept_ids: List[List[int]], kept_source_lens: List[int]) -> None:
        lengths = np.fromiter((len(x) for x in kept_ids), dtype=np.int64, count=len(kept_ids))
        flat = np.fromiter(itertools.chain.from_iterable(kept_ids), dtype=np.int32, count=int(lengths.sum()))
        self.lengths.append(lengths)
        self.source_lens.append(np.asarray(kept_source_lens, dtype=np.int32))
        if self.sink is None:
            self.chunks.append(flat)
        else:
            buf = flat.tobytes()
            self.crc = zlib.crc32(buf, self.crc)
            self.sink.write(buf)

    def finish(self) -> EncodedData:
        """The arrays and stats; with a sink, the ids are in the file and `input_ids` is left empty."""
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        source_lens = np.concatenate(self.source_lens) if self.source_lens else np.zeros(0, np.int32)
        flat = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int32)
        mask = (np.concatenate(self.masks) if self.masks else np.zeros(0, bool)) if self.chat else None
        stats = {
            **self.count,
            "kept": len(lengths),
            "dropped_indices": self.dropped_indices,
            "tokens": int(offsets[-1]),
            "loss_tokens": loss_tokens(offsets, source_lens, mask),
        }
        return EncodedData(flat, offsets, source_lens, stats, mask)


def tokenize_records(
    records: Sequence[dict], tokenizer, max_length: Optional[int] = None, drop: DropOptions = DropOptions(),
    prompt_format: Optional[PromptFormat] = None,
) -> EncodedData:
    """Tokenizes records with the prompt masked, dropping examples left with no label to learn.

    Args:
        records: checked Alpaca records (see `alpaca_lib.data.json_reader.load_records`); under chat, also
            conversations (`alpaca_lib.data.conversations`).
        tokenizer: the training tokenizer, with its pad token already set.
        max_length: truncation length (default: `tokenizer.model_max_length`).
        drop: what else to leave out (nothing by default, as the original).
        prompt_format: `--prompt_template` (`alpaca_lib.data.formats.load_prompt_format`); None is alpaca.
    Returns:
        `EncodedData` with stats: `examples`, `kept`, `dropped_no_response` (prompt fills the max length),
        `boundary_merges` (the tokenized prompt is not a prefix of the tokenized example),
        `response_truncated` (the response is cut at the max length and loses its EOS), `empty_outputs`,
        `blank_instructions`, `duplicates` (exact repeats of an earlier record), and what `drop` dropped
        (`dropped_truncated`, `dropped_empty_or_duplicate`). Under chat, `loss_mask` is set, a response is what
        the assistant says (`dropped_no_response`: no loss token left after truncation; `response_truncated`: a
        loss token cut off), `boundary_merges` counts examples with a token across an assistant turn's edge,
        `prefix_mismatches` those whose template renders earlier turns differently as the conversation grows,
        and `empty_outputs` / `blank_instructions` count blank assistant / user turns.
    Raises:
        RecordFormatError: a conversation record under alpaca or a template file.
        PromptFormatError: chat with a tokenizer that has no chat template.
    """
    return encode_batches([records], tokenizer, max_length or tokenizer.model_max_length, drop,
                          prompt_format=prompt_format)


def encode_batches(batches: Iterable[Sequence[dict]], tokenizer, max_length: int, drop: DropOptions,
                   sink: Optional[BinaryIO] = None, prompt_format: Optional[PromptFormat] = None) -> EncodedData:
    """`tokenize_records` over batches of records as a source yields them (`DataSource.batches`)."""
    encoder = BatchEncoder(tokenizer, max_length, drop, sink, prompt_format)
    for batch in batches:
        for start in range(0, len(batch), TOKENIZE_BATCH_SIZE * 4):
            encoder.add(batch[start : start + TOKENIZE_BATCH_SIZE * 4])
    return encoder.finish()


def labels_for(ids: np.ndarray, source_len: int) -> np.ndarray:
    """Input ids with the first `source_len` positions set to IGNORE_INDEX."""
    labels = ids.astype(np.int64, copy=True)
    labels[:source_len] = IGNORE_INDEX
    return labels
