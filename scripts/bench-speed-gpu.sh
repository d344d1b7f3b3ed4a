#!/usr/bin/env bash
# FLOATER against fairseq's transformer on a GPU, fp16 as `fairseq-train --fp16` trains, side by side
# in one process per size: train step, beam-5 generation, peak CUDA memory, extra leaf ops; then the
# extra ops against sentence length. Writes DEST/bench-speed-gpu-{iwslt,wmt,ops}.txt (DEST: first
# argument, default results/speed; PARTS picks, SETTINGS sets bench_speed's --settings). Needs a CUDA GPU, torch and torchdiffeq; where fairseq is not
# installed, wheels in .whl/ are installed into /tmp/site first (fairseq-fixed, hydra-core,
# omegaconf, antlr4-python3-runtime, bitarray, for the machine's Python).
#   scripts/bench-speed-gpu.sh /tmp/out
set -uo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-results/speed}
PY=${PYTHON:-python3}
mkdir -p "$DEST"
if ! "$PY" -c "import fairseq" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "fairseq is not importable and .whl/ holds no wheels to install" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
"$PY" -c "import torch, torchdiffeq, fairseq, floater_fairseq; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), 'fairseq', fairseq.__version__, 'torchdiffeq', torchdiffeq.__version__)" || exit 3
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
SETTINGS=${SETTINGS:-default,rk4-dt/5}
COMMON=(--device cuda --fp16 --absolute --max-tokens 4096 --train-reps 20 --gen-reps 5 --gen-tokens 2000)
# vocabularies as in the real tasks: IWSLT14 de-en ~8k joined types, WMT en-de 32k shared BPE
for part in ${PARTS:-iwslt wmt ops}; do
  case $part in
    iwslt) "$PY" -m benchmarks.bench_speed "${COMMON[@]}" --sizes iwslt --vocab 8000 --settings "$SETTINGS" ;;
    wmt) "$PY" -m benchmarks.bench_speed "${COMMON[@]}" --sizes wmt --vocab 32000 --settings "$SETTINGS" ;;
    ops) "$PY" -m benchmarks.bench_speed --device cuda --fp16 --ops 50,100,200,400,1000 --sizes iwslt,wmt \
           --settings default ;;
    *) echo "unknown part $part: choose from iwslt wmt ops" >&2; exit 2 ;;
  esac | tee "$DEST/bench-speed-gpu-$part.txt"
done
