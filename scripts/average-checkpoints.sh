#!/usr/bin/env bash
# usage: scripts/average-checkpoints.sh --inputs DIR --num-epoch-checkpoints N --output FILE
#        (or --num-update-checkpoints N; or --inputs FILE... --output FILE). Works offline.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3 )}"
exec "$PYTHON" -m floater_fairseq.cli.average_checkpoints "$@"
