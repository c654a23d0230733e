#!/usr/bin/env bash
# The en-de recipe's model trained by Joey NMT 2.3, by OpenNMT-py 3.5 and by nmt on the same CPU
# threads, one after the other in ROUNDS of (Joey, OpenNMT-py, nmt), each run for STEPS updates; each
# toolkit's own logged training speed (target tokens per second, the median of its logged windows
# after the first) and the wall time of each run, then the ratios of nmt to the others.
#
# The same model in all: bi-GRU encoder 256 a direction, GRU decoder 512 with Bahdanau (MLP)
# attention, input feeding and a bridge from the encoder, embeddings 256, dropout 0.2, label smoothing
# 0.1, Adam at 5e-4, gradients clipped at norm 1, float32, ~64 sentences a batch (Joey: 64 sentences,
# drawn at random, as it does not bucket; OpenNMT-py: 64 sentences from its length-sorted pools; nmt:
# the recipe's 1,050-token batches, bucketed by length); the recipe's SentencePiece model (8,000 joint
# pieces, fitted by nmt's first run) on both sides; an untied 512 x 8,000 output layer (Joey cannot
# tie a 512-wide decoder to 256-wide embeddings, so nmt runs with model.embedding.tie_target=false).
# OpenNMT-py reads with num_workers 0, so that every toolkit prepares its batches on the same thread
# (nmt and Joey tokenise the corpus before training, OpenNMT-py while it trains).
#
#   JOEY_PYTHON=/tmp/joeyenv/bin/python ONMT_PYTHON=/tmp/onmtenv/bin/python benchmarks/toolkits_side_by_side.sh
# either may be left out. Each toolkit in a virtual environment of its own (their pins are not ours):
#   python3 -m venv /tmp/joeyenv && /tmp/joeyenv/bin/pip install torch==2.13.0 joeynmt==2.3.0 importlib_metadata
#     sentencepiece==0.2.0   (Joey imports importlib_metadata without requiring it, and calls SetVocabulary,
#     which sentencepiece 0.2.3 no longer has)
#   python3 -m venv /tmp/onmtenv && /tmp/onmtenv/bin/pip install torch==2.13.0 && /tmp/onmtenv/bin/pip install
#     --no-deps opennmt-py==3.5.1 && /tmp/onmtenv/bin/pip install configargparse pyonmttok sacrebleu pyyaml
#     rapidfuzz six tensorboard pyahocorasick sentencepiece flask waitress spacy fasttext-wheel
#     (it asks for torch < 2.3, and imports every transform's module, spacy and fasttext among them)
# STEPS=300 updates a run (a multiple of 50); ROUNDS=2; THREADS=1 (OMP_NUM_THREADS of all);
# WORK=/tmp/toolkits-side-by-side (replaced at each call; a folder it did not make is refused); NMT_DATA=<data root> (default ../shared/data
# beside the checkout); a relative WORK or NMT_DATA is taken from the folder the script is called from.
set -euo pipefail
say() { echo "toolkits_side_by_side: $*" >&2; }
# WORK and NMT_DATA as the caller wrote them are relative to the caller's folder: made absolute before the cd
# below (the default data root, ../shared/data, is the checkout's neighbour, relative to the repository root)
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
WORK="$(absolute "${WORK:-/tmp/toolkits-side-by-side}")"
if [ -n "${NMT_DATA:-}" ]; then NMT_DATA="$(absolute "$NMT_DATA")"; fi
cd "$(dirname "$0")/.."
JOEY_PYTHON="${JOEY_PYTHON:-}"
ONMT_PYTHON="${ONMT_PYTHON:-}"
STEPS="${STEPS:-300}"
ROUNDS="${ROUNDS:-2}"
THREADS="${THREADS:-1}"
# numbers checked as digits before any arithmetic: there a word (STEPS=abc) is read as a variable's name
for knob in STEPS ROUNDS THREADS; do
  [[ "${!knob}" =~ ^[0-9]{1,9}$ ]] && (( 10#${!knob} >= 1 )) || { say "$knob must be a positive integer, got '${!knob}'"; exit 2; }
  printf -v "$knob" '%d' "$((10#${!knob}))"  # 0300 is 300, not octal
done
data_root="${NMT_DATA:-../shared/data}"
recipe=recipes/translation/multi30k/en-de.yaml
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
(( STEPS >= 100 && STEPS % 50 == 0 )) || { say "STEPS must be a multiple of 50 from 100 (all log every 50 updates), got $STEPS"; exit 2; }

# WORK is replaced at each call: only a folder this script made (its mark inside), or an empty or new one
if [ -e "$WORK" ] && [ -n "$(ls -A "$WORK" 2>/dev/null || echo file)" ] && [ ! -e "$WORK/.toolkits-side-by-side" ]; then
  say "$WORK is not empty and was not made by this script; it is replaced at each call, so name another WORK"; exit 2
fi

toolkits=()
if [ -n "$JOEY_PYTHON" ]; then
  "$JOEY_PYTHON" -c "import joeynmt; assert joeynmt.__version__.startswith('2.3'), joeynmt.__version__" \
    || { say "$JOEY_PYTHON has no joeynmt 2.3"; exit 2; }
  toolkits+=(joey)
fi
if [ -n "$ONMT_PYTHON" ]; then
  "$ONMT_PYTHON" -c "import onmt; assert onmt.__version__.startswith('3.5'), onmt.__version__" \
    || { say "$ONMT_PYTHON has no OpenNMT-py 3.5"; exit 2; }
  toolkits+=(onmt)
fi
[ ${#toolkits[@]} -gt 0 ] || { say "set JOEY_PYTHON, ONMT_PYTHON or both (see the header)"; exit 2; }
toolkits+=(nmt)

rm -rf "$WORK" && mkdir -p "$WORK/data" && touch "$WORK/.toolkits-side-by-side"
for split in train val; do for lang in en de; do
  gzip -dc "$data_root/multi30k/$split.$lang.gz" > "$WORK/data/$split.$lang"
done; done
failed() { say "$1 failed; the end of $2:"; tail -5 "$2" >&2; exit 1; }
median_rate() {  # the median of the rates on standard input (one a line) after the first: the first window warms up
  python -c 'import statistics, sys; r = [float(x) for x in sys.stdin.read().split()]; print(f"{statistics.median(r[1:] or r):.0f}")'
}

nmt_args=(model.embedding.tie_target=false "trainer.max_steps=$STEPS" trainer.log_every_n_steps=50
          trainer.enable_progress_bar=false trainer.precision=32-true trainer.max_epochs=1)
run_nmt() {  # $1: run directory; prints "tokens/s wall-seconds"
  local start=$SECONDS
  nmt train "$recipe" --run-dir "$1" "${nmt_args[@]}" > "$1.log" 2>&1 || failed "nmt train" "$1.log"
  local rate  # the curve nmt plot draws
  rate=$(python -c 'import sys; from nmt.plots import read_curve; print(*read_curve(sys.argv[1], "train/tokens_per_sec").values)' "$1" | median_rate)
  echo "$rate $((SECONDS - start))"
}

# the tokenizer: nmt's first run fits the recipe's SentencePiece model; the others read the same model and its pieces
say "fitting the recipe's SentencePiece model (an nmt run of 1 step)"
nmt train "$recipe" --run-dir "$WORK/nmt-tokenizer" "${nmt_args[@]}" trainer.max_steps=1 > "$WORK/nmt-tokenizer.log" 2>&1 \
  || failed "nmt train" "$WORK/nmt-tokenizer.log"
spm="$WORK/nmt-tokenizer/fitted/joint.model"
cut -f1 "$WORK/nmt-tokenizer/fitted/joint.vocab" > "$WORK/vocab.txt"
tail -n +5 "$WORK/vocab.txt" > "$WORK/vocab-onmt.txt"  # OpenNMT-py adds its own four specials

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
  echo "$(grep -oP 'Tokens per Sec:\s*\K[0-9.]+' "$1/train.log" | median_rate) $((SECONDS - start))"
}

cat > "$WORK/onmt.yaml" <<EOF
src_vocab: $WORK/vocab-onmt.txt
tgt_vocab: $WORK/vocab-onmt.txt
share_vocab: true
src_vocab_size: 8000
tgt_vocab_size: 8000
overwrite: true
data:
  corpus_1: {path_src: $WORK/data/train.en, path_tgt: $WORK/data/train.de, transforms: [sentencepiece, filtertoolong]}
  valid: {path_src: $WORK/data/val.en, path_tgt: $WORK/data/val.de, transforms: [sentencepiece]}
src_subword_model: $spm
tgt_subword_model: $spm
src_seq_length: 80
tgt_seq_length: 80
save_model: MODEL_DIR/model
save_checkpoint_steps: 1000000
train_steps: $STEPS
valid_steps: 1000000
report_every: 50
seed: 1234
world_size: 1
gpu_ranks: []
num_workers: 0
batch_type: sents
batch_size: 64
normalization: tokens
encoder_type: brnn  # enc_hid_size is split between the two directions: 256 each
decoder_type: rnn
rnn_type: GRU
enc_layers: 1
dec_layers: 1
enc_hid_size: 512
dec_hid_size: 512
word_vec_size: 256
global_attention: mlp
input_feed: 1
bridge: true
dropout: [0.2]
label_smoothing: 0.1
optim: adam
learning_rate: 0.0005
max_grad_norm: 1.0
param_init: 0
param_init_glorot: true
EOF
run_onmt() {  # $1: model directory; prints "tokens/s wall-seconds"
  local start=$SECONDS
  mkdir -p "$1" && sed "s|MODEL_DIR|$1|" "$WORK/onmt.yaml" > "$1.yaml"
  "$ONMT_PYTHON" -m onmt.bin.train -config "$1.yaml" > "$1.log" 2>&1 || failed "OpenNMT-py train" "$1.log"
  # its report lines: "...; <source>/<target> tok/s; ..."
  echo "$(grep -oP '[0-9.]+/\s*\K[0-9.]+(?= tok/s)' "$1.log" | median_rate) $((SECONDS - start))"
}

: > "$WORK/rows.tsv"
for round in $(seq "$ROUNDS"); do
  for toolkit in "${toolkits[@]}"; do
    result=$("run_$toolkit" "$WORK/$toolkit-$round")  # a failed run exits here (set -e)
    printf '%s\t%s\t%s\n' "$toolkit" "$round" "${result// /$'\t'}" | tee -a "$WORK/rows.tsv"
  done
done
python - "$WORK/rows.tsv" "$STEPS" "$THREADS" <<'PY'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
names = list(dict.fromkeys(r[0] for r in rows))
rate = {k: statistics.median(float(r[2]) for r in rows if r[0] == k) for k in names}
wall = {k: statistics.median(float(r[3]) for r in rows if r[0] == k) for k in names}
print(f"{sys.argv[2]} updates a run, {sys.argv[3]} thread(s), medians of {len(rows) // len(names)} runs each")
for k in names:
    print(f"  {k:<5} {rate[k]:7.0f} target tokens/s   run wall {wall[k]:5.0f} s")
for k in names[:-1]:
    print(f"  nmt / {k}: x{rate['nmt'] / rate[k]:.2f} tokens/s")
PY
