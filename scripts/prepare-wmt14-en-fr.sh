#!/usr/bin/env bash
# Prepare wmt14-en-fr for fairseq: [--raw-dir DIR] [--dest DIR] [--vocab-size N] [--max-train-len N]
#   [--src L --tgt L]. Downloads the official files when no --raw-dir is given (needs a network).
# See python -m floater_fairseq.cli.prepare --help.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3 )}"
exec "$PYTHON" -m floater_fairseq.cli.prepare wmt14-en-fr "$@"
