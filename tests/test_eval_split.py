"""Evaluation split: --val_set_size / --eval_data_path, scored with the training masking.

    bash scripts/test.sh tests/test_eval_split.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import train
from alpaca_lib.core.modeling import IGNORE_INDEX
from alpaca_lib.data.split import hold_out, select_examples
from alpaca_lib.data.tokenizing import tokenize_records
from conftest import REPO_ROOT, alpaca_records, original_preprocess, run_train_expecting_error, write_alpaca_subset


def test_hold_out_is_a_seeded_disjoint_split(tokenizer):
    records = alpaca_records()[:40]
    enc = tokenize_records(records, tokenizer)
    train_part, eval_part = hold_out(enc, 7, seed=0)
    assert (len(train_part), len(eval_part)) == (len(enc) - 7, 7)
    # Each example lands in exactly one part, unchanged.
    seen = [tuple(p.example(i)[0].tolist()) + (p.example(i)[1],) for p in (train_part, eval_part) for i in range(len(p))]
    everything = [tuple(enc.example(i)[0].tolist()) + (enc.example(i)[1],) for i in range(len(enc))]
    assert sorted(seen) == sorted(everything)
    assert eval_part.stats["tokens"] + train_part.stats["tokens"] == enc.stats["tokens"]
    assert eval_part.stats["loss_tokens"] + train_part.stats["loss_tokens"] == enc.stats["loss_tokens"]

    def held_out(seed):  # the examples a seeded permutation holds out, in dataset order
        return [enc.example(int(j))[0].tolist() for j in np.sort(np.random.default_rng(seed).permutation(len(enc))[:7])]

    assert [eval_part.example(i)[0].tolist() for i in range(7)] == held_out(0)
    again = hold_out(enc, 7, seed=0)[1]
    other = hold_out(enc, 7, seed=1)[1]
    assert np.array_equal(again.input_ids, eval_part.input_ids)
    # Another seed holds out other examples: exactly the ones its own permutation picks.
    assert held_out(1) != held_out(0)
    assert [other.example(i)[0].tolist() for i in range(7)] == held_out(1)
    for bad in (0, len(enc)):
        with pytest.raises(ValueError, match=f"--val_set_size {bad}: the training file has {len(enc)} usable examples"):
            hold_out(enc, bad, seed=0)


def test_select_examples_keeps_arrays_exact(tokenizer):
    records = alpaca_records()[:5]
    enc = tokenize_records(records, tokenizer)
    sub = select_examples(enc, [3, 0])
    assert sub.offsets.tolist() == [0, enc.offsets[4] - enc.offsets[3], enc.offsets[4] - enc.offsets[3] + enc.offsets[1]]
    assert sub.example(0)[0].tolist() == enc.example(3)[0].tolist() and sub.example(0)[1] == enc.example(3)[1]
    assert sub.example(1)[0].tolist() == enc.example(0)[0].tolist()
    assert sub.input_ids.dtype == enc.input_ids.dtype


def _train_args(model_dir, out, cache, extra):
    return [
        "--model_name_or_path", str(model_dir), "--data_path", str(REPO_ROOT / "alpaca_data.json"),
        "--output_dir", str(out), "--max_steps", "4", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "8", "--learning_rate", "3e-3", "--logging_steps", "1",
        "--save_strategy", "no", "--report_to", "none", "--model_max_length", "256",
        "--preprocessing_cache_dir", str(cache), "--seed", "0", "--disable_tqdm", "True", *extra,
    ]


def _padded_eval_loss(out_dir, eval_dataset):
    """Token-mean loss of the saved model on `eval_dataset` in one padded batch, as the original would score it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    tok = AutoTokenizer.from_pretrained(out_dir)
    batch = train.DataCollatorForSupervisedDataset(tok)([eval_dataset[i] for i in range(len(eval_dataset))])
    with torch.no_grad():
        return model(**batch).loss.item()


def _assert_masked_as_the_original(eval_dataset, records, tokenizer, held_out=None):
    """`eval_dataset` holds the examples of `records` (those with a response token left, the `held_out`
    positions among them) with the labels of the original preprocess(): each one's prompt masked."""
    ref_ids, ref_labels = original_preprocess(records, tokenizer)
    kept = [j for j, labels in enumerate(ref_labels) if (labels != IGNORE_INDEX).any()]
    picked = [kept[k] for k in held_out] if held_out is not None else kept
    assert len(eval_dataset) == len(picked)
    for i, j in enumerate(picked):
        example = eval_dataset[i]
        assert example["input_ids"].tolist() == ref_ids[j].tolist(), f"held-out example {i} (record {j})"
        assert example["labels"].tolist() == ref_labels[j].tolist(), f"held-out example {i} (record {j})"
        prompt = int((ref_labels[j] == IGNORE_INDEX).sum())
        assert prompt > 0 and (example["labels"][:prompt] == IGNORE_INDEX).all()


@pytest.mark.parametrize("packing", [False, True])
def test_val_set_size_reports_eval_loss_with_the_training_masking(tiny_llama_dir, tokenizer, tmp_path, packing):
    extra = ["--val_set_size", "8", "--evaluation_strategy", "steps", "--eval_steps", "2"]
    if packing:
        extra += ["--packing", "True"]
    trainer = train.train(_train_args(tiny_llama_dir, tmp_path / "out", tmp_path / "cache", extra))
    evals = [(h["step"], h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h]
    assert [step for step, _ in evals] == [2, 4]
    eval_dataset = trainer.eval_dataset
    assert len(eval_dataset) == 8
    train_examples = trainer.train_dataset.examples if packing else trainer.train_dataset
    assert len(train_examples) + 8 == 251  # 254 records, 3 dropped: prompt alone fills 256 tokens
    # The 8 that a permutation seeded by --seed (0) picks among the 251, in file order.
    _assert_masked_as_the_original(eval_dataset, alpaca_records(), tokenizer,
                                   np.sort(np.random.default_rng(0).permutation(251)[:8]))
    # The last evaluation scored the final (saved) model: one padded batch of the 8 held-out examples.
    assert evals[-1][1] == pytest.approx(_padded_eval_loss(tmp_path / "out", eval_dataset), abs=1e-4)


def test_eval_data_path_is_scored(tiny_llama_dir, tokenizer, tmp_path):
    eval_path = write_alpaca_subset(tmp_path / "eval.json", slice(-6, None))
    extra = ["--eval_data_path", str(eval_path), "--evaluation_strategy", "steps", "--eval_steps", "4"]
    trainer = train.train(_train_args(tiny_llama_dir, tmp_path / "out", tmp_path / "cache", extra))
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert len(evals) == 1 and len(trainer.eval_dataset) == 6 and len(trainer.train_dataset) == 251
    _assert_masked_as_the_original(trainer.eval_dataset, alpaca_records()[-6:], tokenizer)
    assert evals[0] == pytest.approx(_padded_eval_loss(tmp_path / "out", trainer.eval_dataset), abs=1e-4)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--val_set_size", "5", "--eval_data_path", "x.json"], "--eval_data_path and --val_set_size both given"),
        (["--evaluation_strategy", "steps"], "--evaluation_strategy steps needs evaluation data"),
        (["--val_set_size", "-2"], "--val_set_size must be a number of examples >= 0, got -2"),
    ],
)
def test_bad_eval_flags_exit_with_a_clear_error_before_loading_a_model(tmp_path, extra, message):
    stderr = run_train_expecting_error(tmp_path, ["--data_path", str(REPO_ROOT / "alpaca_data.json"), *extra])
    assert f"error: {message}" in stderr, stderr[-2000:]


def test_val_set_size_larger_than_the_data_is_refused(tiny_llama_dir, tmp_path):
    with pytest.raises(ValueError, match="--val_set_size 251: the training file has 251 usable examples"):
        train.train(_train_args(tiny_llama_dir, tmp_path / "out", tmp_path / "cache", ["--val_set_size", "251"]))
