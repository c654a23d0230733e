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
# Candidates, each scored on the dev set at the first of ALPHAS (choose.sh beside this script): every
# member's best checkpoint and its average of the last KEEP validations, and the ensemble of the members'
# best and of their averages. The best on dev is the system, then its length penalty is chosen on dev
# among ALPHAS; only that system reads the test sets.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pair="${1:-en-de}"; shift || true
prefix="${RUN_PREFIX:-runs/ens-$pair}"
keep="${KEEP:-5}"  # BEAM, ALPHAS and NMT_DATA are choose.sh's
common=(trainer.precision=bf16-mixed trainer.enable_progress_bar=false "checkpoint.keep=$keep"
        "trainer.max_time=${BUDGET:-00:01:55:00}" "$@")
declare -A member=([a]="${MEMBER_A-}"
                   [b]="${MEMBER_B-model.embedding.dropout=0.3 model.encoder.dropout=0.3 model.decoder.hidden_dropout=0.3}")

start=$(date +%s)
mkdir -p "$(dirname "$prefix")"  # the members' logs sit beside their run directories
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
for m in a b; do  # a member stopped before KEEP validations (its budget, a crash) averages what it kept
  kept=$( (find "$prefix-$m/checkpoints" -maxdepth 1 -name 'step-*.ckpt' 2>/dev/null || true) | wc -l)  # none: no folder
  if [ "$kept" -eq 0 ]; then
    echo "ensemble.sh: $prefix-$m kept no validation (checkpoints/step-<step>.ckpt): train it longer" >&2; exit 1
  fi
  if [ "$kept" -lt "$keep" ]; then
    echo "ensemble.sh: $prefix-$m kept $kept validations, fewer than KEEP=$keep: averaging those" >&2
  fi
  nmt average "$prefix-$m" --last "$(( kept < keep ? kept : keep ))"
done

PREFIX="$prefix" "$here/choose.sh" "$pair" \
  "a-best=--run $prefix-a --checkpoint best" "a-averaged=--run $prefix-a --checkpoint averaged" \
  "b-best=--run $prefix-b --checkpoint best" "b-averaged=--run $prefix-b --checkpoint averaged" \
  "ensemble-best=--run $prefix-a --run $prefix-b --checkpoint best" \
  "ensemble-averaged=--run $prefix-a --run $prefix-b --checkpoint averaged"
echo "training wall time: $((trained - start)) s; total: $(( $(date +%s) - start )) s; members: $prefix-a, $prefix-b"
