#!/usr/bin/env bash
# UD English EWT part-of-speech tagging: train within a time budget, tag the dev sentences
# (whitespace-separated words in, one tag per word out), print UPOS accuracy beside the
# most-frequent-tag-per-word baseline (unseen words: the commonest tag) measured on the same files.
#   BUDGET=00:00:10:00 RUN_DIR=runs/ud_english_ewt recipes/tagging/ud_english_ewt/run.sh [key=value ...]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUDGET="${BUDGET:-00:00:10:00}"
RUN_DIR="${RUN_DIR:-runs/ud_english_ewt}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # small RNN steps; extra threads only contend

start=$(date +%s)
nmt train "$HERE/ud_english_ewt.yaml" --run-dir "$RUN_DIR" "trainer.max_time=$BUDGET" "$@"
trained=$(date +%s)

python - "$RUN_DIR" <<'PY'
import sys
from pathlib import Path
from nmt.runs import load_run_recipe
run = Path(sys.argv[1]); recipe = load_run_recipe(run)
dev = recipe.task_cls.read_split(recipe, recipe.data.valid)
(run / "dev.txt").write_text("".join(" ".join(s.words) + "\n" for s in dev), encoding="utf-8")
PY
nmt predict --run "$RUN_DIR" -i "$RUN_DIR/dev.txt" -o "$RUN_DIR/dev.pred"

python - "$RUN_DIR" "$((trained - start))" <<'PY'
import sys
from pathlib import Path
from nmt.data.labelled import accuracy, most_frequent_tag_baseline
from nmt.runs import load_run_recipe
run = Path(sys.argv[1]); recipe = load_run_recipe(run)
train, dev = (recipe.task_cls.read_split(recipe, s) for s in (recipe.data.train, recipe.data.valid))
predicted = [t for line in (run / "dev.pred").read_text(encoding="utf-8").splitlines() for t in line.split()]
gold = [t for s in dev for t in s.tags]
print(f"UD English EWT dev UPOS ({len(dev)} sentences, {len(gold)} words), training {sys.argv[2]}s, run {run}")
print(f"  {'model (nmt tag, bi-LSTM on subwords + words)':<44} accuracy {100 * accuracy(predicted, gold):6.2f}%")
print(f"  {'baseline: most frequent tag per word':<44} accuracy {100 * most_frequent_tag_baseline(train, dev):6.2f}%")
PY
