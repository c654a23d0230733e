#!/usr/bin/env bash
# Two members of a Multi30k recipe trained side by side, each also averaged over its latest
# validations, the system chosen on the dev set alone, then the two test sets translated once.
#   usage: recipes/translation/multi30k/ensemble.sh [en-de|de-en|en-fr] [extra overrides for both members]
#   member a: the recipe as it is; member b: dropout 0.3 instead of 0.2 (embeddings, encoder, decoder output)
#   MEMBER_A="key=value ...", MEMBER_B="...": each member's own overrides instead of those (after the
#   common ones), e.g. MEMBER_A="seed=1 model.encoder.dropout=0.3" MEMBER_B="seed=2 model.encoder.dropout=0.3"
#   for two seeds of one setting
#   BUDGET=00:01:55:00 training time of each member (DD:HH:MM:SS); THREADS=1 per member (two members on 2 cores)
#   RUN_PREFIX=runs/ens-<pair> (members in RUN_PREFIX-a, RUN_PREFIX-b; existing ones are resumed)
#   TRAIN=0 skips training (choose and test with the runs as they are); KEEP=5 validations averaged
#   BEAM=5; ALPHAS="0.6 0.8 1.0 1.2" length penalties (GNMT alpha) tried on dev; NMT_DATA=<data root>
# Candidates, each scored on the dev set at the first of ALPHAS: every member's best checkpoint and its
# average of the last KEEP validations, and the ensemble of the members' best and of their averages.
# The best on dev is the system, then its length penalty is chosen on dev among ALPHAS; only that
# system reads the test sets.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pair="${1:-en-de}"; shift || true
src="${pair%-*}"; tgt="${pair#*-}"
prefix="${RUN_PREFIX:-runs/ens-$pair}"
keep="${KEEP:-5}"; beam="${BEAM:-5}"
read -r -a alphas <<< "${ALPHAS:-0.6 0.8 1.0 1.2}"; alpha="${alphas[0]}"
data_root="${NMT_DATA:-$(python -c 'from nmt.recipe import default_data_root; print(default_data_root())')}"
common=(trainer.precision=bf16-mixed trainer.enable_progress_bar=false "checkpoint.keep=$keep"
        "trainer.max_time=${BUDGET:-00:01:55:00}" "$@")
declare -A member=([a]="${MEMBER_A-}"
                   [b]="${MEMBER_B-model.embedding.dropout=0.3 model.encoder.dropout=0.3 model.decoder.hidden_dropout=0.3}")

start=$(date +%s)
if [ "${TRAIN:-1}" != 0 ]; then
  pids=()
  for m in a b; do
    # shellcheck disable=SC2086  # the member's overrides are words
    OMP_NUM_THREADS="${THREADS:-1}" nmt train "$here/$pair.yaml" --run-dir "$prefix-$m" "${common[@]}" ${member[$m]} \
      >> "$prefix-$m.log" 2>&1 &  # appended: a resumed member keeps the log of its first training
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || { echo "a member failed: see $prefix-*.log" >&2; exit 1; }; done
fi
trained=$(date +%s)
for m in a b; do nmt average "$prefix-$m" --last "$keep"; done

bleu() {  # bleu HYP REF: the BLEU score alone
  nmt evaluate --hyp "$1" --ref "$2" --metrics bleu --json | python -c "import json,sys; print('%.2f' % json.load(sys.stdin)['bleu']['score'])"
}
dev_src="$data_root/multi30k/val.$src.gz"; dev_ref="$data_root/multi30k/val.$tgt.gz"
declare -A runs=([a-best]="--run $prefix-a --checkpoint best" [a-averaged]="--run $prefix-a --checkpoint averaged"
                 [b-best]="--run $prefix-b --checkpoint best" [b-averaged]="--run $prefix-b --checkpoint averaged"
                 [ensemble-best]="--run $prefix-a --run $prefix-b --checkpoint best"
                 [ensemble-averaged]="--run $prefix-a --run $prefix-b --checkpoint averaged")
choice="" best=-1
printf '\n%-18s %s\n' "candidate" "dev BLEU (beam $beam, alpha $alpha)"
for name in a-best a-averaged b-best b-averaged ensemble-best ensemble-averaged; do
  # shellcheck disable=SC2086
  nmt translate ${runs[$name]} --beam "$beam" --alpha "$alpha" -i "$dev_src" -o "$prefix.dev.$name.hyp"
  score=$(bleu "$prefix.dev.$name.hyp" "$dev_ref")
  printf '%-18s %s\n' "$name" "$score"
  if python -c "import sys; sys.exit(0 if float('$score') > float('$best') else 1)"; then choice=$name best=$score; fi
done
echo "chosen on dev: $choice ($best)"
for a in "${alphas[@]:1}"; do  # the chosen system's length penalty, on dev too
  # shellcheck disable=SC2086
  nmt translate ${runs[$choice]} --beam "$beam" --alpha "$a" -i "$dev_src" -o "$prefix.dev-alpha$a.$choice.hyp"
  score=$(bleu "$prefix.dev-alpha$a.$choice.hyp" "$dev_ref")
  echo "with alpha $a: $score"
  if python -c "import sys; sys.exit(0 if float('$score') > float('$best') else 1)"; then alpha=$a best=$score; fi
done
echo "chosen alpha: $alpha ($best)"

printf '\n%-18s %-8s %s\n' "test set" "metric" "score (sacrebleu signature; $choice, beam $beam, alpha $alpha)"
for test in test_2016_flickr test_2017_flickr; do
  ref="$data_root/multi30k/$test.$tgt.gz"
  [ -f "$ref" ] || { echo "skipping $test: $ref not found"; continue; }
  # shellcheck disable=SC2086
  nmt translate ${runs[$choice]} --beam "$beam" --alpha "$alpha" -i "$data_root/multi30k/$test.$src.gz" -o "$prefix.$test.hyp"
  nmt evaluate --hyp "$prefix.$test.hyp" --ref "$ref" --metrics bleu,chrf --json |
    python -c "import json,sys; [print(f'%-18s %-8s %6.2f  %s' % ('$test', k, v['score'], v['signature'])) for k, v in json.load(sys.stdin).items()]"
done
echo "training wall time: $((trained - start)) s; total: $(( $(date +%s) - start )) s; members: $prefix-a, $prefix-b"
