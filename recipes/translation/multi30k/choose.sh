#!/usr/bin/env bash
# Choose a Multi30k system on the dev set alone, then translate the two test sets once with it.
#   usage: recipes/translation/multi30k/choose.sh PAIR NAME='nmt translate options' [NAME='...' ...]
#   e.g.   PREFIX=runs/big recipes/translation/multi30k/choose.sh en-de \
#            "six=--run runs/q16-a --run runs/q16-b --run runs/q17-a --run runs/q17-b --run runs/q18-a --run runs/q18-b --checkpoint averaged" \
#            "four=--run runs/q16-a --run runs/q16-b --run runs/q18-a --run runs/q18-b --checkpoint averaged"
#   A candidate's options are split into words as a shell would (quotes keep a word with spaces whole, no
#   globbing): "a=--run 'runs/my run' --checkpoint best".
#   PREFIX=runs/choose-<pair> (the dev and test outputs: PREFIX.dev.NAME.hyp, PREFIX.dev-alphaA.NAME.hyp,
#   PREFIX.<test set>.hyp); BEAM=5; ALPHAS="0.6 0.8 1.0 1.2" length penalties (GNMT alpha); NMT_DATA=<data root>
# Each candidate is scored on the dev set at the first of ALPHAS, in the order given (a tie keeps the
# earlier); the best is the system, then its length penalty is chosen on dev among ALPHAS; only that
# system reads the test sets.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: choose.sh PAIR NAME='nmt translate options' [NAME='...' ...]" >&2; exit 2; }
pair="$1"; shift
src="${pair%-*}"; tgt="${pair#*-}"; src="${src%%+*}"
[ $# -gt 0 ] || { echo "choose.sh: no candidates: give NAME='nmt translate options' (e.g. \"a='--run runs/a'\")" >&2; exit 2; }
prefix="${PREFIX:-runs/choose-$pair}"; beam="${BEAM:-5}"
read -r -a alphas <<< "${ALPHAS:-0.6 0.8 1.0 1.2}"; alpha="${alphas[0]}"
# shellcheck source=common.sh
. "$(dirname "$0")/common.sh"  # data_root, test_scores
names=(); declare -A options=()
for candidate in "$@"; do
  name="${candidate%%=*}"
  if [ "$name" = "$candidate" ] || ! [[ "$name" =~ ^[A-Za-z0-9_.+-]+$ ]] || [ -n "${options[$name]+x}" ]; then
    echo "choose.sh: candidate '$candidate': expected NAME='nmt translate options', a new NAME of letters, digits, . _ + -" >&2
    exit 2
  fi
  names+=("$name"); options[$name]="${candidate#*=}"
  if ! python -c 'import shlex, sys; shlex.split(sys.argv[1])' "${options[$name]}" 2>/dev/null; then
    echo "choose.sh: candidate '$candidate': unbalanced quotes in its options" >&2; exit 2
  fi
done
# words NAME: the candidate's options as the array `words`, split like a shell's words (shlex): a quoted run
# directory with a space stays one word, and nothing is globbed, as unquoted ${options[NAME]} would be
words() {
  mapfile -d '' -t words < <(python -c 'import shlex, sys; print(*(w + "\0" for w in shlex.split(sys.argv[1])), sep="", end="")' \
                                    "${options[$1]}")
}
mkdir -p "$(dirname "$prefix")"

bleu() {  # bleu HYP REF: the BLEU score alone
  nmt evaluate --hyp "$1" --ref "$2" --metrics bleu --json | python -c "import json,sys; print('%.2f' % json.load(sys.stdin)['bleu']['score'])"
}
better() { python -c "import sys; sys.exit(0 if float('$1') > float('$2') else 1)"; }
dev_src="$data_root/multi30k/val.$src.gz"; dev_ref="$data_root/multi30k/val.$tgt.gz"
choice="" best=-1
printf '\n%-18s %s\n' "candidate" "dev BLEU (beam $beam, alpha $alpha)"
for name in "${names[@]}"; do
  words "$name"
  nmt translate "${words[@]}" --beam "$beam" --alpha "$alpha" -i "$dev_src" -o "$prefix.dev.$name.hyp"
  score=$(bleu "$prefix.dev.$name.hyp" "$dev_ref")
  printf '%-18s %s\n' "$name" "$score"
  if better "$score" "$best"; then choice=$name best=$score; fi
done
echo "chosen on dev: $choice ($best)"
words "$choice"
for a in "${alphas[@]:1}"; do  # the chosen system's length penalty, on dev too
  nmt translate "${words[@]}" --beam "$beam" --alpha "$a" -i "$dev_src" -o "$prefix.dev-alpha$a.$choice.hyp"
  score=$(bleu "$prefix.dev-alpha$a.$choice.hyp" "$dev_ref")
  echo "with alpha $a: $score"
  if better "$score" "$best"; then alpha=$a best=$score; fi
done
echo "chosen alpha: $alpha ($best)"

printf '\n%-18s %-8s %s\n' "test set" "metric" "score (sacrebleu signature; $choice, beam $beam, alpha $alpha)"
for test in test_2016_flickr test_2017_flickr; do
  ref="$data_root/multi30k/$test.$tgt.gz"
  [ -f "$ref" ] || { echo "skipping $test: $ref not found"; continue; }
  nmt translate "${words[@]}" --beam "$beam" --alpha "$alpha" -i "$data_root/multi30k/$test.$src.gz" -o "$prefix.$test.hyp"
  test_scores "$test" "$prefix.$test.hyp" "$ref"
done
echo "system: nmt translate ${options[$choice]} --beam $beam --alpha $alpha"
