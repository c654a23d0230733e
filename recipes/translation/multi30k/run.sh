#!/usr/bin/env bash
# Train a Multi30k recipe, translate test_2016_flickr and test_2017_flickr, print BLEU and chrF with
# sacrebleu signatures.
#   usage: recipes/translation/multi30k/run.sh [en-de|de-en|en-fr|en+fr+cs-de] [extra overrides ...]
#   (a many-to-one recipe is tested on its first source language: en+fr+cs-de on en->de)
#   BUDGET=00:01:00:00 caps training time (DD:HH:MM:SS; default: the recipe's epochs and early stopping)
#   RUN_DIR=... (default runs/multi30k-<pair>); BEAM=5; NMT_DATA=<data root> (a data.root override wins, for the
#   test sets too)
#   GPU=1: the one-GPU variant of the recipe (the overrides below, before yours, so yours win): bf16,
#   4x the token batch with the learning rate x2 (square-root rule). model.compile stays off until
#   the train-speed rows of benchmarks/gpu_check.sh show it pays there (add model.compile=loop or
#   model.compile=true to try; model.decoder.teacher_forcing=shared or hoisted likewise).
#   Not yet measured on a GPU (issue 13): benchmarks/gpu_check.sh runs it when a GPU is lent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pair="${1:-en-de}"; shift || true
src="${pair%-*}"; tgt="${pair#*-}"; src="${src%%+*}"
run_dir="${RUN_DIR:-runs/multi30k-$pair}"
beam="${BEAM:-5}"
overrides=()
[ "${GPU:-0}" = 1 ] && overrides+=(trainer.accelerator=gpu trainer.devices=1 trainer.precision=bf16-mixed
                                   data.batch_tokens=4200 optim.lr=0.001)
overrides+=("$@")
[ -n "${BUDGET:-}" ] && overrides+=("trainer.max_time=$BUDGET")

start=$(date +%s)
nmt train "$here/$pair.yaml" --run-dir "$run_dir" "${overrides[@]}"
trained=$(date +%s)
# shellcheck source=common.sh
. "$here/common.sh"  # run_data_root, test_scores
data_root="$(run_data_root "$run_dir")"

printf '\n%-18s %-8s %s\n' "test set" "metric" "score (sacrebleu signature)"
for test in test_2016_flickr test_2017_flickr; do
  ref="$data_root/multi30k/$test.$tgt.gz"
  [ -f "$ref" ] || { echo "skipping $test: $ref not found"; continue; }
  nmt translate --run "$run_dir" --beam "$beam" -i "$data_root/multi30k/$test.$src.gz" -o "$run_dir/$test.$tgt.hyp"
  test_scores "$test" "$run_dir/$test.$tgt.hyp" "$ref"
done
nmt plot "$run_dir" val/bleu | sed 's/^/dev curve: /'
echo "training wall time: $((trained - start)) s; total: $(( $(date +%s) - start )) s; run directory: $run_dir"
