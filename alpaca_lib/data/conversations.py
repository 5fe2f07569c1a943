"""Conversation records (OpenAI `messages`, ShareGPT `conversations`) and their tokens with only the assistant's
turns in the loss.

    from alpaca_lib.data.conversations import check_conversation, encode_chat
    record = check_conversation({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
                                "data.json: record 0")          # -> {"messages": [{"role": "user", ...}, ...]}
    ids, mask, flags = encode_chat(record["messages"], tokenizer)   # mask[k]: token k is in the loss
    for ids, mask, flags in encode_chats(conversations, tokenizer): ...   # many at once: one tokenizer call

A conversation is an optional system turn, then user and assistant turns in turn, starting with the user and ending
with the assistant. `encode_chat` renders it with the tokenizer's chat template and marks what the assistant says,
its end-of-turn token included (ChatML `<|im_end|>`, not the newline after it): from the template's own
`{% generation %}` marks where it has them (with the end of turn added where a block closes before it), otherwise
from where each assistant turn starts and ends in the rendered text, found by rendering the conversation up to it
(with the generation prompt) and through it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from alpaca_lib.data.formats import ChatTemplateError, end_of_turn_text, render_chat
from alpaca_lib.data.records import DataError

ROLES = ("system", "user", "assistant")
# ShareGPT's speaker names, as the published dumps write them.
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant"}
CONVERSATION_KEYS = ("messages", "conversations")


def is_conversation(record: Any) -> bool:
    """Whether a record is a conversation (has `messages` or `conversations`, not null) rather than an Alpaca
    record."""
    return isinstance(record, dict) and any(record.get(k) is not None for k in CONVERSATION_KEYS)


def check_conversation(record: dict, where: str, column: Optional[str] = None) -> Dict[str, Any]:
    """A conversation record, checked and in OpenAI's form: {"messages": [{"role", "content"}, ...]}.

    Args:
        record: a decoded JSON object with `messages` (role/content) or `conversations` (ShareGPT's from/value);
            a key whose value is null counts as absent.
        where: where it is, opening each message, e.g. "data.json: record 3".
        column: the key that holds the turns when it is neither of those (`--data_columns messages=COLUMN`);
            its turns may be in either form, told apart by the first turn's keys.
    Raises:
        DataError: not a list of turns, a turn that is not an object with text, an unknown role, roles out of
            order, empty content, or no assistant turn to learn from.
    """
    if column is not None:
        key, turns = column, record[column]
        first = turns[0] if isinstance(turns, list) and turns else None
        sharegpt = isinstance(first, dict) and "role" not in first and ("from" in first or "value" in first)
    else:
        present = [k for k in CONVERSATION_KEYS if record.get(k) is not None]
        if len(present) > 1:
            raise DataError(f"{where} has both 'messages' and 'conversations'; keep one.")
        key = present[0] if present else "messages"
        turns, sharegpt = record.get(key), key == "conversations"
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where} field '{key}' is {_short(turns)}, expected a non-empty list of turns.")
    role_key, text_key = ("from", "value") if sharegpt else ("role", "content")
    messages = []
    for t, turn in enumerate(turns):
        at = f"{where}: turn {t}"
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            keys = sorted(turn) if isinstance(turn, dict) else type(turn).__name__
            other = ("role", "content") if sharegpt else ("from", "value")
            hint = (f" {other[0]}/{other[1]} turns belong under '{'messages' if sharegpt else 'conversations'}'."
                    if column is None and isinstance(turn, dict) and set(other) <= set(turn) else "")
            raise DataError(f"{at} is {keys}, expected an object with '{role_key}' and '{text_key}'.{hint}")
        speaker, text = turn[role_key], turn[text_key]
        known = sorted(SHAREGPT_ROLES) if sharegpt else ROLES
        role = (SHAREGPT_ROLES if sharegpt else dict(zip(ROLES, ROLES))).get(speaker) \
            if isinstance(speaker, str) else None
        if role is None:
            raise DataError(f"{at} has {role_key} {speaker!r}; expected one of {', '.join(known)}.")
        if not isinstance(text, str):
            raise DataError(f"{at} ({role}) {text_key} is a {type(text).__name__} ({text!r:.60}), expected a string.")
        if not text.strip():
            raise DataError(f"{at} ({role}) is empty; give it some text, or leave the record out.")
        messages.append({"role": role, "content": text})
    _check_order([m["role"] for m in messages], where)
    return {"messages": messages}


def _check_order(roles: Sequence[str], where: str) -> None:
    """An optional system turn, then user, assistant, user, assistant, ..., ending with the assistant."""
    if "assistant" not in roles:
        raise DataError(f"{where} has no assistant turn to learn from (roles: {', '.join(roles)}); add the "
                        "assistant's answer, or leave the record out.")
    body = roles[1:] if roles[0] == "system" else roles
    for t, role in enumerate(body):
        expected = "user" if t % 2 == 0 else "assistant"
        if role != expected:
            n = t + (len(roles) - len(body))
            raise DataError(f"{where}: turn {n} is {role}, expected {expected} (roles: {', '.join(roles)}); a "
                            "conversation is an optional system turn, then user and assistant turns in turn.")
    if body[-1] != "assistant":
        raise DataError(f"{where} ends with a user turn that has no answer (roles: {', '.join(roles)}); end it with "
                        "the assistant's turn, or drop the last turn.")


def turns_of(record: dict) -> int:
    """User and assistant turns of a checked conversation (its system turn not counted)."""
    return sum(1 for m in record["messages"] if m["role"] != "system")


def _short(value: Any) -> str:
    return f"a {type(value).__name__} ({value!r:.60})" if value not in ([], "") else repr(value)


# ---- tokens and the loss mask ----


def assistant_spans(messages: Sequence[dict], tokenizer) -> Tuple[str, List[Tuple[int, int]], bool]:
    """The rendered conversation and the character span of each assistant turn, its end-of-turn included.

    A turn's span starts where the conversation rendered up to it, with the generation prompt, ends, and stops at
    the end of the conversation rendered through it, less trailing whitespace. Where one of those renderings is not
    a prefix of the whole (a template that writes earlier turns differently), the turn's content is looked up in the
    text after the turn it answers, followed by the template's end-of-turn text (or the EOS) when that comes next.

    Returns:
        (text, spans, whether every rendering was a prefix of the whole text).
    Raises:
        ChatTemplateError: the template refused the conversation.
    """
    text = render_chat(tokenizer, messages)
    spans, consistent, pos = [], True, 0
    end_of_turn = None
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        through = text if i == len(messages) - 1 else render_chat(tokenizer, messages[: i + 1])
        if text.startswith(before) and text.startswith(through) and len(through) > len(before) >= pos:
            start, end = len(before), len(before) + len(through[len(before):].rstrip())
        else:
            consistent = False
            # Past the turn this one answers: its answer may also be quoted in the question.
            asked = messages[i - 1]["content"]
            at = text.find(asked, pos)
            start = text.find(message["content"], at + len(asked) if at >= 0 else pos)
            if start < 0:  # the template rewrote the content: nothing of it can be found to train on
                continue
            end = start + len(message["content"])
            if end_of_turn is None:
                end_of_turn = end_of_turn_text(tokenizer) or tokenizer.eos_token or ""
            if end_of_turn and text.startswith(end_of_turn, end):
                end += len(end_of_turn)
        spans.append((start, end))
        pos = end
    return text, spans, consistent


def mask_from_offsets(offsets: Sequence[Tuple[int, int]], spans: Sequence[Tuple[int, int]]) -> Tuple[np.ndarray, int]:
    """Which tokens overlap a span (a token cut by a span's edge is in the loss), and how many are cut so.

    Args:
        offsets: each token's (start, end) characters in the text, in order.
        spans: the (start, end) characters of the assistant turns, in order.
    Returns:
        (a bool per token, the number of tokens in the loss that cross a span's edge).
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    if not len(spans):
        return np.zeros(len(offsets), bool), 0
    span_starts, span_ends = np.asarray(spans, dtype=np.int64).reshape(-1, 2).T
    # Each token against the first span that ends after the token starts.
    s = np.searchsorted(span_ends, offsets[:, 0], side="right")
    has = s < len(span_ends)
    s = np.minimum(s, len(span_ends) - 1)
    inside = has & (offsets[:, 1] > span_starts[s])
    crossing = inside & ((offsets[:, 0] < span_starts[s]) | (offsets[:, 1] > span_ends[s]))
    return inside, int(crossing.sum())


def encode_chat(messages: Sequence[dict], tokenizer, generation_marks: bool = False
                ) -> Tuple[List[int], np.ndarray, Dict[str, int]]:
    """A conversation's token ids (untruncated) and loss mask: True on what the assistant says.

    Args:
        messages: a checked conversation (`check_conversation`), system turn included.
        tokenizer: a fast tokenizer with a chat template.
        generation_marks: take the mask from the template's `{% generation %}` blocks
            (`alpaca_lib.data.formats.has_generation_marks`).
    Returns:
        (ids, mask, flags): flags["prefix_mismatch"] is 1 when a rendering up to an assistant turn is not a prefix of
        the rendered conversation, flags["boundary_merges"] the tokens that straddle an assistant turn's edge.
    Raises:
        ChatTemplateError: the template refused the conversation.
    """
    return encode_chats([messages], tokenizer, generation_marks)[0]


def encode_chats(conversations: Sequence[Sequence[dict]], tokenizer, generation_marks: bool = False
                 ) -> List[Tuple[List[int], np.ndarray, Dict[str, int]]]:
    """`encode_chat` of each conversation, the texts tokenized in one call (the tokenizer's batch runs in parallel).

    Raises:
        ChatTemplateError: the template refused a conversation; its `conversation` attribute is that one's index.
    """
    rendered = []
    for k, messages in enumerate(conversations):
        try:
            rendered.append(assistant_spans(messages, tokenizer))
        except ChatTemplateError as e:
            e.conversation = k
            raise
    encodings = tokenizer([text for text, _, _ in rendered], add_special_tokens=False, return_offsets_mapping=True,
                          return_attention_mask=False, return_token_type_ids=False)
    stops = _stop_ids(tokenizer) if generation_marks else set()
    out = []
    for k, (messages, (_, spans, consistent)) in enumerate(zip(conversations, rendered)):
        ids = list(encodings["input_ids"][k])
        mask, crossing = mask_from_offsets(encodings["offset_mapping"][k], spans)
        if generation_marks:
            marked = tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True,
                                                   return_assistant_tokens_mask=True)  # rendered above: no raise
            if list(marked["input_ids"]) != ids:
                raise ValueError("the chat template's rendering changed between two calls")
            mask = _with_end_of_turn(np.asarray(marked["assistant_masks"], bool), ids, stops)
        out.append((ids, mask, {"prefix_mismatch": int(not consistent), "boundary_merges": crossing}))
    return out


def _stop_ids(tokenizer) -> set:
    """The tokens that end an answer: the EOS, and the first token of the template's end of turn
    (`end_of_turn_text`) where that is a special token (ChatML's `<|im_end|>`, Llama 3's `<|eot_id|>`)."""
    stops = {tokenizer.eos_token_id} - {None}
    text = end_of_turn_text(tokenizer)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    if ids and ids[0] in special:
        stops.add(ids[0])
    return stops


def _with_end_of_turn(mask: np.ndarray, ids: Sequence[int], stops: set) -> np.ndarray:
    """`mask` (from `{% generation %}` marks) with the token that ends a marked turn added when it is an end of turn
    (`_stop_ids`): a template whose block closes before it would otherwise never show the model where an answer
    ends."""
    if not stops or not mask.any():
        return mask
    for end in np.flatnonzero(mask[:-1] & ~mask[1:]) + 1:  # the first unmarked token after each marked run
        if ids[end] in stops:
            mask[end] = True
    return mask
