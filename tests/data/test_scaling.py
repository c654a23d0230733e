"""The one z-score scaler: the files of runs written before it still load, feature vectors scale in float32."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nmt.data.scaling import Scaler
from nmt.errors import RunError


def test_loads_the_feature_scaler_file_of_older_classification_runs(tmp_path):
    """``features.json`` as the classifier's own scaler wrote it: dim, mean and scale (the std)."""
    path = tmp_path / "features.json"
    path.write_text(json.dumps({"dim": 2, "mean": [1.0, -2.0], "scale": [2.0, 0.5]}) + "\n")
    scaler = Scaler.load(path)
    assert scaler.dim == 2 and scaler.columns is None
    assert scaler.scale_steps([[3.0, -1.0], [1.0, -2.0]]) == [[1.0, 2.0], [0.0, 0.0]]


def test_loads_the_series_scaler_file(tmp_path):
    path = tmp_path / "scaler.json"
    path.write_text(json.dumps({"columns": ["a", "b"], "mean": [1.0, 2.0], "std": [2.0, 4.0]}, indent=1))
    scaler = Scaler.load(path)
    np.testing.assert_array_equal(scaler.inverse(np.array([[0.5, 1.0]]), ["a", "b"]), [[2.0, 6.0]])
    np.testing.assert_array_equal(scaler.transform(np.array([[6.0]]), ["b"]), [[1.0]])


def test_saved_and_loaded_alike(tmp_path):
    values = np.random.default_rng(0).normal(3, 2, size=(50, 3))
    for columns in (["x", "y", "z"], None):
        scaler = Scaler.fit(values, columns)
        scaler.save(tmp_path / "s.json")
        loaded = Scaler.load(tmp_path / "s.json")
        assert loaded.columns == columns
        np.testing.assert_array_equal(loaded.mean, scaler.mean)
        np.testing.assert_array_equal(loaded.std, scaler.std)


def test_feature_vectors_scale_as_the_model_reads_them():
    """float32 arithmetic, bit for bit what a float32 tensor computes; constant features stay put."""
    rng = np.random.default_rng(1)
    steps = rng.normal(5, 3, size=(40, 3)).tolist()
    scaler = Scaler.fit(np.asarray(steps), min_std=1e-8)
    expected = ((torch.tensor(steps) - torch.tensor(scaler.mean.tolist())) / torch.tensor(scaler.std.tolist())).tolist()
    assert scaler.scale_steps(steps) == expected
    assert scaler.scale_steps([]) == []
    constant = Scaler.fit(np.array([[1.0, 7.0], [3.0, 7.0]]))
    assert constant.std.tolist() == [1.0, 1.0] and constant.mean.tolist() == [2.0, 7.0]


@pytest.mark.parametrize("text", ["", "{", '{"mean": [1]}', '{"mean": [1, 2], "std": [1]}'])
def test_a_damaged_file_is_one_clear_error(tmp_path, text):
    path = tmp_path / "scaler.json"
    path.write_text(text)
    with pytest.raises(RunError, match="unreadable scaler"):
        Scaler.load(path)
    with pytest.raises(RunError, match="scaler not found"):
        Scaler.load(tmp_path / "missing.json")
