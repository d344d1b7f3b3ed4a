#!/usr/bin/env bash
# usage: scripts/analyze-trajectories.sh CHECKPOINT --train-length L [--factor 4] [--png FILE] [--json FILE]
# Norm of every FLOATER trajectory up to FACTOR x L; last line: "growth at 2x: A, at 4x: B".
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 CHECKPOINT --train-length L [--png FILE]" >&2; exit 2; fi
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3 )}"
exec "$PYTHON" -m floater_fairseq.cli.analyze_trajectories "$@"
