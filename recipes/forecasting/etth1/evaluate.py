"""ETTh1 test MSE and MAE (normalised, all 7 variables) of a forecast run, beside two baselines
measured here on the same test windows: repeat the last value, and a least-squares linear map from the
336-hour lookback to each of the 96 horizon hours (numpy lstsq, one map shared by the 7 variables,
fitted on every training window)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from nmt.runs import load_run


def linear_baseline(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """Per-variable windows: lstsq of [lookback, 1] -> horizon on train; [W, L, C] -> [W, H, C] on test."""
    def flat(v):  # [W, T, C] -> [W*C, T]: each variable's window is one example
        return v.transpose(0, 2, 1).reshape(-1, v.shape[1])

    features = np.hstack([flat(train_x), np.ones((train_x.shape[0] * train_x.shape[2], 1))])
    weights, *_ = np.linalg.lstsq(features, flat(train_y), rcond=None)  # [L+1, H]: a fit per horizon hour
    test = np.hstack([flat(test_x), np.ones((test_x.shape[0] * test_x.shape[2], 1))])
    pred = test @ weights  # [W*C, H]
    return pred.reshape(test_x.shape[0], test_x.shape[2], -1).transpose(0, 2, 1)


def scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    return float(np.mean((pred - truth) ** 2)), float(np.mean(np.abs(pred - truth)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--train-seconds", type=int)
    args = parser.parse_args()
    task = load_run(args.run, device="cpu")
    sets = task.windows(stride=1)
    train_x, train_y = (t.numpy() for t in sets["train"].tensors())
    test_x, test_y = sets["test"].tensors()
    start = time.perf_counter()
    model = task.predict_windows(test_x).numpy()
    seconds = time.perf_counter() - start
    test_x, test_y = test_x.numpy(), test_y.numpy()
    rows = [("model (nmt forecast, GRU seq2seq)", scores(model, test_y)),
            ("baseline: repeat last value", scores(np.repeat(test_x[:, -1:], test_y.shape[1], axis=1), test_y)),
            ("baseline: linear (lstsq)", scores(linear_baseline(train_x, train_y, test_x), test_y))]
    data = task.recipe.data
    print(f"ETTh1 test: {len(test_y)} windows, lookback {data.lookback}, horizon {data.horizon}, "
          f"{len(task.targets)} variables, z-scores fitted on {len(train_x)} training windows' hours; run {args.run}"
          + (f"; training {args.train_seconds}s" if args.train_seconds is not None else "")
          + f"; prediction {seconds:.1f}s")
    print(f"  {'':<36} {'MSE':>7} {'MAE':>7}")
    for name, (mse, mae) in rows:
        print(f"  {name:<36} {mse:7.4f} {mae:7.4f}")
    ratios = [model / linear for model, linear in zip(rows[0][1], rows[2][1])]
    beaten = [name for name, ratio in zip(("MSE", "MAE"), ratios) if ratio < 1]
    verdict = {2: "beats the linear model on both", 1: f"beats the linear model on {''.join(beaten)} only",
               0: "does not beat the linear model"}[len(beaten)]
    print(f"  model / linear: MSE {ratios[0]:.3f}, MAE {ratios[1]:.3f}: the model {verdict}")


if __name__ == "__main__":
    main()
