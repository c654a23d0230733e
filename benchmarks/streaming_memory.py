"""Peak memory of ``nmt translate`` on growing inputs: streaming keeps it flat.

    python benchmarks/streaming_memory.py --run runs/reverse            # 10k and 100k lines
    python benchmarks/streaming_memory.py --sizes 2000 20000            # trains a tiny run first

Each size runs ``nmt translate --beam 1`` as a child process and reads that child's ``ru_maxrss``
(``os.wait4``); probe sentences at known line numbers check that output line i answers input
line i. Without ``--run`` a small model of the synthetic reverse task (``tests/conftest.py``) is
trained into a temporary directory first. ``nmt bench streaming-memory --run DIR`` is the same
with the default sizes.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_tiny_run(directory: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import reverse_recipe, write_recipe, write_reverse_corpus

    data = write_reverse_corpus(directory / "data", n_train=1500, n_dev=100)
    recipe = write_recipe(directory / "reverse.yaml", reverse_recipe(data, trainer={"max_epochs": 2}))
    run_dir = directory / "run"
    subprocess.run([sys.executable, "-m", "nmt.cli", "train", str(recipe), "--run-dir", str(run_dir)], check=True,
                   stderr=subprocess.DEVNULL)
    return run_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a run directory [default: train a tiny one]")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tolerance", type=float, default=0.20)
    args = parser.parse_args()
    from nmt.bench import streaming_memory

    with tempfile.TemporaryDirectory(prefix="nmt-streaming-") as tmp:
        run_dir = args.run or train_tiny_run(Path(tmp))
        results = streaming_memory(run_dir, device=args.device, sizes=tuple(args.sizes), beam=args.beam,
                                   tolerance=args.tolerance)
    flat = max(r.peak_rss_mib for r in results) <= min(r.peak_rss_mib for r in results) * (1 + args.tolerance)
    return 0 if flat and all(r.order_ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
