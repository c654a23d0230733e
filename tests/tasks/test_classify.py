"""The classify task: it learns a synthetic task that needs the whole sequence, beats the majority
class by a clear margin, serves nmt predict, and reports data errors with file:line."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from nmt.cli import main
from nmt.data.labelled import majority_baseline, read_tsv
from nmt.errors import DataError
from nmt.recipe import validate_recipe
from nmt.train import train_recipe


def write_counting_task(directory: Path, n_train: int = 1500, n_dev: int = 200, seed: int = 0) -> Path:
    """Label 'more' when 'a' occurs more often than 'b' in a random sequence, else 'fewer'."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = ["label\tsentence"]
        for _ in range(n):
            words = [rng.choice("abcd") for _ in range(rng.randint(3, 10))]
            lines.append(f"{'more' if words.count('a') > words.count('b') else 'fewer'}\t{' '.join(words)}")
        (directory / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return directory


def write_vector_task(directory: Path, n_train: int = 800, n_dev: int = 200, seed: int = 0) -> Path:
    """Sequences of 2-d vectors; the label says whether the first feature sums to more than zero."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_dev)):
        lines = ["label\tsequence"]
        for _ in range(n):
            steps = [(rng.gauss(0, 1), rng.gauss(5, 3)) for _ in range(rng.randint(2, 8))]
            label = "up" if sum(s[0] for s in steps) > 0 else "down"
            lines.append(label + "\t" + " ".join(f"{x:.3f},{y:.3f}" for x, y in steps))
        (directory / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return directory


def classify_recipe(data_dir: Path, **sections) -> dict:
    recipe = {
        "name": "counting", "task": "classify", "seed": 1,
        "data": {"root": str(data_dir), "train": "train.tsv", "valid": "dev.tsv", "batch_tokens": 400},
        "model": {"embedding": {"size": 32}, "encoder": {"name": "gru", "hidden_size": 48}, "pooling": "attention"},
        "optim": {"lr": 0.005},
        "trainer": {"max_epochs": 6, "accelerator": "cpu", "enable_progress_bar": False,
                    "enable_model_summary": False},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) else value
    return recipe


def dev_accuracy(run_dir: Path, data_dir: Path, dev: str = "dev.tsv", column: str = "sentence") -> tuple[float, float]:
    rows = read_tsv(data_dir / dev, text_column=column)
    (run_dir / "dev.txt").write_text("".join(r.text + "\n" for r in rows))
    assert main(["predict", "--run", str(run_dir), "-i", str(run_dir / "dev.txt"), "-o", str(run_dir / "dev.out"),
                 "--device", "cpu"]) == 0
    predicted = (run_dir / "dev.out").read_text().splitlines()
    accuracy = sum(p == r.label for p, r in zip(predicted, rows)) / len(rows)
    train = [r.label for r in read_tsv(data_dir / "train.tsv", text_column=column)]
    return accuracy, majority_baseline(train, [r.label for r in rows])


@pytest.fixture(scope="module")
def counting_run(tmp_path_factory):
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("classify")
    data = write_counting_task(base / "data")
    recipe = validate_recipe(classify_recipe(data), base / "counting.yaml")
    return train_recipe(recipe, base / "run"), data


def test_classify_beats_majority(counting_run):
    run_dir, data = counting_run
    accuracy, majority = dev_accuracy(run_dir, data)
    assert accuracy >= majority + 0.3, (accuracy, majority)
    assert (run_dir / "fitted" / "labels.json").exists()


def test_predict_probabilities_and_empty_lines(counting_run, tmp_path):
    run_dir, _ = counting_run
    (tmp_path / "in.txt").write_text("a a a c\n\nb b b d\n")
    assert main(["predict", "--run", str(run_dir), "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "out.txt"),
                 "--probabilities", "--device", "cpu"]) == 0
    lines = (tmp_path / "out.txt").read_text().split("\n")
    assert lines[1] == "" and lines[3] == "" and len(lines) == 4
    first = lines[0].split("\t")
    assert first[0] == "more" and sorted(p.split("=")[0] for p in first[1:]) == ["fewer", "more"]
    assert abs(sum(float(p.split("=")[1]) for p in first[1:]) - 1) < 1e-3
    assert lines[2].split("\t")[0] == "fewer"


@pytest.mark.parametrize("pooling", ["final", "mean", "max"])
def test_other_poolings_build_and_run(tmp_path, pooling):
    data = write_counting_task(tmp_path / "data", n_train=60, n_dev=20)
    recipe = validate_recipe(classify_recipe(data, model={"pooling": pooling, "encoder": {"name": "lstm", "hidden_size": 8}},
                                             trainer={"max_epochs": 1}), tmp_path / "r.yaml")
    run_dir = train_recipe(recipe, tmp_path / "run")
    assert (run_dir / "checkpoints" / "best.ckpt").exists()


def test_max_pooling_ignores_padding():
    from types import SimpleNamespace

    from nmt.contracts import EncoderOutput
    from nmt.tasks.classify import ClassifyTask

    states = torch.tensor([[[1.0, -2.0], [3.0, -1.0], [99.0, 99.0]]])  # [B=1,S=3,D=2], the last step is padding
    mask = torch.tensor([[True, True, False]])
    encoded = EncoderOutput(states=states, mask=mask, pooled=torch.tensor([[7.0, 8.0]]))
    assert ClassifyTask.pool(SimpleNamespace(pooling="max"), encoded).tolist() == [[3.0, -1.0]]
    assert ClassifyTask.pool(SimpleNamespace(pooling="mean"), encoded).tolist() == [[2.0, -1.5]]
    assert ClassifyTask.pool(SimpleNamespace(pooling="final"), encoded).tolist() == [[7.0, 8.0]]  # the encoder's summary


def test_numeric_vectors(tmp_path):
    torch.set_num_threads(1)
    data = write_vector_task(tmp_path / "data")
    recipe = classify_recipe(data, data={"valid": "test.tsv", "input": "vectors", "text_column": "sequence"},
                             model={"pooling": "mean"}, trainer={"max_epochs": 8})
    run_dir = train_recipe(validate_recipe(recipe, tmp_path / "v.yaml"), tmp_path / "run")
    accuracy, majority = dev_accuracy(run_dir, data, "test.tsv", "sequence")
    assert accuracy >= majority + 0.3, (accuracy, majority)
    # a numeric line over --max-input-tokens is answered from its first steps, as a text line from its tokens
    steps = ["1.000,5.000", "-2.000,4.000", "0.500,6.000", "3.000,5.000", "-4.000,5.000", "-4.000,5.000"]
    (run_dir / "long.txt").write_text(" ".join(steps) + "\n" + " ".join(steps[:3]) + "\n")
    assert main(["predict", "--run", str(run_dir), "-i", str(run_dir / "long.txt"), "-o", str(run_dir / "long.out"),
                 "--max-input-tokens", "3", "--probabilities", "--device", "cpu"]) == 0
    cut, prefix = (run_dir / "long.out").read_text().splitlines()
    assert cut == prefix


def test_unknown_dev_label_names_file_and_line(tmp_path):
    data = write_counting_task(tmp_path / "data", n_train=30, n_dev=5)
    with open(data / "dev.tsv", "a") as f:
        f.write("neutral\ta b\n")
    recipe = validate_recipe(classify_recipe(data), tmp_path / "r.yaml")
    with pytest.raises(DataError, match=r"dev.tsv:7: unknown label 'neutral'"):
        train_recipe(recipe, tmp_path / "run")


def test_missing_column_through_the_cli(tmp_path, capsys):
    data = write_counting_task(tmp_path / "data", n_train=30, n_dev=5)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(classify_recipe(data, data={"text_column": "content"})))
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    assert f"{data / 'train.tsv'}:1: no column 'content' (columns: label, sentence)" in capsys.readouterr().err


def test_word_dropout_replaces_real_tokens_only():
    from nmt.tasks.labels import drop_to_unk

    torch.manual_seed(0)
    ids = torch.tensor([[5, 6, 7, 8, 0, 0]] * 2000)  # [B,S], two padding positions per row
    assert torch.equal(drop_to_unk(ids, 0.0, pad_id=0, unk_id=1), ids)
    dropped = drop_to_unk(ids, 0.3, pad_id=0, unk_id=1)
    assert (dropped[:, 4:] == 0).all()  # padding stays padding
    changed = dropped[:, :4] != ids[:, :4]
    assert (dropped[:, :4][changed] == 1).all() and abs(changed.float().mean().item() - 0.3) < 0.02


def training_task_and_batch(counting_run):
    """The trained counting model in train mode (as in a training step) and a batch of 64 dev examples."""
    from nmt.data.labelled import ExampleCollator
    from nmt.runs import load_run

    task = load_run(counting_run[0], device="cpu").train()
    return task, ExampleCollator(task.pad_id)(task.examples("valid")[:64])


def test_adversarial_step_moves_the_inputs_uphill(counting_run):
    """The second pass sees inputs moved along the loss gradient: its loss exceeds the clean loss and
    the loss after a random move of the same length."""
    task, batch = training_task_and_batch(counting_run)  # no dropout in this model
    epsilon = 3.0
    clean, uphill, _ = task.adversarial_losses(batch, epsilon)
    noise = torch.randn(*batch["src"].shape, task.recipe.model.embedding.size, generator=torch.Generator().manual_seed(0))
    noise = epsilon * noise / noise.flatten(1).norm(dim=1)[:, None, None]
    random_move = F.cross_entropy(*task.scores(batch, noise))
    assert uphill.item() > 1.5 * clean.item() and uphill.item() > 1.5 * random_move.item(), \
        (clean.item(), uphill.item(), random_move.item())


def test_adversarial_training_learns(tmp_path):
    torch.set_num_threads(1)
    data = write_counting_task(tmp_path / "data")
    recipe = classify_recipe(data, model={"embedding": {"size": 32, "dropout": 0.2, "adversarial": 1.0}})
    run_dir = train_recipe(validate_recipe(recipe, tmp_path / "adv.yaml"), tmp_path / "run")
    accuracy, majority = dev_accuracy(run_dir, data)
    assert accuracy >= majority + 0.3, (accuracy, majority)


def test_negative_adversarial_distance_names_the_key(tmp_path):
    from nmt.errors import RecipeError

    recipe = classify_recipe(tmp_path, model={"embedding": {"size": 8, "adversarial": -1}})
    with pytest.raises(RecipeError, match=r"model\.embedding\.adversarial: input should be greater than or equal to 0"):
        validate_recipe(recipe, tmp_path / "r.yaml")


def test_adversarial_passes_share_dropout_masks(counting_run):
    """With a move of length 0 the second pass repeats the first exactly, dropout included, so the
    step returns twice the first loss; with fresh masks the two losses would differ."""
    task, batch = training_task_and_batch(counting_run)
    task.embed_dropout.p = task.output_dropout.p = 0.5
    torch.manual_seed(0)
    first = F.cross_entropy(*task.scores(batch))
    torch.manual_seed(0)
    total = sum(task.adversarial_losses(batch, 0.0)[:2])
    torch.testing.assert_close(total, 2 * first)
    assert not torch.allclose(F.cross_entropy(*task.scores(batch)), first)  # the masks do change the loss
