#!/usr/bin/env bash
# The GPU figures of benchmarks/gpu/step.py in one command (under 8 minutes on one H200), from the repo root:
#   bash benchmarks/gpu/run.sh
# It needs torch with CUDA and this repo's Python dependencies; vLLM is optional (the sleep part is skipped
# without it). It never fails: a part that cannot run prints why.
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
timeout 470 "$PY" benchmarks/gpu/step.py "$@" || echo "gpu_run=ended with status $?"
exit 0
