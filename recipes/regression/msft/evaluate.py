"""Test RMSE of a msft run in dollars, beside persistence (tomorrow = today), on the same test days."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from nmt.runs import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--train-seconds", type=int)
    args = parser.parse_args()
    task = load_run(args.run, device="cpu")
    x, y = task.windows()["test"].tensors()  # [W, L, 1] inputs, [W, 1, 1] the next day, z-scores
    unscale = lambda v: task.scaler.inverse(v.reshape(-1, 1), ["price"])[:, 0]  # noqa: E731
    truth, today = unscale(y.numpy()), unscale(x[:, -1].numpy())
    model = unscale(task.predict_windows(x).numpy())
    rmse = lambda p: float(np.sqrt(np.mean((p - truth) ** 2)))  # noqa: E731
    r_model, r_persist = rmse(model), rmse(today)
    print(f"MSFT 2012-2017, test = last 30% ({len(truth)} days), run {args.run}"
          + (f", training {args.train_seconds}s" if args.train_seconds is not None else ""))
    print(f"  {'model (nmt regress, GRU)':<34} RMSE ${r_model:.4f}")
    print(f"  {'baseline: persistence (today)':<34} RMSE ${r_persist:.4f}")
    ratio = r_model / r_persist
    verdict = ("ties with (within 1% of)" if abs(ratio - 1) < 0.01 else "beats" if ratio < 1 else "does not beat")
    print(f"  model / persistence = {ratio:.4f}: the model {verdict} persistence")


if __name__ == "__main__":
    main()
