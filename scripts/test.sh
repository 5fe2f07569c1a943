#!/usr/bin/env bash
# Runs the test suite in .venv (set up on first use):  bash scripts/test.sh [pytest args]
# Slow tests (a real local model behind `transformers serve`, training from a GGUF file) run with:
#   bash scripts/test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# setup_env.sh installed every package the tests use: a missing one is a broken install, not a skip.
export ALPACA_TEST_ENV=full
exec .venv/bin/python -m pytest "$@"
