"""The next 24 hours of OT on the ETTh1 test split: the one-to-many generator (current hour only)
beside the seq2seq forecaster (336 hours) and repeat-the-current-value, on the same test hours."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from nmt.runs import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("generate_run", type=Path)
    parser.add_argument("forecaster_run", type=Path)
    parser.add_argument("--train-seconds", type=int, nargs=2)
    args = parser.parse_args()
    generator, forecaster = load_run(args.generate_run, device="cpu"), load_run(args.forecaster_run, device="cpu")
    gen_sets, fc_sets = generator.windows()["test"], forecaster.windows()["test"]
    if not np.array_equal(gen_sets.origins, fc_sets.origins):
        raise SystemExit("the two runs' test windows differ; train both on the same data and split")
    gx, y = gen_sets.tensors()  # [W, 1, 7], [W, 24, 1] z-scores of OT
    fx, _ = fc_sets.tensors()  # [W, 336, 7]
    y = y.numpy()
    ot = generator.columns.index("OT")
    std = float(generator.scaler.std[generator.scaler.columns.index("OT")])
    rows = [("generate (current hour, 7 readings)", generator.predict_windows(gx).numpy()),
            ("forecast (336 hours of history)", forecaster.predict_windows(fx).numpy()),
            ("baseline: repeat current OT", np.repeat(gx[:, -1:, ot:ot + 1].numpy(), y.shape[1], axis=1))]
    seconds = f"; training {args.train_seconds[0]}s + {args.train_seconds[1]}s" if args.train_seconds else ""
    print(f"ETTh1 test, next 24 hours of OT from {len(y)} test hours{seconds}")
    print(f"  {'':<38} {'MSE':>7} {'MAE':>7} {'MAE degC':>9}")
    for name, pred in rows:
        mse, mae = float(np.mean((pred - y) ** 2)), float(np.mean(np.abs(pred - y)))
        print(f"  {name:<38} {mse:7.4f} {mae:7.4f} {mae * std:9.3f}")


if __name__ == "__main__":
    main()
