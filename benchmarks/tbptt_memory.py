"""Peak training memory against sequence length: truncated BPTT keeps it flat, full BPTT does not.

    python benchmarks/tbptt_memory.py                      # lengths 1000 and 4000, tbptt_steps 50
    python benchmarks/tbptt_memory.py --lengths 1000 8000 --tbptt-steps 100 --no-full

Each measurement is a child process that trains the ``regress`` task (``output: every_step``, a GRU
of 128 units, 16 sequences per batch) for one batch of the given length through Lightning, exactly
as ``nmt train`` would. The child resets its peak resident memory (``/proc/self/clear_refs``) just
before ``trainer.fit`` and reports the growth of the peak over the memory held before it: the
activations kept for backpropagation. With ``model.tbptt_steps`` the graph spans one piece at a
time, so the growth stays the same as the sequence grows; with full BPTT it grows with the length.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from nmt.bench import ScriptArguments, bounded, script_main

MAX_LENGTH = 20_000  # steps a sequence; full BPTT keeps the activations of them all (~0.15 MiB a step)


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def child(length: int, tbptt_steps: int | None, batch: int = 16, hidden: int = 128) -> dict:
    """Train one batch of ``batch`` sequences of ``length`` steps; return the peak growth in MiB."""
    import numpy as np
    import pytorch_lightning as pl
    import torch

    from nmt.recipe import validate_recipe

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="nmt-tbptt-") as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        n = batch * length + length  # a spare sequence for the validation split
        v = rng.normal(size=n)
        y = np.zeros(n)
        for t in range(1, n):
            y[t] = 0.95 * y[t - 1] + v[t]
        (tmp / "s.csv").write_text("v,y\n" + "".join(f"{a:.5f},{b:.5f}\n" for a, b in zip(v, y)))
        raw = {"name": "tbptt", "task": "regress",
               "data": {"root": str(tmp), "path": "s.csv", "columns": ["v"], "targets": ["y"], "lookback": length,
                        "stride": length, "offset": 0, "output": "every_step", "batch_size": batch,
                        "split": {"train": batch * length, "valid": length}},
               "model": {"encoder": {"name": "gru", "hidden_size": hidden, "bidirectional": False},
                         "tbptt_steps": tbptt_steps},
               "optim": {"scheduler": "none"}}
        recipe = validate_recipe(raw, tmp / "tbptt.yaml")
        recipe.task_cls.prepare_run(recipe, tmp)
        task = recipe.task_cls.from_run(recipe, tmp)
        datamodule = task.make_datamodule()
        trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             accelerator="cpu", num_sanity_val_steps=0)
        before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current size
        trainer.fit(task, datamodule=datamodule)
        peak = _status_kib("VmHWM")
    return {"length": length, "tbptt_steps": tbptt_steps, "growth_mib": (peak - before) / 1024,
            "peak_mib": peak / 1024}


def measure(length: int, tbptt_steps: int | None) -> dict:
    command = [sys.executable, __file__, "--child", str(length), str(tbptt_steps or 0)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"tbptt_memory: the measurement of length {length} failed (exit {done.returncode}): {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = ScriptArguments(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=bounded(int, 2, MAX_LENGTH), nargs=2, default=[1000, 4000],
                        metavar=("SHORT", "LONG"))
    parser.add_argument("--tbptt-steps", type=bounded(int, 1, MAX_LENGTH), default=50)
    parser.add_argument("--no-full", action="store_true", help="skip the full-BPTT contrast")
    parser.add_argument("--child", nargs=2, type=bounded(int, 0, MAX_LENGTH), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1] or None)))
        return 0
    modes = [args.tbptt_steps] + ([None] if not args.no_full else [])
    print(f"python benchmarks/tbptt_memory.py --lengths {args.lengths[0]} {args.lengths[1]} "
          f"--tbptt-steps {args.tbptt_steps}  (GRU 128, batch 16, one training batch, CPU)")
    print(f"{'mode':<16} {'length':>7} {'peak growth MiB':>16} {'peak RSS MiB':>13}")
    ratios = {}
    for steps in modes:
        results = [measure(n, steps) for n in args.lengths]
        name = f"tbptt_steps={steps}" if steps else "full BPTT"
        for r in results:
            print(f"{name:<16} {r['length']:>7} {r['growth_mib']:>16.1f} {r['peak_mib']:>13.1f}")
        ratios[name] = max(results[1]["growth_mib"], 0.1) / max(results[0]["growth_mib"], 0.1)
    for name, ratio in ratios.items():
        print(f"{name}: peak growth {args.lengths[1]} / {args.lengths[0]} steps = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))
