#!/usr/bin/env bash
# Downloads into .whl/ the wheels that bench/gpu_check.sh needs and the GPU machine's python lacks.
#
#   bash bench/gpu_wheels.sh        # here (needs the package index), before carrying .whl to the GPU machine
#
# The GPU machine (Python 3.12, x86-64, no network) has torch, transformers, accelerate, peft, tokenizers,
# safetensors, sentencepiece, numpy, tqdm and matplotlib. Of what the check runs, only `eval_model.py`'s
# command line needs a package it lacks: fire (and fire's one dependency, termcolor). The versions are the
# ones this checkout's .venv has, where there is one. Both are pure-Python wheels, about 125 kB together.
# .whl/ is ignored by git; gpu_check.sh installs whatever wheels it finds there with pip --no-index.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY="$(command -v python3)"

version_of() {  # the installed version of $1, or the fallback $2
  "$PY" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: print(sys.argv[2])" "$1" "$2"
}
SPECS=("fire==$(version_of fire 0.7.1)" "termcolor==$(version_of termcolor 3.3.0)")

rm -rf "$ROOT/.whl"
mkdir -p "$ROOT/.whl"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$ROOT/.whl" "${SPECS[@]}"
echo "gpu_wheels.sh: $(ls "$ROOT/.whl" | tr '\n' ' ')in $ROOT/.whl ($(du -sh "$ROOT/.whl" | cut -f1)); carry .whl with the run"
