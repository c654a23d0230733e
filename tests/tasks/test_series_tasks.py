"""Series tasks end to end: each trains in seconds on synthetic sines and beats its trivial baseline;
TBPTT learns a dependency longer than its window; nmt predict answers in original units and names
file:row for bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nmt.cli import main
from nmt.errors import DataError
from nmt.runs import load_run


pytestmark = pytest.mark.usefixtures("one_thread")


def write_sines(path: Path, n: int = 1500, seed: int = 0) -> Path:
    """Two noisy periodic columns far from zero: z-scaling and its inverse matter."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = 100 + 10 * np.sin(2 * np.pi * t / 24) + 3 * np.sin(2 * np.pi * t / 7.3) + rng.normal(0, 0.1, n)
    y = 50 + 5 * np.cos(2 * np.pi * t / 24) + rng.normal(0, 0.05, n)
    path.write_text("time,x,y\n" + "".join(f"{i:05d},{a:.5f},{b:.5f}\n" for i, a, b in zip(t, x, y)))
    return path


def recipe(tmp_path: Path, task: str, data: dict, model: dict, **extra) -> Path:
    raw = {"name": task, "task": task, "seed": 1,
           "data": {"root": str(tmp_path), "path": "sines.csv", "time_column": "time", "columns": ["x", "y"],
                    "split": {"train": 0.7, "valid": 0.15, "test": 0.15}, "batch_size": 32, **data},
           "model": model, "optim": {"lr": 0.01},
           "trainer": {"max_epochs": 4, "accelerator": "cpu", "enable_progress_bar": False,
                       "enable_model_summary": False, **extra}}
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def train(tmp_path: Path, recipe_path: Path, *overrides: str) -> Path:
    run = tmp_path / f"run_{recipe_path.stem}"
    assert main(["train", str(recipe_path), "--run-dir", str(run), *overrides]) == 0
    return run


def split_error(task, split: str = "test"):
    x, y = task.windows()[split].tensors()
    pred = task.predict_windows(x)
    return float(((pred - y) ** 2).mean()), x, y


GRU = {"name": "gru", "hidden_size": 32, "bidirectional": False}


@pytest.fixture(scope="module")
def regress_run(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("regress")
    write_sines(tmp / "sines.csv")
    path = recipe(tmp, "regress", {"lookback": 24, "offset": 1, "targets": ["x"]},
                  {"encoder": GRU, "relative": True})
    return train(tmp, path), tmp


def test_regress_beats_persistence(regress_run):
    run, _ = regress_run
    task = load_run(run, device="cpu")
    mse, x, y = split_error(task)
    persistence = float(((x[:, -1:, :1] - y) ** 2).mean())  # tomorrow equals today
    assert mse < 0.1 * persistence, (mse, persistence)


def test_forecast_beats_repeat_last(tmp_path):
    write_sines(tmp_path / "sines.csv")
    path = recipe(tmp_path, "forecast", {"lookback": 48, "horizon": 12},
                  {"encoder": GRU, "decoder": {"name": "rnn", "hidden_size": 32}, "segment": 4,
                   "embedding_size": 32, "teacher_forcing": 0.5})
    task = load_run(train(tmp_path, path), device="cpu")
    mse, x, y = split_error(task)
    repeat_last = float(((x[:, -1:, :] - y) ** 2).mean())
    assert mse < 0.2 * repeat_last, (mse, repeat_last)


def test_forecast_channel_independent_trains(tmp_path):
    write_sines(tmp_path / "sines.csv", n=600)
    path = recipe(tmp_path, "forecast", {"lookback": 24, "horizon": 8},
                  {"encoder": GRU, "decoder": {"name": "rnn", "hidden_size": 32}, "segment": 8,
                   "channel_independent": True}, max_epochs=2)
    task = load_run(train(tmp_path, path), device="cpu")
    mse, x, y = split_error(task)
    assert np.isfinite(mse) and mse < float(((x[:, -1:, :] - y) ** 2).mean())


def test_forecast_highway_is_a_trained_linear_map_of_each_lookback(tmp_path):
    write_sines(tmp_path / "sines.csv", n=600)
    path = recipe(tmp_path, "forecast", {"lookback": 24, "horizon": 8},
                  {"encoder": GRU, "decoder": {"name": "rnn", "hidden_size": 32}, "segment": 8,
                   "channel_independent": True, "highway": True}, max_epochs=2)
    task = load_run(train(tmp_path, path), device="cpu")
    mse, x, y = split_error(task)
    assert mse < float(((x[:, -1:, :] - y) ** 2).mean())  # it learned
    weight, bias = task.highway.weight.detach(), task.highway.bias.detach()  # [H, L], [H]
    assert weight.abs().sum() > 0  # trained away from its zero start
    with torch.no_grad():  # silence the recurrent part: what is left is the highway, per variable
        task.project.weight.zero_()
        task.project.bias.zero_()
    last = x[:, -1:, :]  # [W, 1, C]
    expected = torch.einsum("hl,wlc->whc", weight, x - last) + bias[None, :, None] + last
    assert torch.allclose(task.predict_windows(x), expected, atol=1e-5)


def test_generate_beats_repeat_current(tmp_path):
    write_sines(tmp_path / "sines.csv")
    path = recipe(tmp_path, "generate", {"lookback": 1, "horizon": 12, "targets": ["y"]},
                  {"encoder": GRU, "embedding_size": 32})
    task = load_run(train(tmp_path, path), device="cpu")
    mse, x, y = split_error(task)
    repeat = float(((x[:, :, 1:] - y) ** 2).mean())  # the current y, repeated
    assert mse < 0.2 * repeat, (mse, repeat)


def test_tbptt_learns_a_dependency_longer_than_its_window(tmp_path):
    """y_t = 0.95 y_(t-1) + v_t: a memory of ~20-60 steps learned from 10-step pieces.

    The best a model could do with the 10-step piece alone (the exact leaky sum over the piece) is the
    baseline; carrying the detached state across pieces must beat it by far."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=12000)
    y = np.zeros_like(v)
    for t in range(len(v)):
        y[t] = 0.95 * (y[t - 1] if t else 0.0) + v[t]
    (tmp_path / "sines.csv").write_text("time,v,y\n" + "".join(f"{i},{a:.6f},{b:.6f}\n" for i, (a, b) in enumerate(zip(v, y))))
    path = recipe(tmp_path, "regress", {"columns": ["v"], "targets": ["y"], "lookback": 200, "stride": 200,
                                        "offset": 0, "output": "every_step", "batch_size": 8},
                  {"encoder": GRU, "tbptt_steps": 10}, max_epochs=3)
    task = load_run(train(tmp_path, path, "optim.lr=0.005"), device="cpu")
    x, yz = task.windows()["test"].tensors()
    x, yz = x[::50], yz[::50]  # non-overlapping test sequences of 200 steps
    pred = task.predict_windows(x)
    local = np.zeros_like(x[..., 0].numpy())  # the leaky sum within each 10-step piece, in y's z-units
    raw_v = task.scaler.inverse(x[..., 0].numpy(), ["v"])
    for p in range(200):
        local[:, p] = raw_v[:, p] + (0.95 * local[:, p - 1] if p % 10 else 0.0)
    local = task.scaler.transform(local[..., None], ["y"])
    late = slice(100, 200)  # after the unknown history before the sequence has faded
    model = float(((pred[:, late] - yz[:, late]) ** 2).mean())
    window_only = float(((torch.as_tensor(local[:, late], dtype=torch.float32) - yz[:, late]) ** 2).mean())
    assert model < 0.25 * window_only, (model, window_only)


# --- nmt predict --------------------------------------------------------------------------------

def test_predict_writes_original_units(regress_run, tmp_path):
    run, data_dir = regress_run
    out = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(run), "--checkpoint", "best", "-i", str(data_dir / "sines.csv"),
                 "-o", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "time,offset,x"
    truth = {row.split(",")[0]: float(row.split(",")[1]) for row in (data_dir / "sines.csv").read_text().splitlines()[1:]}
    errors = []
    for line in lines[1:-1]:
        time, offset, value = line.split(",")
        nxt = f"{int(time) + int(offset):05d}"
        errors.append(abs(float(value) - truth[nxt]))
    assert len(errors) == 1500 - 24 and np.mean(errors) < 1.5  # dollars, not z-scores (x swings by +-13)


def test_predict_errors_name_file_and_row(regress_run, tmp_path, capsys):
    run, data_dir = regress_run
    task = load_run(run, device="cpu")
    rows = (data_dir / "sines.csv").read_text().splitlines()
    nan = tmp_path / "nan.csv"
    nan.write_text("\n".join(rows[:30] + ["00029,nan,50.0"]) + "\n")
    with pytest.raises(DataError, match=r"nan.csv:31: column 'x' is nan"):
        task.predict_file(nan, tmp_path / "out.csv")
    missing = tmp_path / "missing.csv"
    missing.write_text("time,x\n" + "".join(f"{r.rsplit(',', 1)[0]}\n" for r in rows[1:40]))
    with pytest.raises(DataError, match=r"missing.csv:1: missing column 'y'"):
        task.predict_file(missing, tmp_path / "out.csv")
    short = tmp_path / "short.csv"
    short.write_text("\n".join(rows[:11]) + "\n")
    assert main(["predict", "--run", str(run), "-i", str(short), "-o", str(tmp_path / "out.csv")]) == 2
    assert "short.csv:11: series too short: 10 rows, the model needs at least 24" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


def test_task_windows_and_scaler_ignore_the_future(tmp_path):
    """Shuffling every row after the training split changes neither the saved scaler nor a training window."""
    from nmt.recipe import load_recipe

    write_sines(tmp_path / "sines.csv", n=400)
    lines = (tmp_path / "sines.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    cut = int(0.7 * len(rows))
    future = [r.split(",", 1)[1] for r in rows[cut:]]
    np.random.default_rng(0).shuffle(future)
    shuffled = rows[:cut] + [f"{r.split(',', 1)[0]},{v}" for r, v in zip(rows[cut:], future)]
    (tmp_path / "shuffled.csv").write_text("\n".join([header] + shuffled) + "\n")
    results = []
    for name in ("sines.csv", "shuffled.csv"):
        path = recipe(tmp_path, "forecast", {"path": name, "lookback": 24, "horizon": 12}, {"segment": 4})
        loaded = load_recipe(path)
        run = tmp_path / f"run_{name}"
        loaded.task_cls.prepare_run(loaded, run)
        task = loaded.task_cls.from_run(loaded, run)
        results.append(((run / "fitted" / "scaler.json").read_text(), task.windows()["train"].tensors()))
    (scaler_a, (xa, ya)), (scaler_b, (xb, yb)) = results
    assert scaler_a == scaler_b
    assert len(xa) == cut - 24 - 12 + 1 and torch.equal(xa, xb) and torch.equal(ya, yb)


def test_predict_reads_from_the_recipes_start_as_training_did(regress_run, tmp_path):
    """Rows before data.start are outside what the model learned (MSFT's 1986 prices): not predicted."""
    import shutil

    run, data_dir = regress_run
    run = Path(shutil.copytree(run, tmp_path / "run"))
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    saved["data"]["start"] = "01000"
    (run / "recipe.yaml").write_text(yaml.safe_dump(saved))
    out = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(run), "-i", str(data_dir / "sines.csv"), "-o", str(out)]) == 0
    times = [line.split(",")[0] for line in out.read_text().splitlines()[1:]]
    assert times[0] == f"{1000 + 24 - 1:05d}" and len(times) == 500 - 24 + 1
