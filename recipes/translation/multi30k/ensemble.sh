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
#   TRAIN=0 skips training (choose and test with the runs as they are); KEEP=5 validations averaged (2 or more)
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
# Checked before two members train for the whole budget: checkpoint.keep=1 keeps the best checkpoint alone,
# no step-<step>.ckpt, so there would be nothing to average at the end.
if ! [[ "$keep" =~ ^[0-9]+$ ]] || (( 10#$keep < 2 )); then
  echo "ensemble.sh: KEEP must be an integer of at least 2 (validations averaged; 1 keeps none to average), got '$keep'" >&2
  exit 2
fi
keep=$((10#$keep))
common=(trainer.precision=bf16-mixed trainer.enable_progress_bar=false "checkpoint.keep=$keep"
        "trainer.max_time=${BUDGET:-00:01:55:00}" "$@")
declare -A member=([a]="${MEMBER_A-}"
                   [b]="${MEMBER_B-model.embedding.dropout=0.3 model.encoder.dropout=0.3 model.decoder.hidden_dropout=0.3}")

start=$(date +%s)
mkdir -p "$(dirname "$prefix")"  # the members' logs sit beside their run directories
stop_members() {  # a member left behind (the other failed, Ctrl-C) would hold its core or GPU to the end of its budget
  local running
  running=$(jobs -p)  # the members still running: the only jobs this script starts in the background
  [ -n "$running" ] || return 0
  echo "ensemble.sh: stopping the member still training (pid ${running//$'\n'/ })" >&2
  # shellcheck disable=SC2086  # pids are words
  kill $running 2>/dev/null || true
  # shellcheck disable=SC2086
  wait $running 2>/dev/null || true
}
trap stop_members EXIT
trap 'exit 130' INT  # through the EXIT trap: background members ignore a Ctrl-C meant for the script
trap 'exit 143' TERM
if [ "${TRAIN:-1}" != 0 ]; then
  for m in a b; do
    read -r -a overrides <<< "${member[$m]}"  # the member's overrides are words (split, never globbed)
    OMP_NUM_THREADS="${THREADS:-1}" nmt train "$here/$pair.yaml" --run-dir "$prefix-$m" "${common[@]}" "${overrides[@]}" \
      >> "$prefix-$m.log" 2>&1 &  # appended: a resumed member keeps the log of its first training
  done
  # whichever ends first: a failure stops the other at once (the trap), not at the end of its budget
  for _ in a b; do wait -n || { echo "ensemble.sh: a member failed: see $prefix-*.log" >&2; exit 1; }; done
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

# choose.sh splits a candidate's options like a shell (shlex): the run directories quoted, a RUN_PREFIX with
# spaces or glob characters stays one word
quote() { python -c 'import shlex, sys; print(shlex.quote(sys.argv[1]))' "$1"; }
run_a=$(quote "$prefix-a"); run_b=$(quote "$prefix-b")
PREFIX="$prefix" "$here/choose.sh" "$pair" \
  "a-best=--run $run_a --checkpoint best" "a-averaged=--run $run_a --checkpoint averaged" \
  "b-best=--run $run_b --checkpoint best" "b-averaged=--run $run_b --checkpoint averaged" \
  "ensemble-best=--run $run_a --run $run_b --checkpoint best" \
  "ensemble-averaged=--run $run_a --run $run_b --checkpoint averaged"
echo "training wall time: $((trained - start)) s; total: $(( $(date +%s) - start )) s; members: $prefix-a, $prefix-b"
