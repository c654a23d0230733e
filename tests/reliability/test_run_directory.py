"""The run directory belongs to one ``nmt train`` at a time, and a failed start leaves nothing that
blocks the retry (issue 12)."""
from __future__ import annotations

import gzip
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from conftest import write_recipe
from nmt import runs
from reliability_support import (check, error_lines, nmt_subprocess, record, reliability_data, run_cli,  # noqa: F401
                                 run_copy, small_recipe, trained_run)


def quick_recipe(data: Path, **sections) -> dict:
    """A few steps only: these tests are about the directory, not about learning."""
    return small_recipe(data, trainer={"max_steps": 3, "max_epochs": 1, **sections.pop("trainer", {})}, **sections)


def test_second_train_on_a_run_directory_in_use_is_refused(tmp_path, capsys, reliability_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(Path("r.yaml"), small_recipe(reliability_data, trainer={"max_epochs": 50}))
    run_dir = Path("runs/x")
    first = nmt_subprocess("train", recipe, "--run-dir", run_dir)
    try:
        holder = run_dir / ".lock.holder"
        deadline = time.monotonic() + 120
        while not (holder.exists() and holder.read_text().strip()) and first.poll() is None:
            assert time.monotonic() < deadline, "the first nmt train never took the run directory"
            time.sleep(0.05)
        argv = ["train", recipe, "--run-dir", run_dir]
        code, _, err = run_cli(capsys, *argv)
        holder = f"(pid {first.pid} on host {socket.gethostname()})"
        assert code == 2 and error_lines(err) == [
            f"nmt: runs/x: in use by another nmt train {holder}; wait for it or pick another --run-dir"], err
        record("run directory in use by another nmt train", argv, code, err.replace(holder, "(pid 1234 on host h)"))
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # The kernel released the lock with the killed process: the next run takes the directory.
    short = write_recipe(tmp_path / "short.yaml", small_recipe(reliability_data, trainer={"max_epochs": 50,
                                                                                          "max_steps": 2}))
    code, _, err = run_cli(capsys, "train", short, "--run-dir", run_dir)
    assert code == 0, err[-2000:]


def test_a_first_start_into_a_folder_of_other_files_is_refused_and_they_are_kept(tmp_path, capsys, reliability_data,
                                                                                monkeypatch):
    """RUN_DIR=~/mine recipes/.../run.sh trained into a folder of the user's files, then wrote its test.txt and
    test.pred over theirs. Only a run's own names, hidden files and the recipe being trained may be there."""
    monkeypatch.chdir(tmp_path)
    run_dir = Path("mine")
    run_dir.mkdir()
    (run_dir / "test.txt").write_text("my notes\n")
    (run_dir / ".hidden").write_text("x\n")
    recipe = write_recipe(run_dir / "r.yaml", quick_recipe(reliability_data))
    code, _, err = run_cli(capsys, "train", recipe, "--run-dir", run_dir)
    assert code == 2 and error_lines(err) == [
        "nmt: mine: holds files that are not a run's (test.txt); a run and what its recipe scripts write beside it "
        "(test.hyp, dev.pred ...) could replace them: pick an empty or new --run-dir"], err
    assert sorted(p.name for p in run_dir.iterdir()) == [".hidden", "r.yaml", "test.txt"]  # nothing added, nothing lost
    (run_dir / "test.txt").unlink()
    code, _, err = run_cli(capsys, "train", recipe, "--run-dir", run_dir)  # the recipe itself may sit there
    assert code == 0, err[-2000:]


def test_a_first_start_killed_before_run_json_does_not_block_the_next(tmp_path, capsys, reliability_data,
                                                                       monkeypatch):
    """SIGKILL between the run's recipe.yaml and its run.json left a recipe.yaml the next start took for the
    user's own and refused, so the folder could not be trained into again. The lock holder's file, which only
    nmt train writes, says whose it is."""
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(Path("r.yaml"), quick_recipe(reliability_data))
    run_dir = Path("runs/x")
    run_dir.mkdir(parents=True)
    (run_dir / ".lock.holder").write_text("999999 elsewhere\n")  # as a killed start leaves them
    (run_dir / "recipe.yaml").write_text(Path("r.yaml").read_text())
    code, _, err = run_cli(capsys, "train", recipe, "--run-dir", run_dir)
    assert code == 0, err[-2000:]
    assert runs.is_run(run_dir) and (run_dir / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize("fresh", [False, True], ids=["retry", "retry-fresh"])
def test_failed_start_on_bad_data_leaves_nothing_behind(tmp_path, capsys, reliability_data, fresh, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = Path("data")
    shutil.copytree(reliability_data, data)
    (data / "train.src.gz").write_bytes(b"\x1f\x8b" + b"not really gzip\n" * 50)  # gzip magic, then junk
    bad = quick_recipe(data)
    bad["data"]["train"]["src"] = "train.src.gz"
    run_dir = Path("runs/x")
    more = ["--fresh"] if fresh else []
    message = check(capsys, "fake .gz training file (gzip magic, not gzip)" + (" with --fresh" if fresh else ""),
                    "train", write_recipe(Path("bad.yaml"), bad), "--run-dir", run_dir, *more)
    assert "train.src.gz" in message
    assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())
    code, _, err = run_cli(capsys, "train", write_recipe(tmp_path / "good.yaml", quick_recipe(data)),
                           "--run-dir", run_dir, *more)
    assert code == 0, err[-2000:]
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


def test_failed_start_on_a_bad_trainer_argument_then_fresh_retry(tmp_path, capsys, reliability_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = Path("runs/x")
    bad = write_recipe(Path("bad.yaml"), quick_recipe(reliability_data, trainer={"strategy": "nonsense"}))
    message = check(capsys, "invalid trainer strategy (retried with --fresh)", "train", bad, "--run-dir", run_dir,
                    "--fresh")
    assert "strategy" in message
    assert not run_dir.exists()
    code, _, err = run_cli(capsys, "train", write_recipe(tmp_path / "good.yaml", quick_recipe(reliability_data)),
                           "--run-dir", run_dir, "--fresh")
    assert code == 0, err[-2000:]


def test_failed_start_keeps_what_was_in_an_existing_directory(tmp_path, capsys, reliability_data):
    """A directory the user made (with a note in it) loses only what the failed start added."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "NOTES.txt").write_text("mine\n")
    bad = quick_recipe(reliability_data)
    (tmp_path / "empty.tgt").write_text("\n" * 3)  # the wrong file: every line blank
    bad["data"]["train"]["tgt"] = str(tmp_path / "empty.tgt")
    code, _, err = run_cli(capsys, "train", write_recipe(tmp_path / "bad.yaml", bad), "--run-dir", run_dir)
    assert code == 2, err[-2000:]
    assert sorted(p.name for p in run_dir.iterdir()) == ["NOTES.txt"]


def test_a_failed_resume_keeps_the_run(tmp_path, capsys, reliability_data):
    """Never undo a run that existed: a resume that fails leaves its files as they were."""
    run_dir = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", quick_recipe(reliability_data))
    assert run_cli(capsys, "train", recipe, "--run-dir", run_dir)[0] == 0
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    bad = write_recipe(tmp_path / "bad.yaml", quick_recipe(reliability_data, trainer={"strategy": "nonsense"}))
    assert run_cli(capsys, "train", bad, "--run-dir", run_dir)[0] == 2
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


def test_a_resume_that_fails_before_a_checkpoint_keeps_the_runs_recipe(tmp_path, capsys, reliability_data, monkeypatch):
    """The run's recipe.yaml says how its checkpoints were trained: a resume with new settings that fails
    before it writes a checkpoint puts it back; one that trains keeps the new settings."""
    import pytorch_lightning as pl

    run_dir = tmp_path / "run"
    assert run_cli(capsys, "train", write_recipe(tmp_path / "r.yaml", quick_recipe(reliability_data)),
                   "--run-dir", run_dir)[0] == 0
    trained = (run_dir / "recipe.yaml").read_text()
    longer = write_recipe(tmp_path / "longer.yaml", quick_recipe(reliability_data, trainer={"max_steps": 5}))

    def failing_fit(self, *args, **kwargs):
        assert "max_steps: 5" in (run_dir / "recipe.yaml").read_text()  # written before fitting, as always
        raise RuntimeError("the first batch failed")
    with monkeypatch.context() as patch:
        patch.setattr(pl.Trainer, "fit", failing_fit)
        assert run_cli(capsys, "train", longer, "--run-dir", run_dir)[0] != 0
    assert (run_dir / "recipe.yaml").read_text() == trained
    assert run_cli(capsys, "train", longer, "--run-dir", run_dir)[0] == 0
    assert "max_steps: 5" in (run_dir / "recipe.yaml").read_text()


def test_a_resume_with_another_optimizer_is_refused_naming_the_key(tmp_path, capsys, reliability_data):
    """last.ckpt holds the optimizer's and the schedule's state: another one is refused before anything
    is loaded, not a KeyError from inside torch.optim."""
    run_dir = tmp_path / "run"
    assert run_cli(capsys, "train", write_recipe(tmp_path / "r.yaml", quick_recipe(reliability_data)),
                   "--run-dir", run_dir)[0] == 0
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    for key, value in (("name", "sgd"), ("scheduler", "cosine")):
        recipe = quick_recipe(reliability_data, trainer={"max_steps": 6})
        recipe.setdefault("optim", {})[key] = value
        code, _, err = run_cli(capsys, "train", write_recipe(tmp_path / "other.yaml", recipe), "--run-dir", run_dir)
        assert code == 2 and error_lines(err)[0].startswith(f"nmt: {run_dir}: optim.{key}: '{value}' differs from "
                                                            "the run being resumed"), err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_resume_with_another_learning_rate_is_refused_not_ignored(tmp_path, capsys, reliability_data):
    """The optimizer's state in last.ckpt brought back the old lr and weight_decay: the resume trained on with
    them while recipe.yaml said the new ones. Refused, naming the key, the run as it was."""
    run_dir = tmp_path / "run"
    assert run_cli(capsys, "train", write_recipe(tmp_path / "r.yaml", quick_recipe(reliability_data)),
                   "--run-dir", run_dir)[0] == 0
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    saved = quick_recipe(reliability_data).get("optim", {})
    for key, value in (("lr", 0.5), ("weight_decay", 0.3), ("warmup_steps", 7)):
        recipe = quick_recipe(reliability_data, trainer={"max_steps": 6})
        recipe.setdefault("optim", {})[key] = value
        code, _, err = run_cli(capsys, "train", write_recipe(tmp_path / "other.yaml", recipe), "--run-dir", run_dir)
        assert code == 2 and error_lines(err)[0].startswith(f"nmt: {run_dir}: optim.{key}: {value!r} differs from "
                                                            "the run being resumed"), (saved, err)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_nmt_prepare_leaves_a_trained_runs_recipe_alone(tmp_path, capsys, reliability_data):
    """Preparing trains nothing: an existing run's recipe.yaml keeps the settings its checkpoints had."""
    run_dir = tmp_path / "run"
    assert run_cli(capsys, "train", write_recipe(tmp_path / "r.yaml", quick_recipe(reliability_data)),
                   "--run-dir", run_dir)[0] == 0
    trained = (run_dir / "recipe.yaml").read_text()
    other = write_recipe(tmp_path / "o.yaml", quick_recipe(reliability_data, trainer={"max_steps": 999}))
    assert run_cli(capsys, "prepare", other, "--run-dir", run_dir)[0] == 0
    assert (run_dir / "recipe.yaml").read_text() == trained


def test_a_first_start_never_replaces_a_users_recipe_beside_it(tmp_path, capsys, reliability_data):
    """Training a folder's own recipe.yaml into that folder would replace the user's file (comments and
    all) with the run's: refused, the file as it was."""
    folder = tmp_path / "exp"
    folder.mkdir()
    recipe = write_recipe(folder / "recipe.yaml", quick_recipe(reliability_data))
    text = "# my notes\n" + recipe.read_text()
    recipe.write_text(text)
    code, _, err = run_cli(capsys, "train", recipe, "--run-dir", folder)
    assert code == 2 and error_lines(err) == [f"nmt: {folder}: holds a recipe.yaml that is not a run's, which the "
                                              "run would replace with its own; pick another --run-dir (e.g. a folder "
                                              "inside it)"], err
    assert recipe.read_text() == text and sorted(p.name for p in folder.iterdir()) == ["recipe.yaml"]


def test_fitted_dir_falls_back_to_the_old_name(tmp_path):
    assert runs.fitted_dir(tmp_path) == tmp_path / "fitted"  # a new run
    (tmp_path / "tokenizer").mkdir()
    assert runs.fitted_dir(tmp_path) == tmp_path / "tokenizer"  # a run written before fitted/ had its name
    (tmp_path / "fitted").mkdir()
    assert runs.fitted_dir(tmp_path) == tmp_path / "fitted"


def test_a_run_with_the_old_tokenizer_folder_translates_and_resumes(tmp_path, capsys, trained_run, run_copy,
                                                                     reliability_data):
    """Runs written before ``fitted/`` kept tokenizers (and labels, scalers) in ``tokenizer/``."""
    (run_copy / "fitted").rename(run_copy / "tokenizer")
    source = tmp_path / "in.txt"
    source.write_text((reliability_data / "dev.src").read_text(encoding="utf-8"), encoding="utf-8")
    outputs = []
    for run_dir in (trained_run, run_copy):
        output = tmp_path / f"{run_dir.name}-{len(outputs)}.txt"
        code, _, err = run_cli(capsys, "translate", "--run", run_dir, "-i", source, "-o", output, "--device", "cpu")
        assert code == 0, err[-2000:]
        outputs.append(output.read_text(encoding="utf-8"))
    assert outputs[0] == outputs[1] and outputs[0].strip()
    recipe = write_recipe(tmp_path / "reverse.yaml", small_recipe(reliability_data))
    code, _, err = run_cli(capsys, "train", recipe, "--run-dir", run_copy)  # finished already: resumes and stops
    assert code == 0, err[-2000:]
    assert not (run_copy / "fitted").exists()
