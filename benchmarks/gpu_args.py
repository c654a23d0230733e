"""The recipe overrides that a train_speed log argues for: what benchmarks/gpu_check.sh trains its GPU
recipe run with, chosen in the same device call as the speed rows (a second call starts a new machine).

    python benchmarks/gpu_args.py gpu-check/train_speed.log [--sizes 4200 16800 67200]

Prints one line of overrides (after run.sh's GPU=1 ones: bf16, 4200-token batches, lr 0.001; empty
where nothing is chosen), then one line of reasons per choice. The rules, each on the rows of one log, so that
every rate compared was measured side by side:
  precision        float32 (trainer.precision=32-true) where bf16 is slower than float32 at the
                   first of --sizes, the GPU variant's batch
  teacher forcing  of the ways measured in that precision (the default's row, and the stepwise,
                   hoisted and shared rows), the fastest, where it beats the default by GAIN
  compiled loop    model.compile=loop where its row in that precision beats the fastest eager way by
                   GAIN (the loop runs its own teacher forcing, so that choice is dropped)
  batch            the next of --sizes, with the learning rate x2 (square-root rule), where its
                   rate in that precision is BATCH_GAIN times the first size's (a launch-bound step)
A row that is missing (cut by a deadline) chooses nothing.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

GAIN = 1.05  # a way or the loop must be this much faster than the default to be chosen
BATCH_GAIN = 1.5  # tokens/s at the next batch size over the GPU variant's, for the larger batch
GPU_LR = 0.001  # run.sh GPU=1's learning rate at its batch (the first of --sizes)
WAYS = ("stepwise", "hoisted", "shared")


def rates(log: str) -> dict[str, float]:
    """name -> target tokens/s of a train_speed log's table."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^  (\S+) +([0-9.]+) target tokens/s", log, re.M)}


def choose(rate: dict[str, float], sizes: list[int]) -> tuple[list[str], list[str]]:
    """(overrides, reasons) by the rules of the module's docstring."""
    overrides, reasons = [], []
    first = sizes[0] if sizes else None
    fp32, bf16 = rate.get(f"nmt@{first}"), rate.get(f"bf16@{first}")
    low = not (fp32 and bf16 and bf16 < fp32)
    if not low:
        overrides.append("trainer.precision=32-true")
        reasons.append(f"float32: bf16@{first} {bf16:.0f} < nmt@{first} {fp32:.0f} tokens/s")
    default = "bf16" if low else "nmt"
    prefix = "bf16-" if low else ""
    if default not in rate:
        return overrides, reasons + [f"no {default} row: nothing else chosen"]
    ways = {way: rate[prefix + way] for way in WAYS if prefix + way in rate}
    best_way, best = max(ways.items(), key=lambda item: item[1], default=(None, rate[default]))
    if best_way and best > GAIN * rate[default]:
        overrides.append(f"model.decoder.teacher_forcing={best_way}")
        reasons.append(f"teacher forcing {best_way}: {prefix}{best_way} {best:.0f} > {GAIN} x {default} {rate[default]:.0f}")
    else:
        best = rate[default]
    loop = rate.get(f"{default}+loop" if low else "loop")
    if loop and loop > GAIN * best:
        overrides = [o for o in overrides if not o.startswith("model.decoder.teacher_forcing=")] + ["model.compile=loop"]
        reasons.append(f"compiled loop: {loop:.0f} > {GAIN} x {best:.0f} (the fastest eager way)")
    name = "bf16" if low else "nmt"
    if len(sizes) > 1 and rate.get(f"{name}@{sizes[1]}", 0) > BATCH_GAIN * rate.get(f"{name}@{first}", float("inf")):
        overrides += [f"data.batch_tokens={sizes[1]}", f"optim.lr={GPU_LR * (sizes[1] / first) ** 0.5:g}"]
        reasons.append(f"batch {sizes[1]}: {name}@{sizes[1]} {rate[f'{name}@{sizes[1]}']:.0f} > {BATCH_GAIN} x "
                       f"{name}@{first} {rate[f'{name}@{first}']:.0f} tokens/s (lr by the square-root rule)")
    return overrides, reasons


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4200, 16800, 67200])
    args = parser.parse_args(argv)
    overrides, reasons = choose(rates(args.log.read_text(errors="replace")), args.sizes)
    print("\n".join([" ".join(overrides), *reasons]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
