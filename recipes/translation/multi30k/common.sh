# Sourced by run.sh and choose.sh (beside it): what both print and read.

# The data root: $NMT_DATA, else nmt's default (../shared/data beside the checkout).
data_root="${NMT_DATA:-$(python -c 'from nmt.recipe import default_data_root; print(default_data_root())')}"

# test_scores TEST HYP REF: one line per metric (BLEU, chrF) of HYP against REF, with its sacrebleu signature.
test_scores() {
  nmt evaluate --hyp "$2" --ref "$3" --metrics bleu,chrf --json |
    python -c "import json, sys; [print('%-18s %-8s %6.2f  %s' % (sys.argv[1], k, v['score'], v['signature'])) for k, v in json.load(sys.stdin).items()]" "$1"
}
