#!/usr/bin/env bash
# One GPU check of train.py's modes and of batched generation: at most 8 minutes on one H200, no network.
#
#   bash bench/gpu_wheels.sh                 # here, once: the wheels the GPU machine lacks, into .whl/
#   bash bench/gpu_check.sh                  # there: figures printed, and written to $OUT/gpu_check.json if set
#   bash bench/gpu_check.sh --dry-run        # anywhere: the same steps on CPU with a tiny model (about a minute)
#
# It uses the machine's own python3 (torch, transformers, accelerate, peft are there) or PYTHON=..., installs
# the carried wheels from .whl/ (if any) into a folder on PYTHONPATH with pip --no-index, checks every
# prerequisite before spending a minute on a model, then runs bench/gpu_check.py (its docstring says what
# is measured and how). Extra arguments go to gpu_check.py (e.g. --modes faithful,packed --peak_tflops 989.4).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY_RUN=0
for arg in "$@"; do [[ "$arg" == "--dry-run" ]] && DRY_RUN=1; done

# The project's venv where there is one (here), else the machine's python3 (the GPU machine).
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY="$(command -v python3 || true)"; fi
if [[ -z "$PY" ]]; then
  echo "gpu_check.sh: no python3 found; set PYTHON=/path/to/python (one with torch)." >&2
  exit 2
fi

# Carried wheels: installed (no index, no dependencies) into a private folder put first on PYTHONPATH.
WHEELS="$ROOT/.whl"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  SITE="${TMPDIR:-/tmp}/gpu-check-site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || { echo "gpu_check.sh: pip could not install the wheels in $WHEELS (see above); rebuild them with bash bench/gpu_wheels.sh." >&2; exit 2; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1

# Prerequisites, all checked before anything runs: modules and versions, the project's imports, a GPU.
"$PY" - "$DRY_RUN" <<'EOF' || exit 2
import importlib, sys

dry_run = sys.argv[1] == "1"
need = {"torch": "2.6", "transformers": "5.0", "accelerate": "1.10", "peft": "0.17", "tokenizers": "0.21",
        "safetensors": "0.4.3", "numpy": "1.26", "fire": "0.6"}
problems = []
for name, least in need.items():
    try:
        mod = importlib.import_module(name)
    except Exception as e:
        hint = " (a carried wheel: run `bash bench/gpu_wheels.sh` here and carry .whl)" if name == "fire" else ""
        problems.append(f"{name} >= {least} cannot be imported: {type(e).__name__}: {e}{hint}")
        continue
    from packaging.version import Version
    version = getattr(mod, "__version__", "0")
    if Version(version.split("+")[0]) < Version(least):
        problems.append(f"{name} {version} is older than the project needs ({least})")
for module in ("train", "eval_model", "alpaca_lib.evaluation.outputs", "alpaca_testkit.tiny", "bench.benchutil"):
    try:
        importlib.import_module(module)
    except Exception as e:
        problems.append(f"the project's {module} does not import: {type(e).__name__}: {e}")
if not dry_run:
    import torch
    if not torch.cuda.is_available():
        problems.append("no CUDA device is visible to torch (use --dry-run to rehearse on CPU)")
if problems:
    print("gpu_check.sh: prerequisites missing:\n  - " + "\n  - ".join(problems), file=sys.stderr)
    sys.exit(1)
import torch, transformers
device = torch.cuda.get_device_name() if torch.cuda.is_available() and not dry_run else "cpu (dry run)"
print(f"gpu_check.sh: {sys.executable}, torch {torch.__version__}, transformers {transformers.__version__}; {device}")
EOF

exec "$PY" "$ROOT/bench/gpu_check.py" "$@"
