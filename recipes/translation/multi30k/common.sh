# Sourced by run.sh and choose.sh (beside it): what both print and read.

# The data root: $NMT_DATA, else nmt's default (../shared/data beside the checkout).
data_root="${NMT_DATA:-$(python -c 'from nmt.recipe import default_data_root; print(default_data_root())')}"

# run_data_root RUN_DIR: the data root the run was trained from (its recipe's data.root, resolved as nmt
# train resolves it), so that `run.sh en-de data.root=X` tests on X's test sets too.
run_data_root() {
  python - "$1" <<'PY'
import sys
from nmt.recipe import default_data_root, resolve_data_path
from nmt.runs import load_run_recipe
root = getattr(load_run_recipe(sys.argv[1]).data, "root", None)
print(resolve_data_path(".", root, check=False).resolve() if root else default_data_root())
PY
}

# test_scores TEST HYP REF: one line per metric (BLEU, chrF) of HYP against REF, with its sacrebleu signature.
test_scores() {
  nmt evaluate --hyp "$2" --ref "$3" --metrics bleu,chrf --json |
    python -c "import json, sys; [print('%-18s %-8s %6.2f  %s' % (sys.argv[1], k, v['score'], v['signature'])) for k, v in json.load(sys.stdin).items()]" "$1"
}
