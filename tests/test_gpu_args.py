"""benchmarks/gpu_args.py: the recipe overrides that gpu_check.sh's speed rows argue for, chosen in the
same device call: float32 where bf16 is slower, the fastest teacher forcing way, the compiled loop, a
larger batch, each only where its rows say so."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import load_benchmark
LOG = """multi30k-en-de: 30 training steps per variant on cuda (16 threads), ~65 sentences per batch
  nmt                 24602 target tokens/s   x1.00     80.0 ops/position
  bf16                16579 target tokens/s   x0.67     86.0 ops/position
  hoisted             26000 target tokens/s   x1.06     71.0 ops/position
  bf16-shared         30000 target tokens/s   x1.22     71.0 ops/position
  bf16+loop           40000 target tokens/s   x1.63
  nmt@4200            60000 target tokens/s   x2.44     80.0 ops/position
  bf16@4200           70000 target tokens/s   x2.85     86.0 ops/position
profile nmt: 3 steps on cuda, 41.0 ms a step, 1890 kernels a step, the device busy 9.8 ms a step (24%)
"""


@pytest.fixture(scope="module")
def gpu_args():
    return load_benchmark("gpu_args")


def test_the_table_of_a_log_is_read(gpu_args):
    rates = gpu_args.rates(LOG)
    assert rates == {"nmt": 24602, "bf16": 16579, "hoisted": 26000, "bf16-shared": 30000, "bf16+loop": 40000,
                     "nmt@4200": 60000, "bf16@4200": 70000}


def test_each_choice_only_where_its_rows_argue_for_it(gpu_args):
    base = {"nmt": 1000, "bf16": 1500, "bf16-hoisted": 1520, "bf16-shared": 1540, "bf16+loop": 1560,
            "nmt@4200": 4000, "bf16@4200": 6000, "bf16@16800": 8000}
    assert gpu_args.choose(base, [4200, 16800])[0] == []  # nothing beats its alternative by the margins
    faster = gpu_args.choose(base | {"bf16-shared": 1800}, [4200, 16800])[0]
    assert faster == ["model.decoder.teacher_forcing=shared"]
    loop = gpu_args.choose(base | {"bf16-shared": 1800, "bf16+loop": 2000}, [4200, 16800])[0]
    assert loop == ["model.compile=loop"]  # the loop beats the fastest eager way; it runs its own teacher forcing
    batch = gpu_args.choose(base | {"bf16@16800": 9500}, [4200, 16800])[0]
    assert batch == ["data.batch_tokens=16800", "optim.lr=0.002"]  # 4x the batch, 2x the rate


def test_float32_where_bf16_is_slower_and_its_rows_compared(gpu_args):
    overrides, reasons = gpu_args.choose(gpu_args.rates(LOG) | {"hoisted": 30000, "nmt@16800": 100000}, [4200, 16800])
    # bf16@4200 > nmt@4200 here: bf16 stays, and its rows are compared: shared, then the loop over it
    assert overrides == ["model.compile=loop"] and len(reasons) == 2
    slow_bf16 = {"nmt": 1000, "bf16": 900, "hoisted": 1200, "bf16-shared": 5000, "nmt@4200": 4000, "bf16@4200": 3000,
                 "nmt@16800": 7000}
    overrides, reasons = gpu_args.choose(slow_bf16, [4200, 16800])
    assert overrides == ["trainer.precision=32-true", "model.decoder.teacher_forcing=hoisted",
                         "data.batch_tokens=16800", "optim.lr=0.002"]
    assert reasons[0].startswith("float32: bf16@4200 3000 < nmt@4200 4000")


def test_rows_cut_by_a_deadline_choose_nothing(gpu_args):
    assert gpu_args.choose({}, [4200, 16800]) == ([], ["no bf16 row: nothing else chosen"])
    assert gpu_args.choose({"nmt": 1000, "bf16": 1500}, [4200, 16800])[0] == []


def test_the_command_prints_the_overrides_and_the_reasons(gpu_args, tmp_path, capsys):
    (tmp_path / "train_speed.log").write_text(LOG)
    assert gpu_args.main([str(tmp_path / "train_speed.log"), "--sizes", "4200"]) == 0
    overrides, *reasons = capsys.readouterr().out.splitlines()
    assert overrides == "model.compile=loop"
    assert reasons[0].startswith("teacher forcing shared") and reasons[1].startswith("compiled loop")


GPU_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def test_gpu_check_refuses_an_unknown_part_before_it_writes_anything(tmp_path):
    """PARTS="speeed" ran nothing and exited 0: a device call of the session's few minutes spent on nothing."""
    done = subprocess.run([str(GPU_CHECK)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PARTS": "speed speeed", "OUT": "out", "RUN_ROOT": "runs"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == ["gpu_check.sh: PARTS: unknown part 'speeed' (speed, tests, static, recipe, "
                                        "translate, ensemble)"]
    assert list(tmp_path.iterdir()) == []


def test_gpu_check_writes_relative_folders_where_it_is_called(tmp_path):
    """A relative OUT or RUN_ROOT was taken inside the checkout the script moves to, where the recipe part
    replaces RUN_ROOT/gpu-check-ende."""
    done = subprocess.run([str(GPU_CHECK)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PARTS": "tests", "OUT": "out", "RUN_ROOT": "runs", "DEVICE": "cpu"})  # GPU tests: none here
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "table.tsv").read_text().startswith("device\ttorch ")
    assert (tmp_path / "runs").is_dir()
    assert not (GPU_CHECK.parents[1] / "out").exists() and not (GPU_CHECK.parents[1] / "runs" / "gpu-check-ende").exists()
