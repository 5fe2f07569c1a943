"""Padding-free packing and length grouping: row building, equivalence with the padded path, training.

    bash scripts/test.sh tests/test_packing.py
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import train
from alpaca_lib.core.modeling import IGNORE_INDEX
from alpaca_lib.data.packing import DataCollatorForPackedRows, PackedDataset, pack_rows, supervised_positions
from alpaca_lib.training.packed_attention import PACKED_SDPA, use_packed_sdpa
from alpaca_lib.training.packed_model import prepare_model_for_packing, supports_supervised_logits
from alpaca_testkit.kernel_calls import count_kernel_forwards
from conftest import REPO_ROOT, run_train_expecting_error, write_alpaca_subset


def test_pack_rows_is_best_fit_decreasing_and_exact():
    lengths = [5, 3, 8, 2, 7, 1, 4]
    rows = pack_rows(lengths, 10)
    # 8 opens row 0, 7 row 1, 5 row 2; 4 fits row 2 best (5 free), 3 row 1 (3 free), 2 row 0 (2 free),
    # and 1 goes to row 2, the tightest of the rows with room left (1 free).
    assert rows == [[2, 3], [4, 1], [0, 6, 5]]
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert [sum(lengths[i] for i in r) for r in rows] == [10, 10, 10]
    assert pack_rows([4, 4, 4], 4) == [[0], [1], [2]]  # ties keep dataset order
    with pytest.raises(ValueError, match="example 1 has 11 tokens, more than a packed row holds \\(10\\)"):
        pack_rows([3, 11], 10)


def test_pack_rows_fills_rows_on_realistic_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 300, size=2000)
    rows = pack_rows(lengths, 512)
    assert sorted(i for r in rows for i in r) == list(range(2000))
    sums = np.array([lengths[r].sum() for r in rows])
    assert sums.max() <= 512
    # Within one row of the lower bound: best-fit decreasing leaves almost no room unused.
    assert len(rows) <= int(np.ceil(lengths.sum() / 512)) + 1


@pytest.fixture()
def dataset(tokenizer, tmp_path):
    return train.SupervisedDataset(str(write_alpaca_subset(tmp_path / "ten.json", slice(10))), tokenizer)


@pytest.fixture(params=["sdpa", PACKED_SDPA])
def model(tiny_llama_dir, tokenizer, request):
    """The model as training runs it: transformers' masked sdpa, or sdpa per example (train.py's CPU choice)."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    m.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    prepare_model_for_packing(m)
    if request.param == PACKED_SDPA:
        assert use_packed_sdpa(m) == "sdpa"
        prepare_model_for_packing(m)
    return m.eval()


def test_packed_rows_concatenate_examples_with_restarting_positions(dataset, tokenizer):
    packed = PackedDataset(dataset, dataset.lengths, 400)
    assert sorted(i for r in packed.rows for i in r) == list(range(len(dataset)))
    for row, item in zip(packed.rows, packed):
        examples = [dataset[i] for i in row]
        assert torch.equal(item["input_ids"], torch.cat([x["input_ids"] for x in examples]))
        assert torch.equal(item["position_ids"], torch.cat([torch.arange(len(x["input_ids"])) for x in examples]))
        # Same labels as the padded path, except that each example's first label is -100 (it already is:
        # the prompt is masked), so no label is predicted from the previous example's last token.
        expected = torch.cat([x["labels"] for x in examples])
        assert torch.equal(item["labels"], expected)
        assert all(x["labels"][0].item() == IGNORE_INDEX for x in examples)
    assert packed.fill == pytest.approx(int(dataset.lengths.sum()) / (len(packed) * 400))

    batch = DataCollatorForPackedRows(tokenizer.pad_token_id)([packed[0], packed[1]])
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention mask: it would hide the packing
    short = 0 if len(packed[0]["input_ids"]) < len(packed[1]["input_ids"]) else 1
    k = len(packed[short]["input_ids"])
    width = batch["input_ids"].shape[1]
    assert k < width  # the shorter row is padded, so the checks below see padding
    assert (batch["input_ids"][short, k:] == tokenizer.pad_token_id).all()
    assert (batch["labels"][short, k:] == IGNORE_INDEX).all()
    assert batch["position_ids"][short, k:].tolist() == list(range(width - k))


def test_each_packed_example_starts_with_a_masked_label():
    """Examples whose labels are their own input ids (no prompt mask): packed, each example's first label
    becomes -100, so no token is predicted from the previous example's last one; the rest are kept."""
    examples = [{"input_ids": torch.tensor(ids), "labels": torch.tensor(ids)}
                for ids in ([11, 12, 13], [21, 22], [31, 32, 33, 34], [41])]
    packed = PackedDataset(examples, [3, 2, 4, 1], 10)
    assert packed.rows == [[2, 0, 1, 3]]
    row = packed[0]
    assert row["input_ids"].tolist() == [31, 32, 33, 34, 11, 12, 13, 21, 22, 41]
    assert row["labels"].tolist() == [-100, 32, 33, 34, -100, 12, 13, -100, 22, -100]
    assert row["position_ids"].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 0]


def _per_example_losses(logits, labels, segments):
    """Sum of token losses and number of loss-bearing tokens for each segment id (the causal shift applied)."""
    shift_logits, shift_labels, seg = logits[:, :-1], labels[:, 1:], segments[:, 1:]
    token_loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]).float(), shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="none",
    ).reshape(shift_labels.shape)
    out = {}
    for s in seg.unique().tolist():
        if s < 0:
            continue
        sel = (seg == s) & (shift_labels != IGNORE_INDEX)
        out[s] = (token_loss[sel].sum().item(), int(sel.sum()))
    return out


def test_packed_loss_equals_padded_loss_per_example(dataset, tokenizer, model):
    n = len(dataset)
    padded = train.DataCollatorForSupervisedDataset(tokenizer)([dataset[i] for i in range(n)])
    # Segment id of each padded position: its row's example index, -1 on padding.
    seg_padded = torch.where(padded["attention_mask"], torch.arange(n)[:, None], -1)
    packed_ds = PackedDataset(dataset, dataset.lengths, 400)
    assert len(packed_ds) < n  # several examples share a row
    packed = DataCollatorForPackedRows(tokenizer.pad_token_id)(list(packed_ds))
    seg_packed = torch.full_like(packed["input_ids"], -1)
    for r, row in enumerate(packed_ds.rows):
        offset = 0
        for i in row:
            k = len(dataset[i]["input_ids"])
            seg_packed[r, offset:offset + k] = i
            offset += k
    impl = model.config._attn_implementation
    with torch.no_grad():
        model.set_attn_implementation("sdpa")  # the reference: the original padded path, as it always runs
        out_padded = model(**padded)
        model.set_attn_implementation(impl)
        out_packed = model(**packed)
    ref = _per_example_losses(out_padded.logits, padded["labels"], seg_padded)
    got = _per_example_losses(out_packed.logits, packed["labels"], seg_packed)
    assert sorted(got) == sorted(ref) == list(range(n))
    for i in range(n):
        assert got[i][1] == ref[i][1], f"example {i}: loss-bearing tokens differ"
        assert got[i][0] / got[i][1] == pytest.approx(ref[i][0] / ref[i][1], abs=1e-5), f"example {i}"
    # Same tokens in the loss overall: the batch losses (token means) agree too.
    assert sum(c for _, c in got.values()) == int((padded["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert out_packed.loss.item() == pytest.approx(out_padded.loss.item(), abs=1e-5)


def test_no_token_attends_across_an_example_boundary(dataset, tokenizer, model):
    a, b = dataset[0], dataset[1]
    row = PackedDataset([a, b], [len(a["input_ids"]), len(b["input_ids"])], 1000)[0]
    assert len(row["input_ids"]) == len(a["input_ids"]) + len(b["input_ids"])
    changed = dict(row)
    changed["input_ids"] = row["input_ids"].clone()
    k = len(a["input_ids"])
    changed["input_ids"][1:k] = (changed["input_ids"][1:k] + 7) % 1000  # rewrite example A, keep its BOS
    collate = DataCollatorForPackedRows(tokenizer.pad_token_id)
    with torch.no_grad():
        before = model(**collate([row])).logits[0]
        after = model(**collate([changed])).logits[0]
        # The same row seen as one sequence (positions running on): B does see A, so the check can fail.
        # (With per-example sdpa the position ids alone mark the examples, so this is the same control.)
        joined = collate([row])
        joined["position_ids"] = torch.arange(len(row["input_ids"]))[None]
        leaky_before = model(**joined).logits[0]
        joined["input_ids"] = collate([changed])["input_ids"]
        leaky_after = model(**joined).logits[0]
    assert (after[:k] - before[:k]).abs().max() > 1e-2  # A itself changed
    assert torch.equal(after[k:], before[k:])  # B's logits are bit-for-bit the same
    assert (leaky_after[k:] - leaky_before[k:]).abs().max() > 1e-2


def test_supervised_positions_select_the_next_label_of_each_position():
    labels = torch.tensor([[-100, -100, 5, 6, -100, -100, 7], [-100, 8, 9, -100, -100, -100, -100]])
    out = supervised_positions(labels)
    # Position t predicts label t+1: row 0 keeps 1, 2 (labels 5, 6) and 5 (label 7); row 1 keeps 0, 1.
    assert out["logits_to_keep"].tolist() == [
        [False, True, True, False, False, True, False], [True, True, False, False, False, False, False]]
    assert out["shift_labels"].tolist() == [5, 6, 7, 8, 9]


def test_supervised_logits_give_the_same_loss_and_gradients(dataset, tokenizer, model):
    rows = list(PackedDataset(dataset, dataset.lengths, 400))
    full = DataCollatorForPackedRows(tokenizer.pad_token_id)(rows)
    kept = DataCollatorForPackedRows(tokenizer.pad_token_id, supervised_logits_only=True)(rows)
    assert set(kept) == {"input_ids", "labels", "position_ids", "logits_to_keep", "shift_labels"}
    loss_tokens = int((full["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert int(kept["logits_to_keep"].sum()) == len(kept["shift_labels"]) == loss_tokens
    assert loss_tokens < 0.6 * full["input_ids"].numel()  # most positions are prompt (or padding)
    model.train()
    grads = []
    for batch in (full, kept):
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        grads.append((out.loss.item(), out.logits.shape, [p.grad.clone() for p in model.parameters()]))
    (loss_full, shape_full, g_full), (loss_kept, shape_kept, g_kept) = grads
    assert shape_full == (*full["input_ids"].shape, len(tokenizer))
    assert shape_kept == (loss_tokens, len(tokenizer))  # the LM head ran on the loss-bearing positions only
    assert loss_kept == pytest.approx(loss_full, rel=1e-6)
    for a, b in zip(g_full, g_kept):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    assert supports_supervised_logits(model) is True


def test_supervised_logits_are_not_used_where_the_model_cannot_take_them(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    inner = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)

    class NoKeepArgument(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids=None, labels=None, position_ids=None, **kwargs):
            return self.inner(input_ids=input_ids, labels=labels, position_ids=position_ids)

    class IgnoresKeep(NoKeepArgument):
        def forward(self, input_ids=None, labels=None, position_ids=None, logits_to_keep=0, shift_labels=None):
            return self.inner(input_ids=input_ids, labels=labels, position_ids=position_ids)

    assert supports_supervised_logits(NoKeepArgument()) is False
    assert supports_supervised_logits(IgnoresKeep()) is False  # it returned every position's logits
    assert supports_supervised_logits(IgnoresKeep(), probe=False) is True  # the signature alone says yes
    assert supports_supervised_logits(inner) is True


def test_model_that_ignores_packed_positions_is_refused():
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    opt = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                                   num_attention_heads=2, word_embed_proj_dim=16, max_position_embeddings=64))
    with pytest.raises(ValueError, match="OPTForCausalLM with attn_implementation='sdpa' lets tokens attend across"):
        prepare_model_for_packing(opt)
    assert opt.config.use_cache is True  # left as it was


def _run(tiny_llama_dir, tmp_path, extra, max_length=256):
    return train.train([
        "--model_name_or_path", str(tiny_llama_dir), "--data_path", str(REPO_ROOT / "alpaca_data.json"),
        "--output_dir", str(tmp_path / "out"), "--num_train_epochs", "1", "--learning_rate", "3e-3",
        "--logging_steps", "1", "--save_strategy", "no", "--evaluation_strategy", "no", "--report_to", "none",
        "--model_max_length", str(max_length), "--preprocessing_cache_dir", str(tmp_path / "cache"), "--seed", "0",
        "--disable_tqdm", "True", *extra,
    ])


def test_packed_training_sees_every_example_once_per_epoch_and_learns(tiny_llama_dir, tmp_path, caplog):
    from transformers import AutoModelForCausalLM

    caplog.set_level(logging.INFO)
    trainer = _run(tiny_llama_dir, tmp_path, ["--packing", "True", "--per_device_train_batch_size", "2"], 512)
    packed = trainer.train_dataset
    assert isinstance(packed, PackedDataset)
    examples = packed.examples
    assert len(examples) == 254  # at 512 tokens no record is dropped
    assert sorted(i for r in packed.rows for i in r) == list(range(len(examples)))
    assert packed.row_lengths.max() <= 512 and packed.fill > 0.9
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == trainer.state.max_steps == -(-len(packed) // 2)
    assert sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches) == examples.encoded.stats["loss_tokens"]
    assert all("attention_mask" not in b for b in batches)
    for b in batches:  # the LM head gets the loss-bearing positions only
        assert torch.equal(b["logits_to_keep"], supervised_positions(b["labels"])["logits_to_keep"])
        assert torch.equal(b["shift_labels"], b["labels"][:, 1:][b["labels"][:, 1:] != IGNORE_INDEX])
    assert "packing: the LM head runs on the loss-bearing positions only" in caplog.text
    assert caplog.text.count("packed attention: ") == 1
    assert "packed attention: per_example (cpu: sdpa once per example)" in caplog.text
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0] - 0.5, losses
    assert (f"packing: 254 examples into {len(packed)} rows of up to 512 tokens ({254 / len(packed):.1f} examples "
            f"and {100 * packed.fill:.1f}% of the capacity used per row); a batch is 2 row(s)") in caplog.text
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert saved.config.use_cache is True  # switched off for training only
    assert trainer.model.config._attn_implementation == "sdpa"  # per-example sdpa during training only (CPU)


def test_group_by_length_batches_hold_less_padding(tiny_llama_dir, tmp_path):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    trainer = _run(tiny_llama_dir, tmp_path, ["--group_by_length", "True", "--per_device_train_batch_size", "4",
                                              "--max_steps", "2"])
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    grouped = list(trainer.get_train_dataloader())
    lengths = trainer.train_dataset.lengths
    # The same examples in dataset order, 4 at a time, as an unsorted baseline.
    plain = [4 * lengths[i:i + 4].max() - lengths[i:i + 4].sum() for i in range(0, len(lengths), 4)]
    grouped_pad = [int((b["attention_mask"] == 0).sum()) for b in grouped]
    assert sum(len(b["input_ids"]) for b in grouped) == len(lengths)
    assert sum(grouped_pad) < 0.5 * sum(plain), (sum(grouped_pad), sum(plain))


def test_packing_and_group_by_length_conflict():
    import transformers

    parser = transformers.HfArgumentParser((train.ModelArguments, train.DataArguments, train.TrainingArguments))
    with pytest.raises(ValueError, match="--packing True and --group_by_length True"):
        parser.parse_args_into_dataclasses(args=["--output_dir", "o", "--packing", "True", "--group_by_length", "True"])


# ----------------------------------------------------------------------------------------------------
# The packed attention: chosen by device with a probe (stubbed here: no GPU), and the kernel path on CPU.

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def _torch_minor() -> str:
    from packaging.version import Version

    v = Version(torch.__version__)
    return f"torch {v.major}.{v.minor}"


@pytest.fixture()
def fake_flash(monkeypatch):
    """An installed flash-attn (version 9.9.9) whose varlen function is `_reference_varlen`."""
    import types

    module = types.ModuleType("flash_attn")
    module.__version__ = "9.9.9"
    module.flash_attn_varlen_func = lambda q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal: (
        _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale=softmax_scale, window_size=(-1, 0 if causal else -1)))
    monkeypatch.setitem(__import__("sys").modules, "flash_attn", module)
    return module


def _stub_probe(results: dict, calls: list):
    def probe(kernel, device):
        calls.append((kernel, device.type))
        return results[kernel]
    return probe


@pytest.mark.parametrize("requested, device, half, results, expected, probed", [
    ("auto", CPU, True, {}, ("per_example", "cpu: sdpa once per example", False), []),
    ("auto", torch.device("mps"), True, {},
     ("sdpa", "mps: no variable-length kernel; sdpa over a block-diagonal mask", False), []),
    ("auto", CUDA, False, {},
     ("sdpa", "float32 training: the variable-length kernels take bf16/fp16 only", False), []),
    ("auto", CUDA, True, {"varlen": ""}, ("varlen", "{torch}, probe ok", False), ["varlen"]),
    ("auto", CUDA, True, {"varlen": "RuntimeError: no kernel image", "flash": ""},
     ("flash", "flash-attn 9.9.9, probe ok; varlen not used: RuntimeError: no kernel image", False),
     ["varlen", "flash"]),
    ("auto", CUDA, True, {"varlen": "differs", "flash": "flash-attn does not import"},
     ("sdpa", "block-diagonal mask; varlen not used: differs; flash not used: flash-attn does not import", False),
     ["varlen", "flash"]),
    ("varlen", CUDA, True, {"varlen": ""}, ("varlen", "{torch}, probe ok, --packed_attention varlen", True), ["varlen"]),
    ("flash", CUDA, True, {"flash": ""}, ("flash", "flash-attn 9.9.9, probe ok, --packed_attention flash", True),
     ["flash"]),
    ("sdpa", CUDA, True, {}, ("sdpa", "--packed_attention sdpa", True), []),
    ("per_example", CUDA, True, {}, ("per_example", "--packed_attention per_example", True), []),
    ("sdpa", CPU, False, {}, ("sdpa", "--packed_attention sdpa", True), []),
])
def test_packed_attention_choice(requested, device, half, results, expected, probed, fake_flash, caplog):
    from alpaca_lib.training.packed_attention import choose_packed_attention

    caplog.set_level(logging.INFO, logger="alpaca_lib.training.packed_attention")
    calls = []
    choice = choose_packed_attention(requested, device, half, probe=_stub_probe(results, calls))
    name, reason, forced = expected
    reason = reason.format(torch=_torch_minor())
    assert (choice.name, choice.reason, choice.forced) == (name, reason, forced)
    assert calls == [(k, device.type) for k in probed]  # probes run only where a kernel may be used
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("packed attention:")]
    assert lines == [f"packed attention: {name} ({reason})"]  # once, with the reason


@pytest.mark.parametrize("requested, device, half, results, message", [
    ("varlen", CPU, True, {}, "--packed_attention varlen needs a CUDA GPU; this run is on cpu. "
                               "--packed_attention auto picks what runs here (or name sdpa)."),
    ("flash", torch.device("mps"), True, {}, "--packed_attention flash needs a CUDA GPU; this run is on mps."),
    ("flash", CUDA, False, {}, "--packed_attention flash runs in bf16/fp16 only; add --bf16 True (or --fp16 True), "
                                "or --packed_attention auto picks what runs here (or name sdpa)."),
    ("varlen", CUDA, True, {"varlen": "differs from per-example sdpa: relative errors 1.0e+00"},
     "--packed_attention varlen cannot run on this GPU: differs from per-example sdpa: relative errors 1.0e+00. "),
    ("flash", CUDA, True, {"flash": "flash-attn does not import (ModuleNotFoundError: x); pip install flash-attn"},
     "--packed_attention flash cannot run on this GPU: flash-attn does not import (ModuleNotFoundError: x); "
     "pip install flash-attn. "),
    ("fastest", CUDA, True, {}, "--packed_attention 'fastest' is not one of: auto, varlen, flash, sdpa, per_example."),
])
def test_packed_attention_that_cannot_run_here_is_refused(requested, device, half, results, message, caplog):
    from alpaca_lib.core.errors import UsageError
    from alpaca_lib.training.packed_attention import choose_packed_attention

    caplog.set_level(logging.INFO, logger="alpaca_lib.training.packed_attention")
    with pytest.raises(UsageError) as e:
        choose_packed_attention(requested, device, half, probe=_stub_probe(results, []))
    assert message in str(e.value)
    assert "packed attention:" not in caplog.text


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale=None, window_size=(-1, -1), **kwargs):
    """torch's varlen_attn restated on CPU: causal sdpa over each [start, end) of the cumulative boundaries."""
    assert window_size == (-1, 0) and cu_q is cu_k and cu_q.dtype == torch.int32
    bounds = cu_q.tolist()
    assert bounds[0] == 0 and bounds[-1] == q.shape[0] and max_q == max_k == max(np.diff(bounds))
    parts = [torch.nn.functional.scaled_dot_product_attention(
        *(t[s:e].transpose(0, 1) for t in (q, k, v)), is_causal=True, scale=scale, enable_gqa=True).transpose(0, 1)
        for s, e in zip(bounds[:-1], bounds[1:])]
    return torch.cat(parts)


def _leaky_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale=None, **kwargs):
    """A kernel with a wrong mask: causal over all the rows as one sequence."""
    return torch.nn.functional.scaled_dot_product_attention(
        *(t.transpose(0, 1) for t in (q, k, v)), is_causal=True, scale=scale, enable_gqa=True).transpose(0, 1)


def _failing_varlen(*args, **kwargs):
    raise RuntimeError("FlashAttention only supports Ampere GPUs or newer.\nmore detail")


@pytest.fixture()
def kernel_forwards():
    """{kernel: attention calls of model forwards that ran it}, counted by the test itself (alpaca_testkit.kernel_calls)."""
    with count_kernel_forwards() as counts:
        yield counts


def test_kernel_probe_passes_a_right_kernel_and_names_what_is_wrong(monkeypatch, fake_flash, kernel_forwards):
    from torch.nn.attention import varlen

    from alpaca_lib.training.packed_attention import probe_packed_kernel

    def probe(kernel):  # the GPU probe's layout, scaled down for CPU
        return probe_packed_kernel(kernel, CPU, rows=((5, 20, 3, 12), (30, 6, 4)), head_dim=16)

    monkeypatch.setattr(varlen, "varlen_attn", _reference_varlen)
    assert probe("varlen") == ""  # bf16 autocast on CPU: the same casts a GPU run makes
    assert probe("flash") == ""
    assert kernel_forwards == {"varlen": 0, "flash": 0}  # the probe's own calls are not counted
    monkeypatch.setattr(varlen, "varlen_attn", _leaky_varlen)
    assert probe("varlen").startswith("differs from per-example sdpa: relative errors ")
    monkeypatch.setattr(varlen, "varlen_attn", _failing_varlen)
    assert probe("varlen") == "RuntimeError: FlashAttention only supports Ampere GPUs or newer."
    monkeypatch.setitem(__import__("sys").modules, "flash_attn", None)
    assert probe("flash") == ("flash-attn does not import (ModuleNotFoundError: import of flash_attn "
                                                 "halted; None in sys.modules); pip install flash-attn")


def test_kernel_probe_fails_when_the_kernel_was_never_called(monkeypatch):
    """A device whose autocast does not give bf16 leaves the inputs in float32: the probe's call then goes through
    per-example sdpa, which matches sdpa by construction, and the probe must not take that for the kernel."""
    from torch.nn.attention import varlen

    from alpaca_lib.training.packed_attention import probe_packed_kernel

    calls = []
    monkeypatch.setattr(varlen, "varlen_attn", lambda *a, **k: calls.append(1) or _reference_varlen(*a, **k))
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *args: False)
    assert probe_packed_kernel("varlen", CPU, rows=((5, 20, 3, 12), (30, 6, 4)), head_dim=16) == (
        "the kernel was not called (fell back to per-example sdpa)")
    assert calls == []


@pytest.mark.parametrize("kernel", ["varlen", "flash"])
def test_kernel_attention_gives_the_masked_sdpa_loss_and_gradients(kernel, dataset, tokenizer, tiny_llama_dir,
                                                                   monkeypatch, fake_flash, kernel_forwards):
    """Two packed rows (one padded) through the kernel path, all rows in one call, against masked sdpa."""
    from torch.nn.attention import varlen
    from transformers import AutoModelForCausalLM

    from alpaca_lib.training.packed_attention import PackedAttention
    from alpaca_lib.training.packed_model import packing_mode

    monkeypatch.setattr(varlen, "varlen_attn", _reference_varlen)
    m = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    m.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    rows = list(PackedDataset(dataset, dataset.lengths, 400))
    batch = DataCollatorForPackedRows(tokenizer.pad_token_id)(rows[:2])
    assert (batch["position_ids"][:, 1:] == 0).sum() >= 3  # several examples, and a padding block, in the rows
    results = []
    for attention in (None, PackedAttention(kernel, "test", forced=True)):
        with packing_mode(m, attention=attention):
            registered = {"varlen": "packed_torch_varlen", "flash": "packed_fa_varlen"}[kernel]
            assert m.config._attn_implementation == ("sdpa" if attention is None else registered)
            m.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = m(**batch).loss
            loss.backward()
            results.append((loss.item(), [p.grad.clone() for p in m.parameters()]))
    assert m.config._attn_implementation == "sdpa"  # restored when the block ended
    # One call per layer: the start-up probes run in float32 (per-example sdpa), the training forward in bf16.
    assert kernel_forwards[kernel] == m.config.num_hidden_layers
    (loss_sdpa, g_sdpa), (loss_kernel, g_kernel) = results
    assert loss_kernel == pytest.approx(loss_sdpa, rel=2e-2)  # bf16 both ways, summed in another order
    for a, b in zip(g_sdpa, g_kernel):
        assert ((b - a).norm() / a.norm().clamp_min(1e-12)).item() < 5e-2


def test_forced_packed_attention_needs_a_model_on_sdpa(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from alpaca_lib.core.errors import UsageError
    from alpaca_lib.training.packed_attention import PackedAttention, use_packed_attention

    m = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager")
    assert use_packed_attention(m, PackedAttention("per_example", "auto")) is None  # auto keeps eager
    assert m.config._attn_implementation == "eager"
    with pytest.raises(UsageError, match=r"--packed_attention varlen: LlamaForCausalLM runs "
                                         r"attn_implementation='eager', and the packed attentions replace sdpa only"):
        use_packed_attention(m, PackedAttention("varlen", "forced", forced=True))


def test_cpu_packed_attentions_train_to_the_same_losses(tiny_llama_dir, tmp_path, caplog):
    """train.py end to end: per-example sdpa (CPU's auto choice) and masked sdpa, same seed, same losses."""
    caplog.set_level(logging.INFO)
    losses = {}
    for attention in ("per_example", "sdpa"):
        trainer = _run(tiny_llama_dir, tmp_path / attention, ["--packing", "True", "--per_device_train_batch_size", "2",
                                                              "--max_steps", "4", "--packed_attention", attention])
        losses[attention] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        assert f"packed attention: {attention} (--packed_attention {attention})" in caplog.text
        assert trainer.model.config._attn_implementation == "sdpa"
    assert len(losses["sdpa"]) == 4
    assert losses["per_example"] == pytest.approx(losses["sdpa"], rel=1e-4)
    assert losses["sdpa"][-1] < losses["sdpa"][0]  # it trained


def test_forced_kernel_on_cpu_stops_before_the_model_loads(tmp_path):
    data = write_alpaca_subset(tmp_path / "data.json", slice(4))
    stderr = run_train_expecting_error(tmp_path, ["--data_path", str(data), "--packing", "True",
                                                  "--packed_attention", "varlen"])
    assert stderr.strip().splitlines()[-1] == (
        "error: --packed_attention varlen needs a CUDA GPU; this run is on cpu. --packed_attention auto picks what "
        "runs here (or name sdpa).")


@pytest.mark.parametrize("args, message", [
    (["--packing", "True", "--packed_attention", "flash"],
     "--packed_attention flash needs a CUDA GPU; this run is on cpu. --packed_attention auto picks what runs here "
     "(or name sdpa)."),
    (["--packing", "True", "--packed_attention", "fastest"],
     "--packed_attention 'fastest' is not one of: auto, varlen, flash, sdpa, per_example."),
    (["--packed_attention", "sdpa"],
     "--packed_attention sdpa applies to packed rows only; add --packing True, or drop --packed_attention."),
])
def test_packed_attention_mistakes_stop_before_the_model_loads(tmp_path, args, message):
    from alpaca_lib.core.errors import UsageError

    model = tmp_path / "unloadable-model"  # any attempt to load it fails otherwise
    model.mkdir()
    (model / "config.json").write_text("not a config")
    data = write_alpaca_subset(tmp_path / "data.json", slice(4))
    with pytest.raises(UsageError) as e:
        train.train(["--model_name_or_path", str(model), "--data_path", str(data), "--output_dir",
                     str(tmp_path / "out"), *args])
    assert str(e.value) == message
    assert not (tmp_path / "out").exists()
