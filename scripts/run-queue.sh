#!/usr/bin/env bash
# usage: scripts/run-queue.sh QUEUE_FILE [RUNS_DIR]
# Trains and evaluates seeded runs one at a time, in the background-friendly way the converged
# tables need (start it with nohup from outside the work tree). Each line of QUEUE_FILE is
#   ROW SEED [DATASET [EPOCHS [FLAGS...]]]   (DATASET default multi30k-de-en, EPOCHS default 12)
# FLAGS go to scripts/train.sh, with {runs} replaced by RUNS_DIR, e.g. for the paper's warm start
#   floater-all 1 multi30k-de-en 5 --warm-start-from {runs}/multi30k-de-en/sinusoidal-input-seed1
# The file is re-read before each job, so it can be edited while this runs. A job trains
# configs/DATASET/ROW.yaml with --seed SEED --max-epoch EPOCHS into RUNS_DIR/DATASET/ROW-seedSEED
# (default RUNS_DIR: ~/floater-runs), resuming from its checkpoint_last, then writes
# results/DATASET/seeds/ROW-seedSEED.{test,valid}.json (checkpoint_last, the config's beam) with
# the run's fairseq log (.train.log; resumed runs append to it) and its copy of the config (.yaml);
# jobs whose valid result exists are skipped; with QUEUE_DATASET set, so are other datasets' jobs
# (scripts/reproduce-table.sh DATASET --seeds QUEUE_FILE). THREADS (default 2) sets the CPU threads;
# FLOATER_CONFIGS / FLOATER_RESULTS replace configs/ and results/ (as for reproduce-table.sh).
# A line  ROW-all-lengths SEED DATASET FROM_DATASET  trains nothing: it scores FROM_DATASET's run of
# ROW (queued before it) on DATASET's length buckets, the short-to-long study's reference
# (results/DATASET/seeds/ROW-all-lengths-seedSEED.test.json; experiment evaluate --length-buckets-like).
set -uo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 QUEUE_FILE [RUNS_DIR]" >&2; exit 2; fi
QUEUE=$(realpath "$1"); RUNS=${2:-$HOME/floater-runs}
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3 )}"
CONFIGS=${FLOATER_CONFIGS:-$REPO/configs}; RESULTS=${FLOATER_RESULTS:-$REPO/results}
export OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2}
while true; do
  job=""
  while read -r row seed dataset epochs flags; do
    case "$row" in ""|\#*) continue ;; esac
    dataset=${dataset:-multi30k-de-en}
    [ -n "${QUEUE_DATASET:-}" ] && [ "$dataset" != "$QUEUE_DATASET" ] && continue
    case "$row" in *-all-lengths) result=test ;; *) result=valid ;; esac
    [ -f "$RESULTS/$dataset/seeds/$row-seed$seed.$result.json" ] && continue
    job="$row $seed $dataset ${epochs:-12} ${flags//\{runs\}/$RUNS}"; break
  done < "$QUEUE"
  [ -z "$job" ] && { echo "queue done"; exit 0; }
  set -- $job; row=$1; seed=$2; dataset=$3; epochs=$4; shift 4
  dir=$RUNS/$dataset/$row-seed$seed
  out=$RESULTS/$dataset/seeds/$row-seed$seed
  mkdir -p "$RESULTS/$dataset/seeds"
  if [[ $row == *-all-lengths ]]; then
    base=${row%-all-lengths}; from=$epochs; source=$RUNS/$from/$base-seed$seed
    if [ ! -f "$CONFIGS/$from/$base.yaml" ]; then
      echo "error: '$row $seed $dataset $from': the 4th field of a reference names the dataset its run was" \
           "trained on (no $CONFIGS/$from/$base.yaml)" >&2; exit 2
    fi
    if [ ! -f "$source/checkpoint_last.pt" ]; then
      echo "error: $row seed $seed scores the run $source, which has no checkpoint_last.pt:" \
           "queue '$base $seed $from' before it" >&2; exit 1
    fi
    echo "=== $(date) $dataset $row seed $seed: $from's run scored on $dataset's length buckets"
    "$PYTHON" -m floater_fairseq.cli.experiment evaluate "$source" "$CONFIGS/$from/$base.yaml" --average-last 1 \
       --subset test --length-buckets-like "$CONFIGS/$dataset/$base.yaml" --output "$out.test.json" || exit 1
    continue
  fi
  echo "=== $(date) $dataset $row seed $seed, $epochs epochs"
  bash "$REPO/scripts/train.sh" "$CONFIGS/$dataset/$row.yaml" "$@" --max-epoch "$epochs" --seed "$seed" \
     --save-dir "$dir" --no-progress-bar --log-format simple --log-interval 100 || exit 1
  for subset in test valid; do
    "$PYTHON" -m floater_fairseq.cli.experiment evaluate "$dir" "$CONFIGS/$dataset/$row.yaml" \
       --average-last 1 --subset $subset --output "$out.$subset.json" || exit 1
  done
  cp "$dir/train.log" "$out.train.log" && cp "$dir/config.yaml" "$out.yaml" || exit 1
done
