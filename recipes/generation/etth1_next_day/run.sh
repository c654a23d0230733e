#!/usr/bin/env bash
# ETTh1 next day: train the one-to-many generator (the current hour alone) and the seq2seq forecaster
# (336 hours of history), each within half the budget, then print test MSE/MAE of the next 24 hours
# of OT (normalised and in degrees) beside repeat-the-current-value, all on the same test hours.
#   BUDGET=00:00:05:00 RUN_DIR=runs/etth1_next_day recipes/generation/etth1_next_day/run.sh [key=value ...]
# BUDGET is Lightning's max_time (DD:HH:MM:SS) for both trainings together; overrides go to both.
# Existing run directories ($RUN_DIR/generate, $RUN_DIR/forecaster) are resumed.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUDGET="${BUDGET:-00:00:05:00}"
RUN_DIR="${RUN_DIR:-runs/etth1_next_day}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # small RNN steps: extra threads only oversubscribe a shared CPU

IFS=: read -r d h m s <<< "$BUDGET"
half=$(( (10#$d * 86400 + 10#$h * 3600 + 10#$m * 60 + 10#$s) / 2 ))
HALF=$(printf "00:%02d:%02d:%02d" $((half / 3600)) $((half % 3600 / 60)) $((half % 60)))

start=$(date +%s)
nmt train "$HERE/generate.yaml" --run-dir "$RUN_DIR/generate" "trainer.max_time=$HALF" "$@"
middle=$(date +%s)
nmt train "$HERE/forecaster.yaml" --run-dir "$RUN_DIR/forecaster" "trainer.max_time=$HALF" "$@"
python "$HERE/evaluate.py" "$RUN_DIR/generate" "$RUN_DIR/forecaster" \
  --train-seconds "$((middle - start))" "$(($(date +%s) - middle))"
