#!/usr/bin/env bash
# usage: scripts/evaluate.sh CHECKPOINT_DIR [CONFIG] [--average-last N] [--output FILE] [--subset S]
#                            [--model-overrides DICT]
# See python -m floater_fairseq.cli.experiment --help.
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 CHECKPOINT_DIR [CONFIG] [--average-last N] [--output FILE]" >&2; exit 2; fi
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3 )}"
exec "$PYTHON" -m floater_fairseq.cli.experiment evaluate "$@"
