"""A local model as the judge, in-process: the probability of each verdict letter, never an unreadable reply.

    python eval_model.py judge --model_outputs M.json --reference_outputs R.json \
        --judge_model_dir runs/judge-model [--judge_gguf_file model.gguf] --output_dir runs/judge/m_vs_r

The judge's prompt (`alpaca_lib.evaluation.judges.JUDGE_PROMPT`) goes through the model's chat template (as a user
message, the assistant's turn opened) when its tokenizer has one, else as plain text. One forward pass
per prompt gives the next-token distribution at the answer position; the verdict is the probability of
"a" against "b" (each letter's mass summed over the tokens that spell it alone: "a", "A", " a", " A"),
normalised over the two. So every order of every pair gets a continuous preference, as AlpacaEval 2's
weighted judge gets from the logprobs of an API, with no text to parse: a server that drops `logprobs`
(`transformers serve` does) cannot give that.
"""

from __future__ import annotations

from typing import Optional, Sequence

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.weightfiles import check_local_weights
from alpaca_lib.evaluation.outputs import LocalModel

VARIANTS = {"a": ("a", "A", " a", " A"), "b": ("b", "B", " b", " B")}


def letter_ids(tokenizer, where: str = "the judge's tokenizer") -> dict[str, list[int]]:
    """The token ids that spell each verdict letter alone (`VARIANTS`), a list per letter.

    Raises:
        UsageError: `where` (the flag and folder) has no single token for a or for b, or the same for both.
    """
    ids = {}
    for letter, spellings in VARIANTS.items():
        found = set()
        for s in spellings:
            pieces = tokenizer.encode(s, add_special_tokens=False)
            if len(pieces) == 1:  # a spelling that is one token on its own
                found.add(pieces[0])
        ids[letter] = sorted(found)
    if not ids["a"] or not ids["b"] or set(ids["a"]) & set(ids["b"]):
        raise UsageError(
            f"{where}: its tokenizer has no single token for the letter a and another for b (tried "
            f"{', '.join(repr(s) for s in VARIANTS['a'] + VARIANTS['b'])}), so the in-process judge cannot read a "
            "verdict from its next-token probabilities. Fix: pass another model as --judge_model_dir, or serve "
            "this one and pass --judge_model with --base_url.")
    return ids


def check_judge_tokenizer(model_dir: str, gguf_file: Optional[str] = None, flag: str = "--judge_model_dir") -> None:
    """Loads only the judge's tokenizer (under a second) and refuses one without the verdict letters, so that
    mistake costs no model load. Raises UsageError as `letter_ids`, and WeightFileError for a damaged weight
    file in `model_dir` (checked here too, before anything is written, not only when the model loads)."""
    from transformers import AutoTokenizer  # deferred: a judge on a server never needs transformers

    check_local_weights(model_dir, flag, gguf_file)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    letter_ids(AutoTokenizer.from_pretrained(model_dir, **extra), f"{flag} {model_dir}")


class LocalJudge:
    """A causal LM that scores judge prompts in batches (left padding, one forward pass each batch).

    Args:
        local: a loaded `LocalModel` (model and tokenizer).
    """

    def __init__(self, local: LocalModel):
        self.local = local
        self.letter_ids = letter_ids(local.tokenizer)
        self.forward_passes = 0  # counted for the tests and the summary

    @classmethod
    def load(cls, model_dir: str, gguf_file: Optional[str] = None, dtype: str = "auto") -> "LocalJudge":
        return cls(LocalModel.load(model_dir, gguf_file, dtype, flag="--judge_dtype", dir_flag="--judge_model_dir"))

    def prompt_ids(self, prompt: str) -> list[int]:
        """The tokens the model reads before its verdict."""
        tok = self.local.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False)
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        return tok.encode(prompt + "\n\nAnswer:", add_special_tokens=True)

    def p_first(self, prompts: Sequence[str], batch_size: int = 8) -> list[float]:
        """P("a") / (P("a") + P("b")) at the answer position of each prompt."""
        import torch  # deferred: a judge on a server imports this module and never needs torch

        rows = [self.prompt_ids(p) for p in prompts]
        out: list[float] = [0.0] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths share a batch
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = self.local._left_padded([rows[i] for i in idx])
            # Positions counted from each row's first real token, as generate() counts them under left padding.
            positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = self.local.model(**batch, position_ids=positions).logits[:, -1, :].float()
            self.forward_passes += 1
            probs = torch.softmax(logits, dim=-1)
            p_a = probs[:, self.letter_ids["a"]].sum(-1)
            p_b = probs[:, self.letter_ids["b"]].sum(-1)
            for k, i in enumerate(idx):
                out[i] = float(p_a[k] / (p_a[k] + p_b[k]))
        return out
