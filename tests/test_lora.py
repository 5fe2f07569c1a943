"""LoRA through peft: adapter in output_dir/adapter, merged full model in output_dir, clear QLoRA errors.

    bash scripts/test.sh tests/test_lora.py
"""

from __future__ import annotations

import pytest
import torch

import train
from alpaca_lib.core.errors import UsageError
from alpaca_lib.training.lora import ADAPTER_SUBDIR, parse_target_modules
from conftest import REPO_ROOT, run_train_expecting_error


def _lora_args(model_dir, out, cache, extra=()):
    return [
        "--model_name_or_path", str(model_dir), "--data_path", str(REPO_ROOT / "alpaca_data.json"),
        "--output_dir", str(out), "--max_steps", "12", "--per_device_train_batch_size", "4",
        "--learning_rate", "1e-2", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
        "--model_max_length", "256", "--preprocessing_cache_dir", str(cache), "--seed", "0", "--disable_tqdm", "True",
        "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0", *extra,
    ]


@pytest.fixture(scope="module")
def lora_run(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    trainer = train.train(_lora_args(tiny_llama_dir, root / "out", root / "cache"))
    return root / "out", trainer


def test_output_dir_holds_the_merged_model_and_the_adapter(lora_run, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    out, trainer = lora_run
    adapter = out / ADAPTER_SUBDIR
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict()
    assert merged.config.vocab_size == base["model.embed_tokens.weight"].shape[0] + 1  # [PAD] added, as usual
    assert merged.config.use_cache is True
    changed = []
    for name, tensor in merged.state_dict().items():
        if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
            tensor = tensor[:-1]
        if not torch.equal(tensor, base[name]):
            changed.append(name)
    # Only the adapted projections moved: q_proj and v_proj of both layers (the default targets).
    assert sorted(changed) == sorted(f"model.layers.{i}.self_attn.{p}_proj.weight" for i in (0, 1) for p in "qv")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # A random tiny model learns little through q/v alone, but it does learn.
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.02, losses


def test_merged_model_computes_what_base_plus_adapter_computes(lora_run, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = lora_run
    tok = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    base.resize_token_embeddings(len(tok), mean_resizing=False)
    with_adapter = PeftModel.from_pretrained(base, out / ADAPTER_SUBDIR).eval()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tok("### Instruction:\nName a color.\n\n### Response:", return_tensors="pt").input_ids
    with torch.no_grad():
        a = with_adapter(input_ids=ids).logits
        b = merged(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert with_adapter.peft_config["default"].r == 4 and with_adapter.peft_config["default"].lora_alpha == 8


def test_merged_model_goes_through_weight_diff(lora_run, tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    import weight_diff

    out, _ = lora_run
    weight_diff.make_diff(str(tiny_llama_dir), str(out), str(tmp_path / "diff"))
    weight_diff.recover(str(tiny_llama_dir), str(tmp_path / "diff"), str(tmp_path / "recovered"),
                        test_inference=False, check_integrity_naively=False)
    recovered = AutoModelForCausalLM.from_pretrained(tmp_path / "recovered").state_dict()
    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert recovered.keys() == merged.keys()
    for name in merged:
        assert torch.allclose(recovered[name], merged[name], atol=1e-6), name


def test_target_modules_and_their_errors(tiny_llama_dir, tmp_path):
    assert parse_target_modules(" q_proj, v_proj ,") == ["q_proj", "v_proj"]
    assert parse_target_modules("all-linear") == "all-linear"
    with pytest.raises(ValueError, match="--lora_target_modules is empty"):
        parse_target_modules(" , ")
    with pytest.raises(UsageError) as err:
        train.train(_lora_args(tiny_llama_dir, tmp_path / "out", tmp_path / "cache",
                               ["--lora_target_modules", "q_proj,query_key_value"]))
    assert "LlamaForCausalLM has no linear layer named query_key_value; its linear layers are " in str(err.value)
    assert "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" in str(err.value)


def test_all_linear_adapts_every_projection(tiny_llama_dir, tmp_path):
    trainer = train.train(_lora_args(tiny_llama_dir, tmp_path / "out", tmp_path / "cache",
                                     ["--lora_target_modules", "all-linear", "--max_steps", "1"]))
    config = trainer.model.peft_config["default"]
    adapted = {name.rsplit(".", 1)[-1] for name in config.target_modules}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # not lm_head


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lora_r", "8", "--load_in_4bit", "True"], "--load_in_4bit (QLoRA) needs a CUDA GPU (none is visible)"),
        (["--load_in_4bit", "True"], "--load_in_4bit trains LoRA adapters on a 4-bit base; give --lora_r too"),
        (["--lora_r", "8", "--fsdp", "full_shard auto_wrap"], "--lora_r with --fsdp/--deepspeed"),
        (["--lora_r", "-1"], "--lora_r must be 0 (full fine-tuning) or a positive rank, got -1"),
    ],
)
def test_bad_lora_flags_exit_with_a_clear_error_before_loading_a_model(tmp_path, extra, message):
    if torch.cuda.is_available() and "CUDA GPU" in message:
        pytest.skip("a GPU is present here")
    stderr = run_train_expecting_error(tmp_path, ["--data_path", str(REPO_ROOT / "alpaca_data.json"), *extra])
    assert f"error: {message}" in stderr, stderr[-2000:]
