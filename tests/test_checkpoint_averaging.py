"""checkpoint.keep and nmt average: a run keeps its N latest and N best validations, and the averaged
checkpoint holds the element-wise mean of their weights, which nmt translate reads."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import reverse_recipe, write_recipe, write_reverse_corpus
from nmt.average import average_checkpoints, monitored_score
from nmt.cli import main
from nmt.errors import RecipeError, RunError
from nmt.recipe import load_recipe
from nmt.runs import load_checkpoint, load_run

KEEP = 3


def steps(run: Path, prefix: str) -> list[int]:
    return sorted(int(p.stem[len(prefix):]) for p in (run / "checkpoints").glob(f"{prefix}*.ckpt"))


def validations(run: Path) -> dict[int, float]:
    """val/bleu of each validation (one per epoch), by epoch, from the run's metrics.csv."""
    with open(run / "logs" / "metrics.csv", newline="") as f:
        return {int(row["epoch"]): float(row["val/bleu"]) for row in csv.DictReader(f) if row.get("val/bleu")}


def epoch(run: Path, name: str) -> int:
    return int(load_checkpoint(run / "checkpoints" / name)["epoch"])


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory) -> Path:
    """Three epochs with checkpoint.keep: 3, then the same run resumed to five."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("kept")
    data = write_reverse_corpus(base / "data", n_train=400, n_dev=30)
    for epochs in (3, 5):
        recipe = reverse_recipe(data, trainer={"max_epochs": epochs}, optim={"lr": 0.005}, checkpoint={"keep": KEEP})
        assert main(["train", str(write_recipe(base / "r.yaml", recipe)), "--run-dir", str(base / "run")]) == 0
    return base


def test_a_run_keeps_its_latest_and_best_validations_across_a_resume(kept_run: Path):
    run = kept_run / "run"
    scores = validations(run)
    assert sorted(scores) == [0, 1, 2, 3, 4]  # one validation per epoch, before and after the resume
    # the oldest step-<step>.ckpt went as newer ones came, also those written before the resume
    latest = steps(run, "step-")
    assert [epoch(run, f"step-{s}.ckpt") for s in latest] == [2, 3, 4]
    best = {epoch(run, f"best-{s}.ckpt"): s for s in steps(run, "best-")}
    assert len(best) == KEEP
    for kept, step in best.items():  # each kept for the score it had, and none dropped scored higher
        assert monitored_score(run / "checkpoints" / f"best-{step}.ckpt") == pytest.approx(scores[kept], abs=1e-4)
        assert all(scores[kept] >= scores[other] - 1e-6 for other in scores if other not in best)
    assert (run / "checkpoints" / "best.ckpt").exists()
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == latest[-1]


def test_average_last_is_the_elementwise_mean_and_translate_reads_it(kept_run: Path, tmp_path: Path):
    run = kept_run / "run"
    assert main(["average", str(run), "--last", str(KEEP)]) == 0
    averaged = load_checkpoint(run / "checkpoints" / "averaged.ckpt")
    kept = [load_checkpoint(run / "checkpoints" / f"step-{s}.ckpt")["state_dict"] for s in steps(run, "step-")]
    assert averaged["averaged_from"] == [f"step-{s}.ckpt" for s in steps(run, "step-")]
    weights = averaged["state_dict"]
    assert weights.keys() == kept[0].keys()
    for name, value in weights.items():
        expected = torch.stack([k[name].double() for k in kept]).mean(0)
        assert value.dtype == kept[0][name].dtype
        for got, want in zip(value.flatten().tolist(), expected.flatten().tolist()):
            assert got == pytest.approx(want, rel=1e-6, abs=1e-7), name
    assert any(not torch.equal(weights[n], k[n]) for k in kept for n in weights)  # not just one of them

    task = load_run(run, checkpoint=str(run / "checkpoints" / "averaged.ckpt"), device="cpu")
    assert all(torch.equal(task.state_dict()[n], weights[n]) for n in weights)
    out = tmp_path / "out.txt"
    assert main(["translate", "--run", str(run), "--checkpoint", str(run / "checkpoints" / "averaged.ckpt"),
                 "-i", str(kept_run / "data" / "test.src"), "-o", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 30


def test_checkpoint_averaged_names_each_runs_own_averaged_checkpoint(kept_run: Path, tmp_path: Path, capsys):
    run = kept_run / "run"
    assert main(["average", str(run), "--last", "2"]) == 0
    by_name, by_path = tmp_path / "name.txt", tmp_path / "path.txt"
    source = str(kept_run / "data" / "test.src")
    assert main(["translate", "--run", str(run), "--checkpoint", "averaged", "-i", source, "-o", str(by_name)]) == 0
    assert main(["translate", "--run", str(run), "--checkpoint", str(run / "checkpoints" / "averaged.ckpt"),
                 "-i", source, "-o", str(by_path)]) == 0
    assert by_name.read_text() == by_path.read_text()
    task = load_run(run, checkpoint="averaged", device="cpu")
    weights = load_checkpoint(run / "checkpoints" / "averaged.ckpt")["state_dict"]
    assert all(torch.equal(task.state_dict()[n], weights[n]) for n in weights)
    # a run without one: one line naming the file and the command that writes it
    bare = tmp_path / "bare"
    (bare / "checkpoints").mkdir(parents=True)
    for name in ("recipe.yaml", "tokenizer", "fitted", "run.json"):
        if (run / name).exists():
            (bare / name).symlink_to(run / name)
    (bare / "checkpoints" / "best.ckpt").symlink_to(run / "checkpoints" / "best.ckpt")
    assert main(["translate", "--run", str(run), "--run", str(bare), "--checkpoint", "averaged", "-i", source,
                 "-o", str(tmp_path / "x.txt")]) != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(bare / "checkpoints" / "averaged.ckpt") in err and f"nmt average {bare} --last N" in err


def test_average_best_takes_the_best_scores(kept_run: Path, tmp_path: Path):
    run = kept_run / "run"
    scores = {s: monitored_score(run / "checkpoints" / f"best-{s}.ckpt") for s in steps(run, "best-")}
    assert main(["average", str(run), "--best", "2", "-o", str(tmp_path / "two.ckpt")]) == 0
    picked = [int(name[len("best-"):-len(".ckpt")]) for name in load_checkpoint(tmp_path / "two.ckpt")["averaged_from"]]
    assert len(picked) == 2
    left_out = [s for s in scores if s not in picked]
    assert min(scores[s] for s in picked) >= max(scores[s] for s in left_out)


def test_too_few_checkpoints_name_what_exists_and_the_key(kept_run: Path, capsys):
    run = kept_run / "run"
    assert main(["average", str(run), "--last", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    names = ", ".join(f"step-{s}.ckpt" for s in steps(run, "step-"))
    assert f"found 3 ({names})" in err and "checkpoint.keep=4" in err
    assert main(["average", str(run)]) == 2
    assert "give one of --last N or --best N" in capsys.readouterr().err
    assert main(["average", str(run), "--last", "2", "--best", "2"]) == 2
    assert main(["average", str(run), "--last", "2", "-o", str(run / "checkpoints" / "last.ckpt")]) == 2
    assert "is the run's last.ckpt" in capsys.readouterr().err


@pytest.mark.parametrize("inside", ["run.json", "recipe.yaml", "fitted/READY", "kept-step"])
def test_an_average_over_a_file_of_the_run_is_refused_and_the_file_kept(kept_run: Path, capsys, inside: str):
    """nmt average -o RUN/run.json (or a kept step-N.ckpt, which a later --last then averaged again) exited 0
    and broke the run."""
    run = kept_run / "run"
    target = run / "checkpoints" / f"step-{steps(run, 'step-')[0]}.ckpt" if inside == "kept-step" else run / inside
    before = target.read_bytes()
    capsys.readouterr()
    assert main(["average", str(run), "--last", "2", "-o", str(target)]) == 2
    rel = target.relative_to(run).as_posix()
    assert capsys.readouterr().err.splitlines() == [f"nmt: {target}: is a file of the run {run} ({rel}); "
                                                    "write the output elsewhere"]
    assert target.read_bytes() == before


def test_a_run_with_the_default_keeps_none_to_average(tmp_path: Path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text('{"format": 1, "nmt_version": "0"}\n')
    assert main(["average", str(run), "--best", "2"]) == 2
    assert "found 0 (none); train with checkpoint.keep=2 or more" in capsys.readouterr().err


def save(path: Path, step: int, weights: dict) -> Path:
    torch.save({"state_dict": weights, "global_step": step}, path)
    return path


def test_floating_weights_are_averaged_and_integer_buffers_come_from_the_newest(tmp_path: Path):
    torch.manual_seed(0)
    weights = [{"w": torch.randn(3, 4), "h": torch.randn(5).half(), "count": torch.tensor(step)}
               for step in (10, 30, 20)]
    paths = [save(tmp_path / f"{i}.ckpt", step, w) for i, (step, w) in enumerate(zip((10, 30, 20), weights))]
    averaged = average_checkpoints(paths)
    assert averaged["global_step"] == 30
    assert averaged["state_dict"]["count"].item() == 30  # the newest by step, not the last listed
    for name in ("w", "h"):
        got = averaged["state_dict"][name]
        assert got.dtype == weights[0][name].dtype
        for index in range(got.numel()):
            want = sum(float(w[name].flatten()[index]) for w in weights) / 3
            assert float(got.flatten()[index]) == pytest.approx(want, rel=1e-3 if name == "h" else 1e-6)


def test_checkpoints_of_different_models_are_refused(tmp_path: Path):
    a = save(tmp_path / "a.ckpt", 1, {"w": torch.zeros(3, 4)})
    b = save(tmp_path / "b.ckpt", 2, {"w": torch.zeros(3, 5)})
    c = save(tmp_path / "c.ckpt", 3, {"w": torch.zeros(3, 4), "v": torch.zeros(2)})
    with pytest.raises(RunError, match=r"w is \[3, 5\], \[3, 4\] in a.ckpt"):
        average_checkpoints([a, b])
    with pytest.raises(RunError, match="v is only in c.ckpt"):
        average_checkpoints([a, c])


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "many"])
def test_checkpoint_keep_is_validated(reverse_data: Path, tmp_path: Path, value: str):
    recipe = write_recipe(tmp_path / "r.yaml", reverse_recipe(reverse_data))
    with pytest.raises(RecipeError, match="override checkpoint.keep: "):
        load_recipe(recipe, [f"checkpoint.keep={value}"])
