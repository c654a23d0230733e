"""``nmt plot``: every logged metric against steps and wall time, minutes interpolated between validations."""
from __future__ import annotations

from pathlib import Path

import pytest

from nmt.cli import main
from nmt.plots import read_curve

METRICS = """epoch,lr-Adam,step,train/loss,val/bleu,val/wall_minutes
,0.003,0,,,
0,,9,4.0,,
0,,19,3.0,,
0,,19,,10.0,2.0
0,,29,2.5,,
0,,39,,20.0,4.0
1,,49,2.0,,
"""


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.csv").write_text(METRICS)
    return tmp_path


def test_minutes_are_interpolated_between_validations_and_extrapolated_after(run_dir):
    curve = read_curve(run_dir, "train/loss")
    assert curve.steps == [9, 19, 29, 49] and curve.values == [4.0, 3.0, 2.5, 2.0]
    # (0, 0) -> (19, 2.0) -> (39, 4.0), then 0.1 minutes per step
    assert curve.minutes == pytest.approx([9 * 2 / 19, 2.0, 3.0, 5.0])


def test_plot_writes_a_png_per_metric_with_both_axes(run_dir, capsys):
    import matplotlib.image

    assert main(["plot", str(run_dir)]) == 0
    out = capsys.readouterr().out
    for name in ("lr-Adam", "train_loss", "val_bleu"):
        image = matplotlib.image.imread(run_dir / f"{name}.png")
        assert image.shape[1] > image.shape[0] * 2  # two panels side by side
        assert len({tuple(px) for px in image.reshape(-1, image.shape[-1])[::97]}) > 3  # not blank
    assert "     4.0      39           20\n" in out


def test_an_unknown_metric_names_the_ones_logged(run_dir, capsys):
    assert main(["plot", str(run_dir), "val/blue"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nmt: metric 'val/blue': not logged") and "val/bleu" in err and "train/loss" in err


def test_a_directory_without_metrics_is_one_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics logged yet" in capsys.readouterr().err


@pytest.mark.parametrize("damage, line, words", [
    (b"0,,29,abc,,\n", 4, "column 'train/loss': expected a number, got 'abc'"),
    (b"0,,2.5,2.5,,\n", 4, "column 'step': expected an integer, got '2.5'"),
    (b"0,,29,2\xff5,,\n", 4, "invalid UTF-8 (byte 0xff)"),
    (b"0,,29,2.5,,,7\n", 4, "expected 6 fields as in the header, got 7"),
], ids=["not-a-number", "step-not-an-integer", "bad-utf8", "extra-field"])
def test_a_damaged_metrics_file_is_one_line_naming_its_line(tmp_path, capsys, damage, line, words):
    (tmp_path / "logs").mkdir()
    good = METRICS.encode().splitlines(keepends=True)
    (tmp_path / "logs" / "metrics.csv").write_bytes(b"".join(good[:line - 1]) + damage + b"".join(good[line - 1:]))
    assert main(["plot", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"nmt: {tmp_path / 'logs' / 'metrics.csv'}:{line}: {words}"), captured.err
    assert len(captured.err.splitlines()) == 1
    assert captured.out == "" and not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("text", ["", "epoch,step,train/loss\n", "epoch,step,train/loss\n0,9,\n"],
                         ids=["empty", "header-only", "no-values"])
def test_a_run_that_has_logged_nothing_yet_is_one_line(tmp_path, capsys, text):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.csv").write_text(text)
    assert main(["plot", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"nmt: {tmp_path}: the run has logged no metrics yet")
    assert len(captured.err.splitlines()) == 1 and captured.out == ""
