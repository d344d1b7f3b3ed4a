#!/usr/bin/env bash
# Training-step and beam-5 generation time of floater_transformer relative to fairseq's
# transformer at the same size (interleaved, same batches). Extra arguments go to the module:
#   scripts/bench-speed.sh --sizes small --settings paper,step-dt
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m benchmarks.bench_speed "$@"
