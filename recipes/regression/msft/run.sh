#!/usr/bin/env bash
# MSFT 2012-2017: train within a time budget, then print the test RMSE in dollars beside the
# persistence baseline (tomorrow's price equals today's), measured on the same test days.
#   BUDGET=00:00:05:00 RUN_DIR=runs/msft recipes/regression/msft/run.sh [key.path=value ...]
# BUDGET is Lightning's max_time (DD:HH:MM:SS). An existing RUN_DIR is resumed.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUDGET="${BUDGET:-00:00:05:00}"
RUN_DIR="${RUN_DIR:-runs/msft}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # small RNN steps: extra threads only oversubscribe a shared CPU

start=$(date +%s)
nmt train "$HERE/msft.yaml" --run-dir "$RUN_DIR" "trainer.max_time=$BUDGET" "$@"
python "$HERE/evaluate.py" "$RUN_DIR" --train-seconds "$(($(date +%s) - start))"
