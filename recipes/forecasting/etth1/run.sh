#!/usr/bin/env bash
# ETTh1 336 -> 96: train within a time budget, then print test MSE and MAE (normalised) beside
# repeat-last and a least-squares linear model, both measured in the same run on the same windows.
#   BUDGET=00:00:05:00 RUN_DIR=runs/etth1 recipes/forecasting/etth1/run.sh [key.path=value ...]
# BUDGET is Lightning's max_time (DD:HH:MM:SS). An existing RUN_DIR is resumed.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUDGET="${BUDGET:-00:00:05:00}"
RUN_DIR="${RUN_DIR:-runs/etth1}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # small RNN steps: extra threads only oversubscribe a shared CPU

start=$(date +%s)
nmt train "$HERE/etth1.yaml" --run-dir "$RUN_DIR" "trainer.max_time=$BUDGET" "$@"
python "$HERE/evaluate.py" "$RUN_DIR" --train-seconds "$(($(date +%s) - start))"
