"""The training-speed benchmark's variants: batch sizes (``--batch-tokens``), the numbers that tell
whether a step is bound by kernel launches (tokens/s grows with the batch) or by arithmetic; and the
decoder cell's ways under bf16 (RNNDecoder.AUTOCAST_CELL)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import load_benchmark, reverse_recipe, write_recipe
from nmt.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_speed():
    return load_benchmark("train_speed")


def test_batches_of_another_size_and_the_recipe_left_alone(train_speed, reverse_data, tmp_path, one_thread):
    recipe_path = write_recipe(tmp_path / "r.yaml", reverse_recipe(reverse_data))
    _, task = train_speed.build(str(recipe_path), "cpu")
    default, _ = train_speed.make_batches(task, 4)
    larger, _ = train_speed.make_batches(task, 4, batch_tokens=1600)
    assert task.recipe.data.batch_tokens == 400  # the recipe is as it was
    sentences = [b["src"].size(0) for b in default]
    sentences_larger = [b["src"].size(0) for b in larger]
    # four times the tokens: about four times the sentences per batch
    assert sum(sentences_larger) > 3 * sum(sentences)
    assert max(b["src"].numel() for b in larger) <= 1600


def test_batches_enough_where_one_epoch_has_fewer(train_speed, reverse_data, tmp_path, one_thread):
    """Batches so large that an epoch holds fewer than the steps asked for: the next epochs' batches
    follow, and the unbucketed ones go around the shuffled corpus again."""
    recipe_path = write_recipe(tmp_path / "r.yaml", reverse_recipe(reverse_data))
    _, task = train_speed.build(str(recipe_path), "cpu")
    sentences = len(task.make_datamodule().train_set)
    bucketed, unbucketed = train_speed.make_batches(task, 12, batch_tokens=20_000)
    assert len(bucketed) == len(unbucketed) == 12
    assert sum(b["src"].size(0) for b in bucketed) > sentences  # more than one epoch's sentences
    assert [b["src"].size(0) for b in unbucketed] == [b["src"].size(0) for b in bucketed]


def test_each_size_measured_in_fp32_and_bf16(train_speed, reverse_data, tmp_path, one_thread, capsys):
    recipe_path = write_recipe(tmp_path / "r.yaml", reverse_recipe(reverse_data))
    rates = train_speed.main([str(recipe_path), "--steps", "1", "--warmup", "0", "--device", "cpu",
                              "--batch-tokens", "200", "800"])
    assert {"nmt@200", "bf16@200", "nmt@800", "bf16@800"} <= set(rates)
    # teacher forcing the other ways than the CPU's (shared), and stepwise the decoder cell's other ways
    # under bf16 beside the CPU's default (autocast's)
    assert {"stepwise", "bf16-stepwise", "hoisted", "bf16-hoisted", "bf16-f32cell", "bf16-writtencell"} <= set(rates)
    assert not {"shared", "bf16-shared", "bf16-bf16cell"} & set(rates)
    assert all(rate > 0 for rate in rates.values())
    assert "bf16@800" in capsys.readouterr().out


def test_each_other_way_runs_with_its_setting_and_restores_the_default(train_speed, reverse_data, tmp_path):
    recipe_path = write_recipe(tmp_path / "r.yaml", reverse_recipe(reverse_data))
    _, task = train_speed.build(str(recipe_path), "cpu")
    decoder = type(task.decoder)
    defaults = (dict(decoder.TEACHER_FORCING), dict(decoder.AUTOCAST_CELL))

    def settings(batch):
        return decoder.TEACHER_FORCING["cpu"], decoder.AUTOCAST_CELL["cpu"], decoder.TEACHER_FORCING["cuda"]
    ways = train_speed.other_ways(task, settings, "cpu")
    assert {name: (bf16, loss(None)) for name, (bf16, loss) in ways.items()} == {
        "stepwise": (False, ("stepwise", "autocast", "stepwise")),
        "bf16-stepwise": (True, ("stepwise", "autocast", "stepwise")),
        "hoisted": (False, ("hoisted", "autocast", "stepwise")),
        "bf16-hoisted": (True, ("hoisted", "autocast", "stepwise")),
        "bf16-f32cell": (True, ("stepwise", "float32", "stepwise")),
        "bf16-writtencell": (True, ("stepwise", "written", "stepwise"))}
    assert (decoder.TEACHER_FORCING, decoder.AUTOCAST_CELL) == defaults
    cuda = train_speed.other_ways(task, settings, "cuda")  # the rows gpu_check.sh prints
    assert set(cuda) == {"hoisted", "bf16-hoisted", "shared", "bf16-shared", "bf16-bf16cell", "bf16-writtencell"}
    decoder.TEACHER_FORCING = {**defaults[0], "cpu": "hoisted"}  # a device whose default is hoisted
    try:
        assert set(train_speed.other_ways(task, settings, "cpu")) == {"stepwise", "bf16-stepwise", "shared", "bf16-shared",
                                                                     "bf16-f32cell", "bf16-writtencell"}
        decoder.TEACHER_FORCING = {**defaults[0], "cpu": "stepwise"}
        assert set(train_speed.other_ways(task, settings, "cpu")) == {"hoisted", "bf16-hoisted", "shared", "bf16-shared",
                                                                     "bf16-f32cell", "bf16-writtencell"}
    finally:
        decoder.TEACHER_FORCING = defaults[0]


@pytest.mark.parametrize("args, where, what", [
    (["--batch-tokens", "200", "0"], "--batch-tokens", "expected at least 1, got 0"),
    (["--steps", "-1"], "--steps", "expected at least 1, got -1"),  # was a ZeroDivisionError
    (["--steps", "0"], "--steps", "expected at least 1, got 0"),
    (["--steps", "100001"], "--steps", "expected at most 100000, got 100001"),
    (["--steps", "abc"], "--steps", "expected an integer, got 'abc'"),
    (["--warmup", "nan"], "--warmup", "expected an integer, got 'nan'"),
    (["--static", "0"], "--static", "expected at least 1, got 0"),
    (["--device", "gpu"], "--device", "expected cpu, cuda or cuda:N, got 'gpu'"),
    (["--bogus"], "train_speed.py", "unrecognized arguments: --bogus"),
])
def test_bad_numbers_and_arguments_are_refused_before_anything_is_built(train_speed, reverse_data, tmp_path, args, where,
                                                                       what, monkeypatch):
    """One UserError (one line through script_main, exit 2), before the recipe is loaded or a model built."""
    recipe_path = write_recipe(tmp_path / "r.yaml", reverse_recipe(reverse_data))
    monkeypatch.setattr(train_speed.sys, "argv", ["train_speed.py"])
    monkeypatch.setattr(train_speed, "build", lambda *a: pytest.fail("built a model"))
    with pytest.raises(UserError) as error:
        train_speed.main([str(recipe_path), *args])
    assert (error.value.where, error.value.what) == (where, what)


def test_script_main_turns_a_user_error_into_one_line_and_exit_2(train_speed, tmp_path, capsys):
    assert train_speed.script_main(train_speed.main, [str(tmp_path / "nope.yaml"), "--steps", "1"]) == 2
    assert capsys.readouterr().err == f"nmt: {tmp_path / 'nope.yaml'}: recipe file not found\n"


def test_static_rows_measure_the_same_sentences_padded_and_compiled_per_shape(train_speed, reverse_data, tmp_path,
                                                                            one_thread, capsys):
    recipe = reverse_recipe(reverse_data, data={"max_length": 12})
    recipe_path = write_recipe(tmp_path / "r.yaml", recipe)
    _, task = train_speed.build(str(recipe_path), "cpu")
    bucketed, _ = train_speed.make_batches(task, 3)
    padded, _ = train_speed.make_batches(task, 3, pad_lengths=[8, 13])
    assert task.recipe.data.pad_lengths is None  # the recipe is as it was
    for plain, pad in zip(bucketed, padded):
        rows = plain["src"].size(0)
        assert torch.equal(pad["ids"][:rows], plain["ids"]) and (pad["ids"][rows:] == -1).all()
        assert pad["src"].size(0) % 8 == 0 and pad["src"].size(1) in (8, 13)
    rates = train_speed.main([str(recipe_path), "--steps", "1", "--warmup", "0", "--device", "cpu", "--static", "8", "13"])
    assert {"static", "bf16+static"} <= set(rates) and all(rate > 0 for rate in rates.values())
    assert "batch shapes among" in capsys.readouterr().err
    with pytest.raises(UserError, match="the last length must hold") as error:  # data.pad_lengths' own check
        train_speed.main([str(recipe_path), "--steps", "1", "--device", "cpu", "--static", "8", "12"])
    assert error.value.where == "--static 8 12"
    with pytest.raises(UserError, match="expected a non-empty list of increasing lengths"):
        train_speed.main([str(recipe_path), "--steps", "1", "--device", "cpu", "--static", "13", "8"])


def test_a_timeout_s_signal_reports_the_steps_timed_so_far(train_speed, reverse_data, tmp_path, one_thread,
                                                            capsys, monkeypatch):
    """``timeout`` (benchmarks/gpu_check.sh) sends SIGTERM: the rates of the whole steps timed before it
    are printed instead of nothing, and the signal's handler is put back."""
    recipe_path = write_recipe(tmp_path / "r.yaml", reverse_recipe(reverse_data))
    calls, real_step = [], train_speed.step

    def step(*args):
        calls.append(1)
        if len(calls) == 3 * 3 + 2:  # the fourth step's second variant (three variants, one warm-up step)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(*args)

    monkeypatch.setattr(train_speed, "step", step)
    monkeypatch.setattr(train_speed, "other_ways", lambda *_: {})  # nmt, bf16, unbucketed
    before = signal.getsignal(signal.SIGTERM)
    rates = train_speed.main([str(recipe_path), "--steps", "50", "--warmup", "1", "--device", "cpu"])
    assert signal.getsignal(signal.SIGTERM) is before
    assert set(rates) == {"nmt", "bf16", "unbucketed"} and all(rate > 0 for rate in rates.values())
    out, err = capsys.readouterr()
    assert "stopped by SIGTERM after 2 of 50 timed steps" in err
    assert ": 2 training steps per variant" in out and "bf16" in out


def sigterm_at_the_second_call(function):
    """``function``, sending this process SIGTERM (what ``timeout`` sends) as it is called the second time."""
    calls = []

    def wrapped(*args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return function(*args)
    return wrapped


def test_a_timeout_s_signal_while_counting_operations_keeps_the_rates(train_speed, reverse_data, tmp_path, one_thread,
                                                                       capsys, monkeypatch):
    """SIGTERM after the timed steps, while the operations per position are counted: every rate is
    printed, with the counts made before it."""
    recipe_path = write_recipe(tmp_path / "r.yaml", reverse_recipe(reverse_data))
    monkeypatch.setattr(train_speed, "ops_per_position", sigterm_at_the_second_call(train_speed.ops_per_position))
    monkeypatch.setattr(train_speed, "other_ways", lambda *_: {})  # nmt, bf16, unbucketed
    rates = train_speed.main([str(recipe_path), "--steps", "2", "--warmup", "0", "--device", "cpu"])
    assert set(rates) == {"nmt", "bf16", "unbucketed"}
    out, err = capsys.readouterr()
    assert "stopped by SIGTERM while counting operations per position" in err
    rows = {line.split()[0]: line for line in out.splitlines() if "target tokens/s" in line}
    assert set(rows) == {"nmt", "bf16", "unbucketed"}
    assert "ops/position" in rows["nmt"] and "ops/position" not in rows["bf16"] + rows["unbucketed"]


def test_ops_per_position_counts_what_each_target_position_adds(train_speed, reverse_data, tmp_path, one_thread,
                                                                 monkeypatch):
    """The count is per target position, forward and backward: the same for batches of any length (work
    done once per batch cancels out), and one more multiplication at each position counts 2 (it and its
    gradient's); views count nothing."""
    recipe_path = write_recipe(tmp_path / "r.yaml", reverse_recipe(reverse_data))
    _, task = train_speed.build(str(recipe_path), "cpu")
    bucketed, _ = train_speed.make_batches(task, 6)

    def loss(batch):
        total, ntokens = task.loss(batch, label_smoothing=0.1)
        return total / ntokens, ntokens
    loss(bucketed[0])[0].backward()  # gradients there already, as after the timed steps: not counted
    counts = {train_speed.ops_per_position(task, b, "cpu", False, loss) for b in bucketed if b["tgt_in"].size(1) >= 2}
    assert len({b["tgt_in"].size(1) for b in bucketed}) > 1 and len(counts) == 1
    base = counts.pop()
    assert base > 10 and base == int(base)
    decoder, attend = type(task.decoder), type(task.decoder)._attend
    monkeypatch.setattr(decoder, "_attend", lambda self, *a: (lambda o, w: (o * 1.0, w))(*attend(self, *a)))
    assert train_speed.ops_per_position(task, bucketed[0], "cpu", False, loss) == base + 2
    monkeypatch.setattr(decoder, "_attend", lambda self, *a: (lambda o, w: (o.view(o.shape).t().t(), w))(*attend(self, *a)))
    assert train_speed.ops_per_position(task, bucketed[0], "cpu", False, loss) == base


def test_a_count_that_fails_leaves_the_rates(train_speed, reverse_data, tmp_path, one_thread, capsys, monkeypatch):
    """Counting reads torch's dispatch internals (OpOverload.is_view): where another torch breaks it, the
    rates print without the counts and the reason goes to stderr."""
    recipe_path = write_recipe(tmp_path / "r.yaml", reverse_recipe(reverse_data))

    def broken(*args):
        raise AttributeError("'OpOverload' object has no attribute 'is_view'")
    monkeypatch.setattr(train_speed, "ops_per_position", broken)
    monkeypatch.setattr(train_speed, "other_ways", lambda *_: {})
    rates = train_speed.main([str(recipe_path), "--steps", "1", "--warmup", "0", "--device", "cpu"])
    assert set(rates) == {"nmt", "bf16", "unbucketed"}
    out, err = capsys.readouterr()
    assert "operations per position not counted: AttributeError" in err
    assert "target tokens/s" in out and "ops/position" not in out


def test_profile_shows_where_a_step_of_each_named_variant_spends(train_speed, reverse_data, tmp_path, one_thread, capsys):
    """--profile: after the table, a summary line and the aten operations of each named variant a step;
    bf16's step shows autocast's casts, which a float32 step has fewer of."""
    recipe_path = write_recipe(tmp_path / "r.yaml", reverse_recipe(reverse_data))
    train_speed.main([str(recipe_path), "--steps", "2", "--warmup", "0", "--device", "cpu", "--profile", "nmt", "bf16"])
    out = capsys.readouterr().out
    table, profiles = out.split("\nprofile nmt:")
    assert "  bf16 " in table and "profile" not in table  # the rates first, unchanged
    summaries = [line for line in ("profile nmt:" + profiles).splitlines() if line.startswith("profile ")]
    assert [line.split(":")[0] for line in summaries] == ["profile nmt", "profile bf16"]
    assert all(re.search(r": 2 steps on cpu, [0-9.]+ ms a step$", line) for line in summaries), summaries
    assert "aten::mm" in profiles or "aten::addmm" in profiles

    _, task = train_speed.build(str(recipe_path), "cpu")
    batches, _ = train_speed.make_batches(task, 2)
    optimizer = torch.optim.Adam(task.parameters(), lr=1e-4)

    def loss(batch):
        total, ntokens = task.loss(batch, label_smoothing=0.1)
        return total / ntokens, ntokens
    nmt, bf16 = (train_speed.profile_variant(task, optimizer, batches, "cpu", bf16, loss) for bf16 in (False, True))
    assert nmt["steps"] == 2 and nmt["ms"] > 0 and not nmt["launches"]  # no device kernels on the CPU
    positions = min(b["tgt_in"].size(1) for b in batches)
    assert nmt["calls"]["aten::mm"] + nmt["calls"].get("aten::addmm", 0) >= positions  # a product at each position at least
    assert bf16["calls"].get("aten::_to_copy", 0) > nmt["calls"].get("aten::_to_copy", 0)


def test_profile_of_a_variant_not_measured_is_refused(train_speed, reverse_data, tmp_path, capsys):
    recipe_path = write_recipe(tmp_path / "r.yaml", reverse_recipe(reverse_data))
    with pytest.raises(UserError, match="no variant loop in this run") as error:
        train_speed.main([str(recipe_path), "--steps", "1", "--device", "cpu", "--profile", "loop"])
    assert error.value.where == "--profile"


def test_a_timeout_s_signal_while_profiling_keeps_the_rates_and_the_profiles_made(train_speed, reverse_data, tmp_path,
                                                                                   one_thread, capsys, monkeypatch):
    recipe_path = write_recipe(tmp_path / "r.yaml", reverse_recipe(reverse_data))
    monkeypatch.setattr(train_speed, "profile_variant", sigterm_at_the_second_call(train_speed.profile_variant))
    monkeypatch.setattr(train_speed, "other_ways", lambda *_: {})
    rates = train_speed.main([str(recipe_path), "--steps", "1", "--warmup", "0", "--device", "cpu", "--profile", "nmt", "bf16"])
    assert set(rates) == {"nmt", "bf16", "unbucketed"}
    out, err = capsys.readouterr()
    assert "stopped by SIGTERM while profiling" in err
    assert "profile nmt: " in out and "profile bf16: " not in out and "ops/position" not in out


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_variants_gpu_check_profiles_are_measured_on_its_device(train_speed, reverse_data, tmp_path, device):
    """benchmarks/gpu_check.sh's default PROFILE names variants that train_speed measures there (a name
    that is not stops the whole speed run): the rows differ by device, as its defaults do."""
    line = next(line for line in (ROOT / "benchmarks" / "gpu_check.sh").read_text().splitlines() if line.startswith("PROFILE="))
    names = subprocess.run(["bash", "-c", f'DEVICE={device}; {line}; echo "$PROFILE"'], capture_output=True, text=True,
                           check=True).stdout.split()
    _, task = train_speed.build(str(write_recipe(tmp_path / "r.yaml", reverse_recipe(reverse_data))), "cpu")
    measured, _ = train_speed.variants(task, [], [], True, device)
    assert len(names) >= 3 and set(names) <= set(measured), (names, sorted(measured))
