#!/usr/bin/env bash
# The en-de recipe's model trained by Joey NMT 2.3 and by nmt on the same CPU threads, one after the
# other in ROUNDS of (Joey, nmt), each run for STEPS updates; each toolkit's own logged training speed
# (target tokens per second, the median of its logged windows after the first) and the wall time of
# each run, then the ratio nmt / Joey.
#
# The same model in both: bi-GRU encoder 256 a direction, GRU decoder 512 with Bahdanau attention,
# input feeding and a bridge from the encoder, embeddings 256, dropout 0.2 (embeddings, encoder,
# decoder), label smoothing 0.1, Adam at 5e-4, gradients clipped at norm 1, float32, and ~64
# sentences a batch (Joey: 64 sentences a batch, drawn at random, as it does not bucket; nmt: the
# recipe's 1,050-token batches, bucketed by length); the recipe's SentencePiece model (8,000 joint
# pieces, fitted by nmt's first run) on both sides; an untied 512 x 8,000 output layer (Joey cannot
# tie a 512-wide decoder to 256-wide embeddings, so nmt runs with model.embedding.tie_target=false).
#
#   JOEY_PYTHON=/tmp/joeyenv/bin/python benchmarks/joey_side_by_side.sh
# with Joey NMT in a virtual environment of its own (its pins are not ours), e.g.
#   python3 -m venv /tmp/joeyenv && /tmp/joeyenv/bin/pip install torch==2.13.0 joeynmt==2.3.0 importlib_metadata \
#     sentencepiece==0.2.0   (Joey imports importlib_metadata without requiring it, and calls SetVocabulary,
#     which sentencepiece 0.2.3 no longer has)
# STEPS=300 updates a run (a multiple of 50); ROUNDS=2; THREADS=1 (OMP_NUM_THREADS of both); WORK=/tmp/joey-side-by-side
# (replaced at each call); NMT_DATA=<data root> (default ../shared/data beside the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
JOEY_PYTHON="${JOEY_PYTHON:?set JOEY_PYTHON to a python with joeynmt 2.3 installed (see the header)}"
STEPS="${STEPS:-300}"
ROUNDS="${ROUNDS:-2}"
THREADS="${THREADS:-1}"
WORK="${WORK:-/tmp/joey-side-by-side}"
data_root="${NMT_DATA:-../shared/data}"
recipe=recipes/translation/multi30k/en-de.yaml
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
(( STEPS >= 100 && STEPS % 50 == 0 )) || { echo "joey_side_by_side: STEPS must be a multiple of 50 from 100 (both log every 50 updates), got $STEPS" >&2; exit 2; }

"$JOEY_PYTHON" -c "import joeynmt; assert joeynmt.__version__.startswith('2.3'), joeynmt.__version__" \
  || { echo "joey_side_by_side: $JOEY_PYTHON has no joeynmt 2.3" >&2; exit 2; }
rm -rf "$WORK" && mkdir -p "$WORK/data"
for split in train val; do for lang in en de; do
  gzip -dc "$data_root/multi30k/$split.$lang.gz" > "$WORK/data/$split.$lang"
done; done

nmt_args=(model.embedding.tie_target=false "trainer.max_steps=$STEPS" trainer.log_every_n_steps=50
          trainer.enable_progress_bar=false trainer.precision=32-true trainer.max_epochs=1)
failed() { echo "joey_side_by_side: $1 failed; the end of $2:" >&2; tail -5 "$2" >&2; exit 1; }
run_nmt() {  # $1: run directory; prints "tokens/s wall-seconds"
  local start=$SECONDS
  nmt train "$recipe" --run-dir "$1" "${nmt_args[@]}" > "$1.log" 2>&1 || failed "nmt train" "$1.log"
  local rate
  rate=$(python - "$1/logs/metrics.csv" <<'EOF'
import csv, statistics, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r.get("train/tokens_per_sec")]
print(f"{statistics.median(float(r['train/tokens_per_sec']) for r in rows[1:] or rows):.0f}")
EOF
)
  echo "$rate $((SECONDS - start))"
}

# the tokenizer: nmt's first run fits the recipe's SentencePiece model; Joey reads the same model and its pieces
echo "fitting the recipe's SentencePiece model (an nmt run of 1 step)" >&2
nmt train "$recipe" --run-dir "$WORK/nmt-tokenizer" "${nmt_args[@]}" trainer.max_steps=1 > "$WORK/nmt-tokenizer.log" 2>&1 \
  || failed "nmt train" "$WORK/nmt-tokenizer.log"
spm="$WORK/nmt-tokenizer/fitted/joint.model"
cut -f1 "$WORK/nmt-tokenizer/fitted/joint.vocab" > "$WORK/vocab.txt"

cat > "$WORK/joey.yaml" <<EOF
name: multi30k-en-de-joey
joeynmt_version: "2.3.0"
use_cuda: false
fp16: false
random_seed: 1234
data:
  train: $WORK/data/train
  dev: $WORK/data/val
  dataset_type: plain
  random_dev_subset: 100
  src: {lang: en, level: bpe, tokenizer_type: sentencepiece, tokenizer_cfg: {model_file: $spm}, voc_file: $WORK/vocab.txt, max_length: 80, lowercase: false}
  trg: {lang: de, level: bpe, tokenizer_type: sentencepiece, tokenizer_cfg: {model_file: $spm}, voc_file: $WORK/vocab.txt, max_length: 80, lowercase: false}
testing:
  beam_size: 1
training:
  model_dir: MODEL_DIR
  overwrite: true
  optimizer: adam
  learning_rate: 0.0005
  # Joey 2.3 requires a scheduler, and its plateau passes ReduceLROnPlateau's verbose, which torch 2.13
  # no longer takes: an exponential decay by a factor of 1 keeps the rate constant (as nmt's plateau
  # does before its first validation)
  scheduling: exponential
  decrease_factor: 1.0
  learning_rate_min: 1.0e-8
  label_smoothing: 0.1
  clip_grad_norm: 1.0
  batch_size: 64
  batch_type: sentence
  updates: $STEPS
  epochs: 1
  logging_freq: 50
  validation_freq: $STEPS  # once, at the end (Joey tests its best checkpoint after training), on 100 dev sentences
  shuffle: true
  num_workers: 0
model:
  initializer: xavier_uniform
  tied_embeddings: false
  tied_softmax: false
  encoder:
    type: recurrent
    rnn_type: gru
    embeddings: {embedding_dim: 256, dropout: 0.2}
    hidden_size: 256
    bidirectional: true
    num_layers: 1
    dropout: 0.2
  decoder:
    type: recurrent
    rnn_type: gru
    embeddings: {embedding_dim: 256, dropout: 0.2}
    hidden_size: 512
    attention: bahdanau
    input_feeding: true
    init_hidden: bridge
    num_layers: 1
    dropout: 0.2
    hidden_dropout: 0.2
EOF
run_joey() {  # $1: model directory; prints "tokens/s wall-seconds"
  local start=$SECONDS
  sed "s|MODEL_DIR|$1|" "$WORK/joey.yaml" > "$1.yaml"
  "$JOEY_PYTHON" -m joeynmt train "$1.yaml" > "$1.log" 2>&1 || failed "joeynmt train" "$1.log"
  local rate
  rate=$(python - "$1/train.log" <<'EOF'
import re, statistics, sys
rates = [float(m) for m in re.findall(r"Tokens per Sec:\s*([0-9.]+)", open(sys.argv[1]).read())]
print(f"{statistics.median(rates[1:] or rates):.0f}")
EOF
)
  echo "$rate $((SECONDS - start))"
}

: > "$WORK/rows.tsv"
for round in $(seq "$ROUNDS"); do
  for toolkit in joey nmt; do
    result=$("run_$toolkit" "$WORK/$toolkit-$round")  # a failed run exits here (set -e)
    printf '%s\t%s\t%s\n' "$toolkit" "$round" "${result// /$'\t'}" | tee -a "$WORK/rows.tsv"
  done
done
python - "$WORK/rows.tsv" "$STEPS" "$THREADS" <<'EOF'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
rate = {k: statistics.median(float(r[2]) for r in rows if r[0] == k) for k in ("joey", "nmt")}
wall = {k: statistics.median(float(r[3]) for r in rows if r[0] == k) for k in ("joey", "nmt")}
print(f"{sys.argv[2]} updates a run, {sys.argv[3]} thread(s), medians of {len(rows) // 2} runs each")
for k in ("joey", "nmt"):
    print(f"  {k:<5} {rate[k]:7.0f} target tokens/s   run wall {wall[k]:5.0f} s")
print(f"  nmt / joey: x{rate['nmt'] / rate['joey']:.2f} tokens/s")
EOF
