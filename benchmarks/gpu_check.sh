#!/usr/bin/env bash
# One GPU check (issue 13), under one global deadline, printing one table last. Its parts (PARTS, in
# this order; the default is all of them):
#   speed      training speed of the en-de model, fp32 and bf16, eager, with the decoder step compiled
#              (model.compile) and with the teacher-forced loop compiled in chunks (model.compile: loop),
#              each eager row with its operations per target position, the decoder's other ways (its cell under bf16: bf16-bf16cell, bf16-writtencell;
#              teacher forcing hoisted: hoisted, bf16-hoisted; and with the shared weights' gradients once for all positions:
#              shared, bf16-shared), side by side on the same batches; and at 4x, 16x and 64x the recipe's
#              batch (nmt@N, bf16@N): tokens/s that grows with the batch means the step is launch-bound;
#              then a few steps of each PROFILE variant under torch.profiler (train_speed.py --profile: the
#              kernels a step, the share of the step the device was busy, the kernels and operations that
#              took it; on CUDA bf16-bf16cell is the cell the issue measured slow)
#   tests      the GPU tests (bf16 training learns; a GPU run translates alike on the CPU)
#   static     training speed with static shapes (batches padded to STATIC lengths, the step compiled
#              once per shape: model.compile: static, CUDA graphs) beside the eager rows
#   recipe     a short run of the recipe's GPU variant (run.sh with GPU=1: bf16, 4x batch), with the
#              overrides that this call's speed rows argue for (benchmarks/gpu_args.py, AUTO_ARGS=1: fp32
#              where bf16 is slower, the fastest teacher forcing way, the compiled loop, a larger batch;
#              a row says which and why), then RECIPE_ARGS; its test BLEU and best dev BLEU
#   translate  beam-5 and greedy translation of test_2016_flickr (1,000 sentences) by the recipe's run,
#              timed after the model is loaded, eager and with the decoder step compiled (--compile)
#   ensemble   (issue 16; not in the default) recipes/translation/multi30k/ensemble.sh on the GPU: two
#              members (MEMBER_A, MEMBER_B: dropout 0.3, two seeds) trained at once for ENSEMBLE_BUDGET
#              each on the one GPU (a launch-bound step leaves it room), the system and its length
#              penalty chosen on dev, both test sets read once
# A part cut by the deadline leaves what it measured: the speed parts print the steps timed so far.
#
# On the GPU machine, from the checkout, after the set-up in ../shared/GPU.md (wheels and data under
# .gpu/, PYTHONPATH and NMT_DATA exported):   benchmarks/gpu_check.sh
# Dry run on a CPU (what a session without a GPU runs to check the script itself):
#   DEVICE=cpu BUDGET=00:00:00:40 STEPS=2 SIZES=2100 DEADLINE=900 benchmarks/gpu_check.sh
# and of the ensemble part, on a cut of the data (600 training pairs, 30 of each other set, in NMT_DATA)
# with small members: DEVICE=cpu PARTS=ensemble KEEP=2 ENSEMBLE_BUDGET=00:00:01:00 ALPHAS="0.6 1.0"
#   ENSEMBLE_ARGS="data.batch_tokens=300 model.embedding.size=32 model.encoder.hidden_size=32
#   model.decoder.hidden_size=64 data.tokenizer.vocab_size=500 trainer.val_check_interval=2" (310 s beside two trainings)
# The logs and table.tsv go to $OUT (default gpu-check/; eight files at most, what the device tool
# brings back); the run directories to $RUN_ROOT (default /tmp/gpu-check-runs), outside it, under names of
# its own (gpu-check-ende, gpu-check-ens-a, gpu-check-ens-b), replaced at each call.
# Through the device tool: prepare .gpu/ as ../shared/GPU.md says (pydantic wheels, multi30k en and de),
# then `run` with carry [".gpu"] and the command
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl &&
#   python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . &&
#   export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH NMT_DATA=$PWD/.gpu/data && rm -rf runs &&
#   OUT=$OUT benchmarks/gpu_check.sh
# (timeout_s DEADLINE + 50). Fifteen minutes of device time a session, starts included (a minute or more
# each), and the machine goes back 30 s after a call: two calls, the second sent at once after the first,
#   PARTS="speed tests static" DEADLINE=300, then PARTS="recipe translate" DEADLINE=330 with
#   RECIPE_ARGS="$(python benchmarks/gpu_args.py <first call's files>/train_speed.log | head -1)" (computed here, in
#   a second: the overrides its rows argue for);
# or one call with every part (the default PARTS) and DEADLINE=540, timeout_s 590: the recipe run takes
# the overrides of the same call's rows (AUTO_ARGS=1), and static is skipped where the time left is short.
set -uo pipefail
# OUT and RUN_ROOT name folders from where the script is called, not from the checkout it moves to below
# (a relative RUN_ROOT made it replace gpu-check-ende inside the checkout).
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
OUT="$(absolute "${OUT:-gpu-check}")"
RUN_ROOT="$(absolute "${RUN_ROOT:-/tmp/gpu-check-runs}")"
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"            # cuda or cpu
PARTS="${PARTS:-speed tests static recipe translate}"
BUDGET="${BUDGET:-00:00:03:00}"     # training time of the recipe run (DD:HH:MM:SS)
RECIPE_ARGS="${RECIPE_ARGS:-}"      # overrides of the recipe run after GPU=1's and the chosen ones (e.g. data.batch_tokens=16800 optim.lr=0.002)
AUTO_ARGS="${AUTO_ARGS:-1}"         # 1: the recipe run also takes the overrides this call's speed rows argue for (gpu_args.py)
ENSEMBLE_BUDGET="${ENSEMBLE_BUDGET:-00:00:04:00}"  # training time of each ensemble member (they train at once)
ENSEMBLE_ARGS="${ENSEMBLE_ARGS:-data.batch_tokens=4200 optim.lr=0.001}"  # both members' overrides (run.sh's GPU=1 batch)
MEMBER_A="${MEMBER_A:-seed=1 model.embedding.dropout=0.3 model.encoder.dropout=0.3 model.decoder.hidden_dropout=0.3}"
MEMBER_B="${MEMBER_B:-seed=2 model.embedding.dropout=0.3 model.encoder.dropout=0.3 model.decoder.hidden_dropout=0.3}"
STEPS="${STEPS:-30}"                # training steps per variant of the speed benchmark
SIZES="${SIZES:-4200 16800 67200}"  # batch sizes (tokens) measured beside the recipe's 1050
# variants profiled after the timed steps: fp32 and bf16 as this device trains by default, bf16 the other
# teacher forcing way (shared on CUDA, stepwise on the CPU) and with the cell this device does not use
PROFILE="${PROFILE:-nmt bf16 $([ "$DEVICE" = cuda ] && echo bf16-shared bf16-bf16cell || echo bf16-stepwise bf16-f32cell)}"
STATIC="${STATIC:-16 24 32 48 81}"  # padded lengths of the static-shape rows (data.pad_lengths)
DEADLINE="${DEADLINE:-540}"         # seconds for the whole script (one device call: 10 minutes at most)
for part in $PARTS; do  # a mistyped part ran nothing and exited 0, which a 15-minute device call cannot afford
  case "$part" in speed|tests|static|recipe|translate|ensemble) ;;
    *) echo "gpu_check.sh: PARTS: unknown part '$part' (speed, tests, static, recipe, translate, ensemble)" >&2; exit 2 ;;
  esac
done
run_dir="$RUN_ROOT/gpu-check-ende"  # this script's own names: it replaces them, nothing else there
start=$(date +%s)
mkdir -p "$OUT" "$RUN_ROOT"
: > "$OUT/table.tsv"
left() { local l=$(( DEADLINE - ($(date +%s) - start) )); [ "$l" -gt 5 ] && echo "$l" || echo 5; }
at_most() { local l; l=$(left); [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }
but() { local l=$(( $(left) - $1 )); [ "$l" -gt 1 ] && echo "$l" || echo 1; }  # left less $1, at least 1 (timeout 0: no limit)
row() { printf '%s\t%s\n' "$1" "$2" >> "$OUT/table.tsv"; echo "== $1: $2"; }
want() { [[ " $PARTS " == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1
accelerator=$([ "$DEVICE" = cuda ] && echo gpu || echo cpu)
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/device.txt"
row "device" "$(cat "$OUT/device.txt")"
speed_rows() {  # the rows of one train_speed log: label prefix, log, the variants' pattern
    while read -r name rate _ _ ratio; do
        # shellcheck disable=SC2086  # $ratio unquoted: the ratio and the operations per position, spaces squeezed
        row "$1: $name" "$rate target tokens/s ($(echo $ratio))"
    done < <(grep -E "^  $3 +[0-9]+ target tokens/s" "$2")
    grep -E "^stopped by SIGTERM" "$2" | while read -r line; do row "$1" "$line (deadline)"; done
}

if want speed; then  # variants alternating step by step on the same batches
    # shellcheck disable=SC2086  # SIZES and PROFILE are words
    timeout "$(at_most 200)" python benchmarks/train_speed.py recipes/translation/multi30k/en-de.yaml \
        --steps "$STEPS" --device "$DEVICE" --compile --warmup 3 --batch-tokens $SIZES --profile $PROFILE \
        > "$OUT/train_speed.log" 2>&1
    if ! grep -q "target tokens/s" "$OUT/train_speed.log"; then  # compile failed or was too slow: eager alone
        row "train speed with --compile" "failed: $(grep -E 'Error|error|SIGTERM' "$OUT/train_speed.log" | tail -1 | cut -c1-160)"
        # shellcheck disable=SC2086  # (no --profile: a variant it names that is not measured stops the run)
        timeout "$(at_most 60)" python benchmarks/train_speed.py recipes/translation/multi30k/en-de.yaml \
            --steps "$STEPS" --device "$DEVICE" --batch-tokens $SIZES > "$OUT/train_speed.log" 2>&1
    fi
    speed_rows "train speed" "$OUT/train_speed.log" "[^ ]+"
    # each profiled variant's summary: its kernels a step and how much of the step the device was busy
    grep -E "^profile [^ ]+: " "$OUT/train_speed.log" | while IFS= read -r line; do row "${line%%: *}" "${line#*: }"; done
fi

if want tests && [ "$DEVICE" = cuda ]; then
    timeout "$(at_most 120)" python -m pytest -q -m gpu tests/test_gpu.py > "$OUT/gpu_tests.log" 2>&1
    row "GPU tests (pytest -m gpu tests/test_gpu.py)" "$(tail -1 "$OUT/gpu_tests.log")"
fi

static_time=$(( $(left) - $(want recipe && echo 280 || echo 0) - $(want translate && echo 30 || echo 0) ))
if want static && [ "$static_time" -lt 30 ]; then  # (timeout 0 would mean no limit at all)
    row "train speed with --static $STATIC" "skipped: ${static_time}s left for it"
elif want static; then  # the same batches padded to a few shapes, the decoder step compiled once per shape
    timeout "$static_time" python benchmarks/train_speed.py \
        recipes/translation/multi30k/en-de.yaml --steps "$STEPS" --device "$DEVICE" --warmup 3 --static $STATIC \
        > "$OUT/train_speed_static.log" 2>&1
    row "static shapes ($STATIC)" "$(grep -E '^static:' "$OUT/train_speed_static.log" || echo 'the batches were not made in time')"
    if grep -q "target tokens/s" "$OUT/train_speed_static.log"; then
        speed_rows "train speed, static run" "$OUT/train_speed_static.log" "(nmt|bf16|static|bf16\+static)"
    else
        row "train speed with --static $STATIC" "did not finish: $(grep -E 'Error|error|SIGTERM' "$OUT/train_speed_static.log" | tail -1 | cut -c1-160)"
    fi
fi

if want recipe; then  # the recipe's GPU variant, a short budget; BLEU of both test sets
    chosen=""  # the overrides this call's speed rows argue for (benchmarks/gpu_args.py), before RECIPE_ARGS
    if [ "$AUTO_ARGS" = 1 ] && grep -qs "target tokens/s" "$OUT/train_speed.log"; then
        # shellcheck disable=SC2086
        choice=$(python benchmarks/gpu_args.py "$OUT/train_speed.log" --sizes $SIZES)  # the overrides, then why
        chosen=$(head -1 <<< "$choice")
        row "recipe overrides chosen from the speed rows" "${chosen:-none} ($(tail -n +2 <<< "$choice" | paste -sd ';'))"
    fi
    rm -rf "$run_dir"
    SECONDS=0
    # shellcheck disable=SC2086
    GPU=1 RUN_DIR="$run_dir" BUDGET="$BUDGET" timeout "$(but 30)" recipes/translation/multi30k/run.sh en-de \
        "trainer.accelerator=$accelerator" trainer.devices=1 $chosen $RECIPE_ARGS > "$OUT/recipe.log" 2>&1
    row "en-de recipe, GPU=1 $chosen $RECIPE_ARGS, budget $BUDGET (wall ${SECONDS}s)" \
        "$(grep -E '^test_201[67]_flickr +bleu' "$OUT/recipe.log" | awk '{printf "%s BLEU %s; ", $1, $3}')"
    # the best dev BLEU and when it came (the rows of `nmt plot` that run.sh prints: minutes, step, val/bleu)
    row "en-de recipe, best dev BLEU" "$(grep -E '^dev curve: +[0-9.]+ +[0-9]+ +[0-9.]+$' "$OUT/recipe.log" |
        awk '$5 > best {best = $5; at = $3; step = $4} END {if (at != "") printf "%.2f after %s min of training (step %s)", best, at, step}')"
    row "en-de recipe, end of training" "$(grep -oE 'finished [^:]*: [^;]*' "$OUT/recipe.log" | tail -1)"
    timeout 30 nmt plot "$run_dir" train/tokens_per_sec 2>&1 | sed 's/^/tokens_per_sec curve: /' >> "$OUT/recipe.log"
    row "en-de recipe, logged train/tokens_per_sec" "$(grep -E '^tokens_per_sec curve: +[0-9.]+ +[0-9]+ +[0-9.]+$' "$OUT/recipe.log" |
        awk '{print $5}' | sort -n | awk '{v[NR] = $1} END {if (NR) printf "median %.0f over %d points", v[int((NR + 1) / 2)], NR}')"
fi

if want translate; then  # translation of test_2016_flickr, timed after loading
    timeout "$(left)" python - "$run_dir" "$DEVICE" > "$OUT/translate_speed.log" 2>&1 <<'EOF'
import gzip, sys, time
import torch
from nmt.recipe import default_data_root
from nmt.runs import load_run
from nmt.translate import translate_lines

run, device = sys.argv[1], sys.argv[2]
task = load_run(run, device=device)
lines = gzip.open(default_data_root() / "multi30k" / "test_2016_flickr.en.gz", "rt", encoding="utf-8").read().splitlines()
with torch.inference_mode():
    for way in ("eager", "compiled"):  # compiled: nmt translate --compile (the decoder step through torch.compile)
        task.decoder.compile_step(way == "compiled")
        for beam in (5, 1):  # warm-up (and compilation) first, on a few lines
            translate_lines(task, lines[:64], beam, 1, 0.6, 4000, 2.0)
        for beam in (5, 1):
            if device == "cuda":
                torch.cuda.synchronize()
            begin = time.perf_counter()
            translate_lines(task, lines, beam, 1, 0.6, 4000, 2.0)
            if device == "cuda":
                torch.cuda.synchronize()
            print(f"{way} beam {beam}: {len(lines)} sentences in {time.perf_counter() - begin:.2f} s", flush=True)
EOF
    row "translate test_2016_flickr" "$(grep -E "^(eager|compiled) beam" "$OUT/translate_speed.log" | paste -sd ';' || true)"
fi

if want ensemble; then  # issue 16 on a GPU: two members trained at once on the one GPU, chosen on dev, tested once
    rm -rf "$RUN_ROOT/gpu-check-ens-a" "$RUN_ROOT/gpu-check-ens-b"
    SECONDS=0
    # shellcheck disable=SC2086  # ENSEMBLE_ARGS are words
    BUDGET="$ENSEMBLE_BUDGET" RUN_PREFIX="$RUN_ROOT/gpu-check-ens" THREADS=4 MEMBER_A="$MEMBER_A" MEMBER_B="$MEMBER_B" \
        timeout "$(but 5)" recipes/translation/multi30k/ensemble.sh en-de "trainer.accelerator=$accelerator" \
        trainer.devices=1 $ENSEMBLE_ARGS > "$OUT/ensemble.log" 2>&1
    row "ensemble of two members, $ENSEMBLE_BUDGET each at once (wall ${SECONDS}s)" \
        "$(grep -E '^chosen' "$OUT/ensemble.log" | paste -sd ';'); $(grep -E '^test_201[67]_flickr +bleu' "$OUT/ensemble.log" |
        awk '{printf "%s BLEU %s; ", $1, $3}')"
fi

echo
echo "gpu_check: $(( $(date +%s) - start )) s in all (deadline $DEADLINE s); logs in $OUT/, the run in $run_dir"
column -t -s $'\t' "$OUT/table.tsv"
