"""``nmt train NEW.yaml --init-from RUN``: a new run starts from a trained run's weights and tokenizer."""
from __future__ import annotations

import csv
from pathlib import Path

from conftest import write_recipe, write_reverse_corpus
from reliability_support import reliability_data, run_cli, small_recipe, trained_run  # noqa: F401


def first_val_loss(run_dir: Path) -> float:
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return next(float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss"))


def new_data_recipe(tmp_path: Path, **sections) -> Path:
    """The reverse task on other sentences (another seed), validated after 3 steps."""
    data = write_reverse_corpus(tmp_path / "new-data", n_train=300, n_dev=50, seed=7)
    trainer = {"max_steps": 3, "max_epochs": -1, "val_check_interval": 3, **sections.pop("trainer", {})}
    return write_recipe(tmp_path / "new.yaml", small_recipe(data, trainer=trainer, **sections))


def test_a_run_started_from_a_trained_one_begins_where_it_ended(tmp_path, capsys, trained_run):
    recipe = new_data_recipe(tmp_path)
    code, _, err = run_cli(capsys, "train", recipe, "--run-dir", tmp_path / "fresh")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", recipe, "--run-dir", tmp_path / "tuned", "--init-from", trained_run)
    assert code == 0, err
    fresh, tuned = first_val_loss(tmp_path / "fresh"), first_val_loss(tmp_path / "tuned")
    assert tuned < 0.5 * fresh, (tuned, fresh)  # three steps from random weights learn far less
    own = sorted(p.name for p in (trained_run / "fitted").iterdir()) if (trained_run / "fitted").is_dir() else None
    assert own is None or sorted(p.name for p in (tmp_path / "tuned" / "fitted").iterdir()) == own
    # the retry of the same command resumes the new run, --init-from or not
    code, _, err = run_cli(capsys, "train", recipe, "--run-dir", tmp_path / "tuned", "--init-from", trained_run,
                           "trainer.max_steps=6")
    assert code == 0 and "resuming" in err, err


def test_a_model_of_another_shape_is_one_line_and_leaves_nothing(tmp_path, capsys, trained_run):
    recipe = new_data_recipe(tmp_path, model={"embedding": {"size": 64}, "encoder": {"name": "gru", "hidden_size": 32},
                                              "attention": {"name": "bahdanau"},
                                              "decoder": {"name": "rnn", "hidden_size": 128}})
    code, _, err = run_cli(capsys, "train", recipe, "--run-dir", tmp_path / "tuned", "--init-from", trained_run)
    lines = [line for line in err.splitlines() if line.startswith("nmt: ")]
    assert code == 2 and len(lines) == 1, err
    assert "weights do not fit the run's model" in lines[0] and "more parameters differ" in lines[0]
    assert not (tmp_path / "tuned").exists()


def test_another_tokenizer_is_refused_before_anything_is_written(tmp_path, capsys, trained_run):
    recipe = new_data_recipe(tmp_path, data={"tokenizer": {"name": "characters"}})
    code, _, err = run_cli(capsys, "train", recipe, "--run-dir", tmp_path / "tuned", "--init-from", trained_run)
    assert code == 2 and "data.tokenizer: differs from the run it starts from" in err, err
    assert not (tmp_path / "tuned").exists()


def test_subword_sampling_may_differ_from_the_initial_run(tmp_path):
    """Sampling changes how training draws pieces, not the vocabulary: not a reason to refuse."""
    from nmt import runs
    from nmt.recipe import validate_recipe
    from nmt.train import InitialRun

    data = write_reverse_corpus(tmp_path / "data", n_train=50, n_dev=10)
    spm = {"name": "sentencepiece", "vocab_size": 30, "model_type": "unigram"}
    first = small_recipe(data, data={"tokenizer": spm})
    runs.write_run(tmp_path / "first", first)
    (tmp_path / "first" / "checkpoints" / "last.ckpt").write_bytes(b"")
    second = small_recipe(data, data={"tokenizer": {**spm, "sampling": {"alpha": 0.1}}})
    start = InitialRun.check(tmp_path / "first", validate_recipe(second, tmp_path / "second.yaml"))
    assert start.checkpoint.name == "last.ckpt"


def test_new_data_the_copied_vocabulary_does_not_know_is_warned_about(tmp_path, capsys, trained_run):
    """Fine-tuned on words outside the initial run's vocabulary, every word trained as <unk> without a word."""
    data = tmp_path / "unknown-data"
    data.mkdir()
    for split in ("train", "dev"):  # words the reverse corpus never has
        words = [[f"neu{i % 37}", f"wort{(i * 7) % 23}", "und"] for i in range(120)]
        (data / f"{split}.src").write_text("".join(" ".join(w) + "\n" for w in words))
        (data / f"{split}.tgt").write_text("".join(" ".join(reversed(w)) + "\n" for w in words))
    recipe = write_recipe(tmp_path / "unknown.yaml", small_recipe(
        data, trainer={"max_steps": 2, "max_epochs": -1, "val_check_interval": 2}))
    code, _, err = run_cli(capsys, "train", recipe, "--run-dir", tmp_path / "tuned", "--init-from", trained_run)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("nmt: warning:")]
    assert warnings == [f"nmt: warning: {tmp_path / 'tuned' / 'corpus'}: 100% of the source tokens and 100% of the "
                        f"target tokens are <unk> under the vocabulary copied from {trained_run} (--init-from), "
                        "which does not know the new data's words"], err
    # the same data with its own vocabulary: nothing to warn about
    code, _, err = run_cli(capsys, "train", recipe, "--run-dir", tmp_path / "own")
    assert code == 0 and "<unk>" not in err, err
