"""Bounds and messages of the non-translation tasks' inputs: series lines are read up to a byte cap and
decoded line by line (stdin too), window sizes and lengths are bounded in the recipe, per-step regression
predicts in bounded pieces, and the TSV / CoNLL-U readers refuse what would silently go wrong."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nmt.cli import main
from nmt.data.labelled import read_conllu, read_tsv
from nmt.data.series import read_series
from nmt.errors import DataError, RecipeError
from nmt.recipe import validate_recipe
from nmt.runs import load_run

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = 120


def write_series(path: Path, rows: int = ROWS) -> Path:
    t = np.arange(rows)
    a, b = 10 + np.sin(t / 4), 5 + np.cos(t / 4)
    path.write_text("time,a,b\n" + "".join(f"{i},{x:.4f},{y:.4f}\n" for i, x, y in zip(t, a, b)))
    return path


def series_recipe(tmp: Path, task: str = "regress", **data) -> dict:
    return {"name": task, "task": task, "seed": 1,
            "data": {"root": str(tmp), "path": "s.csv", "time_column": "time", "columns": ["b"], "targets": ["a"],
                     "split": {"train": 0.6, "valid": 0.2, "test": 0.2}, "lookback": 6, "batch_size": 32, **data},
            "model": {"encoder": {"name": "gru", "hidden_size": 4, "bidirectional": False}},
            "trainer": {"max_epochs": 1, "accelerator": "cpu", "enable_progress_bar": False,
                        "enable_model_summary": False}}


def train(tmp: Path, raw: dict, name: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path), "--run-dir", str(tmp / name)]) == 0
    return tmp / name


@pytest.fixture(scope="module")
def step_run(tmp_path_factory):
    """Per-step regression of target a from input b alone (a is not a model input)."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("bounds")
    write_series(tmp / "s.csv")
    return train(tmp, series_recipe(tmp, output="every_step"), "gru"), tmp


def predict(run: Path, *options: str) -> int:
    return main(["predict", "--run", str(run), "--device", "cpu", *options])


# --- 1. the series reader's line cap -------------------------------------------------------

def test_series_line_over_the_cap_names_file_and_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("time,a\n1,2\n" + "," * 5000 + "\n3,4\n")
    with pytest.raises(DataError, match=rf"{path}:3: line is longer than 100 bytes"):
        read_series(path, ["a"], "time", max_line_bytes=100)


def test_series_line_without_end_is_refused_without_reading_it_whole(tmp_path):
    stream = io.BytesIO(b"time,a\n" + b"\0" * 3_000_000)  # like /dev/zero: no line break, ever
    with pytest.raises(DataError, match=r"<stdin>:2: line is longer than 1048576 bytes"):
        read_series("<stdin>", ["a"], "time", stream=stream)
    assert stream.tell() < 1_200_000


def test_predict_refuses_a_long_line_of_commas(step_run, tmp_path, capsys):
    run, _ = step_run
    path = tmp_path / "c.csv"
    path.write_bytes(b"time,a,b\n0,1,1\n" + b"," * 2_000_000 + b"\n")  # once skipped as a blank line, whole in memory
    assert predict(run, "-i", str(path)) == 2
    assert f"nmt: {path}:3: line is longer than 1048576 bytes" in capsys.readouterr().err


# --- 4. decoding stdin and files line by line ----------------------------------------------

def test_predict_from_stdin_names_the_line_of_a_bad_byte(step_run, tmp_path, monkeypatch, capsys):
    run, tmp = step_run
    data = (tmp / "s.csv").read_bytes().replace(b"\n2,", b"\n\xe9,", 1)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert predict(run, "-o", str(tmp_path / "o.csv")) == 2
    assert "nmt: <stdin>:4: invalid UTF-8 (byte 0xe9); pass --encoding-errors replace" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_predict_from_a_file_names_the_line_of_a_bad_byte(step_run, tmp_path, capsys):
    run, tmp = step_run
    path = tmp_path / "bad.csv"
    path.write_bytes((tmp / "s.csv").read_bytes().replace(b"\n2,", b"\n\xe9,", 1))
    assert predict(run, "-i", str(path)) == 2
    assert f"nmt: {path}:4: invalid UTF-8 (byte 0xe9)" in capsys.readouterr().err


def test_predict_from_stdin_honours_encoding_errors_replace(step_run, tmp_path, monkeypatch):
    run, tmp = step_run
    data = (tmp / "s.csv").read_bytes().replace(b"\n2,", b"\n2,\xe9", 1)  # in column a, which the model does not read
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert predict(run, "-o", str(tmp_path / "o.csv"), "--encoding-errors", "replace") == 0
    assert len((tmp_path / "o.csv").read_text().splitlines()) == ROWS + 1


# --- 9. predict needs the model's inputs only ----------------------------------------------

def test_predict_reads_only_the_input_columns(step_run, tmp_path):
    run, tmp = step_run
    rows = [line.split(",") for line in (tmp / "s.csv").read_text().splitlines()]
    path = tmp_path / "b_only.csv"
    path.write_text("".join(f"{r[0]},{r[2]}\n" for r in rows))  # time,b: no target column a
    assert predict(run, "-i", str(path), "-o", str(tmp_path / "o.csv")) == 0
    lines = (tmp_path / "o.csv").read_text().splitlines()
    assert lines[0] == "time,offset,a" and len(lines) == ROWS + 1


# --- 3. per-step regression predicts in bounded pieces -------------------------------------

def encoder_lengths(task, monkeypatch) -> list[int]:
    seen: list[int] = []
    forward = task.encoder.forward

    def spy(x, *args, **kwargs):
        seen.append(x.shape[1])
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(task.encoder, "forward", spy)
    return seen


def test_every_step_recurrent_runs_in_pieces_as_one_pass(step_run, tmp_path, monkeypatch):
    import nmt.tasks.regress as regress

    run, tmp = step_run
    task = load_run(run, device="cpu")
    monkeypatch.setattr(regress, "PREDICT_PIECE_ROWS", 16)
    seen = encoder_lengths(task, monkeypatch)
    task.predict_file(tmp / "s.csv", tmp_path / "o.csv")
    assert seen and max(seen) == 16 and sum(seen) == ROWS
    got = np.loadtxt(tmp_path / "o.csv", delimiter=",", skiprows=1)[:, 2]
    series = read_series(tmp / "s.csv", ["b"], "time")
    inputs = torch.as_tensor(task.scaler.transform(series.values, ["b"]), dtype=torch.float32)
    task.eval()
    with torch.no_grad():
        whole = task.run(inputs.unsqueeze(0))[0][0].numpy()  # one pass over the whole series
    expected = task.scaler.inverse(whole, ["a"])[:, 0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_every_step_transformer_reads_windows_of_lookback_rows(tmp_path, monkeypatch):
    write_series(tmp_path / "s.csv", 100)
    raw = series_recipe(tmp_path, output="every_step")
    raw["model"]["encoder"] = {"name": "transformer", "hidden_size": 8, "layers": 1, "heads": 2}
    task = load_run(train(tmp_path, raw, "tf"), device="cpu")
    seen = encoder_lengths(task, monkeypatch)
    task.predict_file(tmp_path / "s.csv", tmp_path / "o.csv")
    assert set(seen) == {6}  # 17 windows: 16 of rows 0-95, the last of rows 94-99
    lines = (tmp_path / "o.csv").read_text().splitlines()
    assert len(lines) == 101 and [line.split(",")[0] for line in lines[1:]] == [str(i) for i in range(100)]


# --- 2. window sizes and lengths are bounded in the recipe ---------------------------------

@pytest.mark.parametrize("task, key, value", [
    ("generate", "horizon", 2_000_000_000), ("forecast", "horizon", 400_000), ("regress", "lookback", 400_000)])
def test_series_window_sizes_are_bounded(tmp_path, task, key, value):
    raw = series_recipe(tmp_path, task, **{key: value, "columns": ["a", "b"], "targets": ["a"]})
    if task == "generate":
        raw["data"]["lookback"] = 1
    with pytest.raises(RecipeError, match=rf"data\.{key}: input should be less than or equal to 10000"):
        validate_recipe(raw, tmp_path / "r.yaml", check_data=False)


@pytest.mark.parametrize("task", ["classify", "tag"])
def test_label_task_max_length_is_bounded_as_in_translation(tmp_path, task):
    raw = {"name": task, "task": task, "data": {"train": "t", "valid": "v", "max_length": 1_000_000_000}}
    with pytest.raises(RecipeError, match=r"data\.max_length: input should be less than or equal to 65000"):
        validate_recipe(raw, tmp_path / "r.yaml", check_data=False)


# --- 5-8. labelled data --------------------------------------------------------------------

def test_vector_classification_with_empty_training_texts_names_file_and_line(tmp_path, capsys):
    raw = {"name": "v", "task": "classify", "seed": 1,
           "data": {"root": str(tmp_path), "train": "v.tsv", "valid": "v.tsv", "input": "vectors"},
           "model": {"embedding": {"size": 4}, "encoder": {"name": "gru", "hidden_size": 4}},
           "trainer": {"max_epochs": 1, "accelerator": "cpu"}}
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(raw))
    data = tmp_path / "v.tsv"
    data.write_text("label\tsentence\npos\t\nneg\t\n")  # no time step anywhere
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    assert f"nmt: {data}:2: empty text, as is every training text" in capsys.readouterr().err
    data.write_text("label\tsentence\npos\t\nneg\t1,2 3,4\npos\t1,2,3\n")  # an empty first text, then 2 and 3 features
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run2")]) == 2
    assert f"nmt: {data}:4: time steps have differing numbers of features (3 here, 2 on {data}:3)" \
        in capsys.readouterr().err


@pytest.mark.parametrize("value", [-2, -5])
def test_negative_column_number_is_a_recipe_error(tmp_path, value):
    raw = {"name": "c", "task": "classify", "data": {"train": "t", "valid": "v", "text_column": value}}
    with pytest.raises(RecipeError, match=r"data\.text_column: expected a header name or a 0-based column "
                                          rf"number >= 0, got {value}"):
        validate_recipe(raw, tmp_path / "r.yaml", check_data=False)


def test_negative_column_number_is_refused_by_the_reader(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("sentence\tlabel\na b\tx\n")
    with pytest.raises(DataError, match="expected a 0-based column number >= 0"):
        read_tsv(path, text_column=-1)


def test_empty_upos_tag_names_the_line(tmp_path):
    path = tmp_path / "t.conllu"
    path.write_text("1\tthe\tthe\t\t_\t_\t0\tdep\t_\t_\n2\tdog\tdog\tNOUN\t_\t_\t0\tdep\t_\t_\n\n")
    with pytest.raises(DataError, match=rf"{path}:1: empty upos tag"):
        read_conllu(path)


def test_cr_only_tsv_error_is_short_and_says_why(tmp_path):
    path = tmp_path / "cr.tsv"
    path.write_text("label\tsentence\r" + "".join(f"x\t{'a b ' * 50}\r" for _ in range(20_000)), newline="")
    with pytest.raises(DataError) as caught:
        read_tsv(path, text_column="text")
    message = str(caught.value)
    assert len(message) < 400, len(message)
    assert message.startswith(f"{path}:1: no column 'text' (columns: label, sentence\\rx, ")
    assert "the file has CR (\\r) line endings" in message
