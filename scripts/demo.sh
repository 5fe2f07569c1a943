#!/usr/bin/env bash
# The embedded default: fine-tune a small LLaMA on the bundled alpaca_data.json on CPU, offline, in a
# few minutes, then let it answer instructions through the Alpaca template.
#   bash scripts/demo.sh            (sets up .venv on first use; output in runs/demo)
# The base is a 4-layer LLaMA (about 2.5M parameters) built from a config, with a LLaMA-style tokenizer
# trained on the bundled data: nothing is downloaded. EPOCHS overrides the number of epochs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python

if [ ! -f runs/demo-base/config.json ]; then
  echo "== building the base model (runs/demo-base)"
  $PY -m alpaca_lib.tiny --out_dir runs/demo-base --vocab_size 2000 --hidden_size 192 --num_layers 4 --num_heads 6 >/dev/null
fi

echo "== fine-tuning on alpaca_data.json (runs/demo)"
$PY train.py \
  --model_name_or_path runs/demo-base \
  --data_path ./alpaca_data.json \
  --output_dir runs/demo \
  --num_train_epochs "${EPOCHS:-10}" \
  --per_device_train_batch_size 8 \
  --gradient_accumulation_steps 1 \
  --evaluation_strategy "no" \
  --save_strategy "no" \
  --learning_rate 5e-3 \
  --weight_decay 0. \
  --warmup_ratio 0.03 \
  --lr_scheduler_type "cosine" \
  --logging_steps 32 \
  --model_max_length 512 \
  --report_to none \
  --disable_tqdm True \
  --seed 42

echo "== the tuned model answers (greedy decoding)"
$PY -m alpaca_lib.infer --model_dir runs/demo --data_path ./alpaca_data.json --num_examples 3 --max_new_tokens 96
