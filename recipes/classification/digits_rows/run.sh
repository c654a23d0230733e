#!/usr/bin/env bash
# 8x8 digits as row sequences: prepare, train, predict the held-out test set, and print test
# accuracy beside two baselines measured on the same split: the majority class, and logistic
# regression on the 64 flattened pixels (scikit-learn).
#   BUDGET=00:00:05:00 RUN_DIR=runs/digits_rows recipes/classification/digits_rows/run.sh [key=value ...]
#   DIGITS_DATA=runs/digits_rows_data: where prepare.py writes the split (train/dev/test.tsv). A name of
#   its own, not a generic DATA that a shell may already hold for something else; a folder holding other
#   train/dev/test.tsv files is refused there, never overwritten.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUDGET="${BUDGET:-00:00:05:00}"
RUN_DIR="${RUN_DIR:-runs/digits_rows}"
DIGITS_DATA="${DIGITS_DATA:-runs/digits_rows_data}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # small RNN steps; extra threads only contend

python "$HERE/prepare.py" "$DIGITS_DATA"
start=$(date +%s)
nmt train "$HERE/digits_rows.yaml" --run-dir "$RUN_DIR" "data.root=$(cd "$DIGITS_DATA" && pwd)" "trainer.max_time=$BUDGET" "$@"
trained=$(date +%s)
cut -f2 "$DIGITS_DATA/test.tsv" | tail -n +2 > "$RUN_DIR/test.txt"
nmt predict --run "$RUN_DIR" -i "$RUN_DIR/test.txt" -o "$RUN_DIR/test.pred"

python - "$DIGITS_DATA" "$RUN_DIR" "$((trained - start))" <<'PY'
import sys
from pathlib import Path
import numpy as np
from sklearn.linear_model import LogisticRegression
from nmt.data.labelled import accuracy, majority_baseline, parse_vectors, read_tsv
data, run = Path(sys.argv[1]), Path(sys.argv[2])
train, test = (read_tsv(data / f"{s}.tsv", text_column="rows") for s in ("train", "test"))
gold = [r.label for r in test]
predicted = (run / "test.pred").read_text().splitlines()
flat = lambda rows: np.array([np.ravel(parse_vectors(r.text, r.where)) for r in rows])
logreg = LogisticRegression(max_iter=5000).fit(flat(train), [r.label for r in train])
print(f"digits (8 rows of 8 pixels) test ({len(gold)} images), training {sys.argv[3]}s, run {run}")
print(f"  {'model (nmt classify, bi-GRU)':<40} accuracy {100 * accuracy(predicted, gold):6.2f}%")
print(f"  {'baseline: majority class':<40} accuracy {100 * majority_baseline([r.label for r in train], gold):6.2f}%")
print(f"  {'baseline: logistic regression, 64 pixels':<40} accuracy {100 * accuracy(list(logreg.predict(flat(test))), gold):6.2f}%")
PY
