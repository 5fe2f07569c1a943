"""Tiny LLaMA-architecture models and a LLaMA-style tokenizer, built offline in seconds.

    python -m alpaca_testkit.tiny --out_dir runs/tiny-llama

Tests and benchmarks use these instead of downloading a checkpoint (the demo uses SmolLM2-135M). The tokenizer
mimics LLaMA's: SentencePiece-style BPE ("▁" word prefix, byte fallback), `<s>` prepended, `<unk>`,
`<s>`, `</s>` as special tokens and no pad token, so the `[PAD]` resize path of training runs exactly
as it does for LLaMA-7B.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from alpaca_lib.core.prompt import PROMPT_DICT

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO_ROOT / "alpaca_data.json"


def _corpus_texts(records: Iterable[dict]) -> list[str]:
    texts = [PROMPT_DICT["prompt_input"], PROMPT_DICT["prompt_no_input"]]
    for r in records:
        texts.extend(str(r.get(k, "")) for k in ("instruction", "input", "output"))
    return texts


def build_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 2000):
    """Trains a LLaMA-style BPE tokenizer on `texts` (default: the bundled alpaca_data.json).

    Returns:
        A `PreTrainedTokenizerFast` with bos/eos/unk set and no pad token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if texts is None:
        with open(DEFAULT_CORPUS, encoding="utf-8") as f:
            texts = _corpus_texts(json.load(f))
    texts = list(texts)
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", *byte_tokens],
        show_progress=False,
        initial_alphabet=[],
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # The trainer registers every listed token as special; byte-fallback pieces must stay ordinary
    # tokens (LLaMA's are), or decoding with skip_special_tokens=True would drop non-ASCII text.
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in ("<unk>", "<s>", "</s>")]
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_llama_config(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, **kw):
    """A LlamaConfig of a few hundred thousand parameters."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 8 // 3 // 8 * 8 or 8,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=kw.pop("max_position_embeddings", 1024),
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
        **kw,
    )


def build_tiny_llama(out_dir: str | Path, vocab_size: int = 2000, seed: int = 0, **config_kw) -> Path:
    """Writes a randomly initialised tiny LLaMA and its tokenizer to `out_dir` (float32 safetensors).

    Args:
        out_dir: folder to create.
        vocab_size: BPE vocabulary size of the tokenizer (the model matches it).
        seed: torch seed for the weights.
        config_kw: passed to `tiny_llama_config` (hidden_size, num_layers, num_heads, ...).
    Returns:
        The folder, loadable with `AutoModelForCausalLM` / `AutoTokenizer`.
    """
    import torch
    from transformers import LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(vocab_size=vocab_size)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), **config_kw))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    import fire

    fire.Fire(build_tiny_llama)
