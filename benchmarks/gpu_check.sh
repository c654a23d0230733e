#!/usr/bin/env bash
# One GPU check (issue 13), under one global deadline, printing one table last:
#   1. the GPU tests (bf16 training learns; a GPU run translates alike on the CPU)
#   2. training speed of the en-de model, fp32 and bf16, eager and with the decoder step compiled
#      (model.compile), side by side on the same batches; and at 4x and 16x the recipe's batch
#      (nmt@N, bf16@N): tokens/s that grows with the batch means the step is launch-bound
#   3. a short run of the recipe's GPU variant (run.sh with GPU=1: bf16, 4x batch) with
#      its test BLEU (test_2016_flickr, test_2017_flickr)
#   4. beam-5 and greedy translation of test_2016_flickr (1,000 sentences), timed after the model is loaded
#   5. in the time left: training speed with static shapes (batches padded to STATIC lengths, the step
#      compiled once per shape: model.compile: static, CUDA graphs) beside the eager rows
#
# On the GPU machine, from the checkout, after the set-up in ../shared/GPU.md (wheels and data under
# .gpu/, PYTHONPATH and NMT_DATA exported):   benchmarks/gpu_check.sh
# Dry run on a CPU (what a session without a GPU runs to check the script itself):
#   DEVICE=cpu BUDGET=00:00:00:40 STEPS=2 SIZES=2100 DEADLINE=480 benchmarks/gpu_check.sh
# Everything goes to $OUT (default gpu-check/): the logs, table.tsv and the run directory.
# Through the device tool: prepare .gpu/ as ../shared/GPU.md says (pydantic wheels, multi30k data),
# then one `run` with carry [".gpu"] and the command
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl &&
#   python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . &&
#   export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH NMT_DATA=$PWD/.gpu/data && rm -rf runs &&
#   OUT=$OUT/gpu-check benchmarks/gpu_check.sh
# (timeout_s 540); the table and logs come back under files_at. Dry run on this CPU: 262 s, every row
# filled, beside two trainings (2026-11-28; SIZES=2100, STEPS=2).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"            # cuda or cpu
BUDGET="${BUDGET:-00:00:03:00}"     # training time of the recipe run (DD:HH:MM:SS)
STEPS="${STEPS:-30}"                # training steps per variant of the speed benchmark
SIZES="${SIZES:-4200 16800}"        # batch sizes (tokens) measured beside the recipe's 1050
STATIC="${STATIC:-16 24 32 48 81}"  # padded lengths of the static-shape rows (data.pad_lengths)
DEADLINE="${DEADLINE:-460}"         # seconds for the whole script (the device lends 8 minutes a try)
OUT="${OUT:-gpu-check}"
start=$(date +%s)
mkdir -p "$OUT"
: > "$OUT/table.tsv"
left() { local l=$(( DEADLINE - ($(date +%s) - start) )); [ "$l" -gt 5 ] && echo "$l" || echo 5; }
row() { printf '%s\t%s\n' "$1" "$2" >> "$OUT/table.tsv"; echo "== $1: $2"; }
accelerator=$([ "$DEVICE" = cuda ] && echo gpu || echo cpu)
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/device.txt"
row "device" "$(cat "$OUT/device.txt")"

# 1. GPU tests
if [ "$DEVICE" = cuda ]; then
    timeout "$(( $(left) / 4 ))" python -m pytest -q -m gpu tests/test_gpu.py > "$OUT/gpu_tests.log" 2>&1
    row "GPU tests (pytest -m gpu tests/test_gpu.py)" "$(tail -1 "$OUT/gpu_tests.log")"
fi

# 2. training speed, variants alternating step by step on the same batches
timeout "$(( $(left) / 3 ))" python benchmarks/train_speed.py recipes/translation/multi30k/en-de.yaml \
    --steps "$STEPS" --device "$DEVICE" --compile --warmup 3 --batch-tokens $SIZES > "$OUT/train_speed.log" 2>&1
if ! grep -q "target tokens/s" "$OUT/train_speed.log"; then  # compile failed there: the eager variants alone
    row "train speed with --compile" "failed: $(grep -E 'Error|error' "$OUT/train_speed.log" | tail -1 | cut -c1-160)"
    timeout "$(( $(left) / 4 ))" python benchmarks/train_speed.py recipes/translation/multi30k/en-de.yaml \
        --steps "$STEPS" --device "$DEVICE" --batch-tokens $SIZES > "$OUT/train_speed.log" 2>&1
fi
while read -r name rate _ _ ratio; do
    row "train speed: $name" "$rate target tokens/s ($ratio)"
done < <(grep -E "target tokens/s" "$OUT/train_speed.log")

# 3. the recipe, bf16, a short budget; BLEU of both test sets
rm -rf "$OUT/run-ende"
SECONDS=0
GPU=1 RUN_DIR="$OUT/run-ende" BUDGET="$BUDGET" timeout "$(( $(left) - 60 ))" recipes/translation/multi30k/run.sh en-de \
    "trainer.accelerator=$accelerator" trainer.devices=1 > "$OUT/recipe.log" 2>&1
row "en-de recipe, GPU=1 variant, budget $BUDGET (wall ${SECONDS}s)" \
    "$(grep -E '^test_201[67]_flickr +bleu' "$OUT/recipe.log" | awk '{printf "%s BLEU %s; ", $1, $3}')"

# the best dev BLEU and when it came (the rows of `nmt plot` that run.sh prints: minutes, step, val/bleu)
row "en-de recipe, best dev BLEU" "$(grep -E '^dev curve: +[0-9.]+ +[0-9]+ +[0-9.]+$' "$OUT/recipe.log" |
    awk '$5 > best {best = $5; at = $3; step = $4} END {if (at != "") printf "%.2f after %s min of training (step %s)", best, at, step}')"

# 4. translation of test_2016_flickr, timed after loading
timeout "$(left)" python - "$OUT/run-ende" "$DEVICE" > "$OUT/translate_speed.log" 2>&1 <<'EOF'
import gzip, sys, time
import torch
from nmt.recipe import default_data_root
from nmt.runs import load_run
from nmt.translate import translate_lines

run, device = sys.argv[1], sys.argv[2]
task = load_run(run, device=device)
lines = gzip.open(default_data_root() / "multi30k" / "test_2016_flickr.en.gz", "rt", encoding="utf-8").read().splitlines()
with torch.inference_mode():
    translate_lines(task, lines[:64], 5, 1, 0.6, 4000, 2.0)  # warm-up
    for beam in (5, 1):
        if device == "cuda":
            torch.cuda.synchronize()
        begin = time.perf_counter()
        translate_lines(task, lines, beam, 1, 0.6, 4000, 2.0)
        if device == "cuda":
            torch.cuda.synchronize()
        print(f"beam {beam}: {len(lines)} sentences in {time.perf_counter() - begin:.2f} s")
EOF
while read -r line; do row "translate test_2016_flickr" "$line"; done < <(grep -E "^beam" "$OUT/translate_speed.log")

# 5. static shapes, last (the most speculative lever, in the time left): the same batches padded to a
#    few shapes, the decoder step compiled once per shape (CUDA graphs on CUDA), beside the eager rows
timeout "$(left)" python benchmarks/train_speed.py recipes/translation/multi30k/en-de.yaml \
    --steps "$STEPS" --device "$DEVICE" --warmup 3 --static $STATIC > "$OUT/train_speed_static.log" 2>&1
if grep -q "target tokens/s" "$OUT/train_speed_static.log"; then
    row "static shapes ($STATIC)" "$(grep -E '^static:' "$OUT/train_speed_static.log")"
    while read -r name rate _ _ ratio; do
        row "train speed, static run: $name" "$rate target tokens/s ($ratio)"
    done < <(grep -E "^  (nmt|bf16|static|bf16\+static) +[0-9]+ target tokens/s" "$OUT/train_speed_static.log")
else
    row "train speed with --static $STATIC" "did not finish: $(grep -E 'Error|error|^static:' "$OUT/train_speed_static.log" | tail -1 | cut -c1-160)"
fi

echo
echo "gpu_check: $(( $(date +%s) - start )) s in all (deadline $DEADLINE s); logs in $OUT/"
column -t -s $'\t' "$OUT/table.tsv"
