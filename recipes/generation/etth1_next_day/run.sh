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

# Checked here, before the first training: the split below needs all four fields (Lightning's max_time form)
if ! [[ "$BUDGET" =~ ^([0-9]{1,5}):([0-9]{1,5}):([0-9]{1,5}):([0-9]{1,5})$ ]]; then
  echo "run.sh: BUDGET must be DD:HH:MM:SS (Lightning's max_time, e.g. 00:00:05:00), got '$BUDGET'" >&2; exit 2
fi
d=$((10#${BASH_REMATCH[1]})) h=$((10#${BASH_REMATCH[2]})) m=$((10#${BASH_REMATCH[3]})) s=$((10#${BASH_REMATCH[4]}))
# half each, carried back into days, hours and minutes (Lightning refuses 108 hours), and at least a second:
# a max_time of 00:00:00:00 would stop a training at step 0
half=$(( (d * 86400 + h * 3600 + m * 60 + s) / 2 ))
(( half >= 1 )) || half=1
HALF=$(printf "%02d:%02d:%02d:%02d" $((half / 86400)) $((half % 86400 / 3600)) $((half % 3600 / 60)) $((half % 60)))

start=$(date +%s)
nmt train "$HERE/generate.yaml" --run-dir "$RUN_DIR/generate" "trainer.max_time=$HALF" "$@"
middle=$(date +%s)
nmt train "$HERE/forecaster.yaml" --run-dir "$RUN_DIR/forecaster" "trainer.max_time=$HALF" "$@"
python "$HERE/evaluate.py" "$RUN_DIR/generate" "$RUN_DIR/forecaster" \
  --train-seconds "$((middle - start))" "$(($(date +%s) - middle))"
