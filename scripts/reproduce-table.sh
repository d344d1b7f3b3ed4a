#!/usr/bin/env bash
# usage: scripts/reproduce-table.sh DATASET [--rows R1,R2] [extra fairseq-train flags]
#        scripts/reproduce-table.sh DATASET --seeds QUEUE_FILE [RUNS_DIR]
# The first form: one run per row (python -m floater_fairseq.cli.experiment --help). The second:
# the seeded table, e.g. configs/queue-issue16.txt: runs that queue's jobs of DATASET that have no
# result yet (scripts/run-queue.sh; resumable, hours on a CPU), then writes results/DATASET-seeds.md
# (mean ± std over seeds) from results/DATASET/seeds/. With every result in place it only rebuilds
# the table.
set -euo pipefail
usage="usage: $0 DATASET [--rows R1,R2] [extra fairseq-train flags] | $0 DATASET --seeds QUEUE_FILE [RUNS_DIR]"
if [ $# -lt 1 ]; then echo "$usage" >&2; exit 2; fi
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3 )}"
if [ "${2:-}" = "--seeds" ]; then
  if [ $# -lt 3 ] || [ $# -gt 4 ]; then echo "$usage" >&2; exit 2; fi
  QUEUE_DATASET="$1" bash "$REPO/scripts/run-queue.sh" "$3" ${4:+"$4"}
  exec "$PYTHON" -m floater_fairseq.cli.experiment seeds "$1"
fi
exec "$PYTHON" -m floater_fairseq.cli.experiment table "$@"
