"""Series readers: numeric CSV errors with file:row, chronological splits, a scaler fitted on train only."""
from __future__ import annotations

import numpy as np
import pytest

from nmt.data.scaling import Scaler
from nmt.data.series import WindowDataset, WindowShape, read_series, split_rows, window_origins
from nmt.errors import DataError


def write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_reads_columns_means_and_time_filter(tmp_path):
    path = write_csv(tmp_path / "s.csv", ["date", "a", "b", "c"],
                     [("2011-12-30", 1, 2, 3), ("2012-01-02", 4, 5, 6), ("2012-01-03", 7, 8, 9), ("2018-01-02", 0, 0, 0)])
    series = read_series(path, ["c", "mid"], "date", means={"mid": ["a", "b"]}, start="2012-01-01", end="2018-01-01")
    assert series.times == ["2012-01-02", "2012-01-03"]
    np.testing.assert_allclose(series.values, [[6, 4.5], [9, 7.5]])
    assert series.where(1) == f"{path}:4"


@pytest.mark.parametrize("cell, message", [("nan", "is nan"), ("inf", "is inf"), ("", "is empty"), ("x1", "is not a number")])
def test_bad_value_names_file_and_row(tmp_path, cell, message):
    path = write_csv(tmp_path / "s.csv", ["t", "a"], [(0, 1.0), (1, 2.0), (2, cell), (3, 4.0)])
    with pytest.raises(DataError, match=f"s.csv:4: column 'a' {message}"):
        read_series(path, ["a"], "t")


def test_missing_column_and_bad_order(tmp_path):
    path = write_csv(tmp_path / "s.csv", ["t", "a"], [(0, 1.0), (1, 2.0)])
    with pytest.raises(DataError, match=r"s.csv:1: missing column 'b'; the header has: t, a"):
        read_series(path, ["a", "b"], "t")
    unordered = write_csv(tmp_path / "u.csv", ["t", "a"], [(0, 1.0), (2, 2.0), (1, 3.0)])
    with pytest.raises(DataError, match=r"u.csv:4: time '1' does not follow '2'"):
        read_series(unordered, ["a"], "t")
    ragged = write_csv(tmp_path / "r.csv", ["t", "a"], [(0, 1.0), (1, 2.0, 5)])
    with pytest.raises(DataError, match=r"r.csv:3: 3 fields, expected 2"):
        read_series(ragged, ["a"], "t")


def test_a_column_named_twice_in_the_header_is_refused(tmp_path):
    """Before, the first of the two was read, silently, whichever the user meant."""
    path = tmp_path / "dup.csv"
    path.write_text("time,load,load\n1,2,3\n2,4,5\n")
    with pytest.raises(DataError) as caught:
        read_series(path, ["load"], time_column="time")
    assert caught.value.message == (f"{path}:1: column 'load' appears 2 times in the header (columns 2, 3); "
                                    "rename them apart")
    path.write_text("time,load,other,other\n1,2,3,4\n")
    assert read_series(path, ["load"], time_column="time").values.tolist() == [[2.0]]  # unread duplicates are fine


def test_splits_are_chronological_and_windows_stay_inside():
    bounds = split_rows(100, {"train": 0.6, "valid": 0.2, "test": 0.2})
    assert bounds == {"train": (0, 60), "valid": (60, 80), "test": (80, 100)}
    assert split_rows(100, {"train": 50, "valid": 10, "test": 10})["test"] == (60, 70)
    shape = WindowShape(lookback=10, first=1, last=5)
    train = window_origins(bounds["train"], shape, inputs_within=True)
    assert train[0] == 9 and train[-1] + 5 == 59  # targets of the last window end on the last train row
    valid = window_origins(bounds["valid"], shape)
    assert valid[0] + 1 == 60 and valid[-1] + 5 == 79  # inputs reach back into train (the known past)


def test_scaler_round_trip_and_json(tmp_path):
    values = np.random.default_rng(0).normal(50, 7, size=(200, 3))
    values[:, 2] = 4.0  # a constant column is centred, not divided by zero
    scaler = Scaler.fit(values, ["a", "b", "c"])
    z = scaler.transform(values)
    np.testing.assert_allclose(z[:, :2].mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(z[:, :2].std(0), 1, atol=1e-9)
    (tmp_path / "scaler.json").write_text(scaler.to_json())
    loaded = Scaler.load(tmp_path / "scaler.json")
    np.testing.assert_allclose(loaded.inverse(z), values)
    np.testing.assert_allclose(loaded.inverse(z[:, [1]], ["b"]), values[:, [1]])


def test_shuffling_the_future_leaves_training_windows_and_scaler_unchanged():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(300, 2)).cumsum(0)
    bounds = split_rows(len(values), {"train": 0.7, "valid": 0.15, "test": 0.15})
    shuffled = values.copy()
    future = shuffled[bounds["train"][1]:]
    shuffled[bounds["train"][1]:] = future[rng.permutation(len(future))]
    shape = WindowShape(lookback=12, first=1, last=6)

    def train_windows(v):
        lo, hi = bounds["train"]
        scaler = Scaler.fit(v[lo:hi], ["a", "b"])
        origins = window_origins(bounds["train"], shape, inputs_within=True)
        return scaler, WindowDataset(scaler.transform(v), [0, 1], [1], shape, origins).tensors()

    (s1, (x1, y1)), (s2, (x2, y2)) = train_windows(values), train_windows(shuffled)
    np.testing.assert_array_equal(s1.mean, s2.mean)
    np.testing.assert_array_equal(s1.std, s2.std)
    assert x1.shape[0] > 0 and bool((x1 == x2).all()) and bool((y1 == y2).all())
