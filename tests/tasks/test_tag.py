"""The tag task: it learns tags that depend on the left neighbour, beats the most-frequent-tag
baseline by a clear margin, tags multi-piece words once each, and serves nmt predict."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from nmt.cli import main
from nmt.data.labelled import most_frequent_tag_baseline, read_conllu
from nmt.errors import DataError
from nmt.recipe import validate_recipe
from nmt.train import train_recipe

WORDS = ["ab", "cab", "bad", "dace", "ace", "bead", "cede", "dab"]


def tag_of(word: str, left: str | None) -> str:
    """A tag decided by the word and its left neighbour: no tag table of single words can learn it."""
    return f"{'NV'[WORDS.index(word) % 2]}{'NV'[WORDS.index(left) % 2] if left else 'S'}"


def write_conllu(path: Path, sentences: list[list[str]]) -> None:
    blocks = []
    for i, words in enumerate(sentences):
        rows = [f"# sent_id = {i}"]
        for k, word in enumerate(words):
            tag = tag_of(word, words[k - 1] if k else None)
            rows.append(f"{k + 1}\t{word}\t{word}\t{tag}\t_\t_\t0\tdep\t_\t_")
        blocks.append("\n".join(rows) + "\n")
    path.write_text("\n".join(blocks))


def write_tag_task(directory: Path, n_train: int = 1200, n_dev: int = 150, seed: int = 0) -> Path:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        write_conllu(directory / f"{split}.conllu", [[rng.choice(WORDS) for _ in range(rng.randint(2, 9))]
                                                     for _ in range(n)])
    return directory


def tag_recipe(data_dir: Path, **sections) -> dict:
    recipe = {
        "name": "tagging", "task": "tag", "seed": 1,
        "data": {"root": str(data_dir), "train": "train.conllu", "valid": "dev.conllu", "batch_tokens": 600,
                 "tokenizer": {"name": "characters"}},  # every word is several pieces
        "model": {"embedding": {"size": 32}, "encoder": {"name": "lstm", "hidden_size": 48}},
        "optim": {"lr": 0.01},
        "trainer": {"max_epochs": 3, "accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) else value
    return recipe


@pytest.fixture(scope="module")
def tag_run(tmp_path_factory):
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("tag")
    data = write_tag_task(base / "data")
    return train_recipe(validate_recipe(tag_recipe(data), base / "tag.yaml"), base / "run"), data


def test_tag_beats_most_frequent_tag_and_predict_round_trip(tag_run):
    run_dir, data = tag_run
    dev = read_conllu(data / "dev.conllu")
    (run_dir / "dev.txt").write_text("".join(" ".join(s.words) + "\n" for s in dev) + "\n")
    assert main(["predict", "--run", str(run_dir), "-i", str(run_dir / "dev.txt"), "-o", str(run_dir / "dev.out"),
                 "--device", "cpu"]) == 0
    lines = (run_dir / "dev.out").read_text().split("\n")
    assert len(lines) == len(dev) + 2 and lines[-2] == ""  # the empty input line stays empty
    predicted = [t for line in lines[: len(dev)] for t in line.split()]
    gold = [t for s in dev for t in s.tags]
    assert len(predicted) == len(gold)  # one tag per word, not per piece
    accuracy = sum(p == g for p, g in zip(predicted, gold)) / len(gold)
    baseline = most_frequent_tag_baseline(read_conllu(data / "train.conllu"), dev)
    assert accuracy >= baseline + 0.3, (accuracy, baseline)


def test_a_line_over_max_input_tokens_tags_the_words_within_them(tag_run):
    """Cut mid-word, a line is tagged up to its last whole word within the cap: the same tags as that
    prefix alone (a word is never tagged from part of its pieces)."""
    from nmt.runs import load_run

    run_dir, data = tag_run
    words = read_conllu(data / "dev.conllu")[0].words * 3
    _, starts = load_run(run_dir, device="cpu").encode_words(words)
    assert starts[4] - starts[3] > 1  # the fourth word has several pieces (characters)
    (run_dir / "long.txt").write_text(" ".join(words) + "\n" + " ".join(words[:3]) + "\n")
    assert main(["predict", "--run", str(run_dir), "-i", str(run_dir / "long.txt"), "-o", str(run_dir / "long.out"),
                 "--max-input-tokens", str(starts[3] + 1), "--device", "cpu"]) == 0
    cut, prefix = (run_dir / "long.out").read_text().splitlines()
    assert len(cut.split()) == 3 and cut == prefix


def test_probabilities_for_a_tagging_run_are_refused_not_ignored(tag_run, capsys):
    """--probabilities gives each label's probability for classification; a tagging run printed its tags
    without them and said nothing."""
    run_dir, _ = tag_run
    (run_dir / "one.txt").write_text("a b\n")
    capsys.readouterr()
    code = main(["predict", "--run", str(run_dir), "-i", str(run_dir / "one.txt"), "--probabilities", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "", out
    assert err.splitlines() == [f"nmt: --probabilities: gives each label's probability for classification runs; "
                                f"{run_dir} is a 'tag' run"], err


def test_unknown_dev_tag_names_file_and_line(tmp_path):
    data = write_tag_task(tmp_path / "data", n_train=20, n_dev=2)
    with open(data / "dev.conllu", "a") as f:
        f.write("\n# sent_id = x\n1\tab\tab\tNS\t_\t_\t0\tdep\t_\t_\n2\tab\tab\tNOPE\t_\t_\t0\tdep\t_\t_\n")
    last_line = len((data / "dev.conllu").read_text().splitlines())
    recipe = validate_recipe(tag_recipe(data), tmp_path / "r.yaml")
    with pytest.raises(DataError, match=rf"dev.conllu:{last_line}: unknown label 'NOPE'"):
        train_recipe(recipe, tmp_path / "run")


def test_collator_gives_each_words_first_and_last_piece():
    from nmt.data.labelled import Example, ExampleCollator

    batch = ExampleCollator(pad_id=0)([Example(0, [5, 6, 7, 8, 9, 4], [1, 2, 3], [0, 3, 4]), Example(1, [5, 6], [1], [0])])
    assert batch["word_starts"].tolist() == [[0, 3, 4], [0, 0, 0]]
    assert batch["word_ends"].tolist() == [[2, 3, 5], [1, 0, 0]]
    assert batch["labels"].tolist() == [[1, 2, 3], [1, -100, -100]]


def write_split_task(data: Path, sentences: list[list[str]], tag) -> Path:
    """Train (the first 600 sentences) and dev CoNLL-U files with ``tag(words, k)`` for word k."""
    blocks = ["\n".join(f"{k + 1}\t{w}\t{w}\t{tag(words, k)}\t_\t_\t0\tdep\t_\t_" for k, w in enumerate(words)) + "\n"
              for words in sentences]
    data.mkdir()
    (data / "train.conllu").write_text("\n".join(blocks[:600]))
    (data / "dev.conllu").write_text("\n".join(blocks[600:]))
    return data


def dev_accuracy(data: Path, run_dir: Path, model: dict) -> tuple[float, object]:
    """Train 4 epochs with these model options; (dev accuracy through predict_lines, the loaded task)."""
    from nmt.runs import load_run

    recipe = tag_recipe(data, model=model, trainer={"max_epochs": 4})
    task = load_run(train_recipe(validate_recipe(recipe, run_dir.with_suffix(".yaml")), run_dir), device="cpu")
    dev = read_conllu(data / "dev.conllu")
    predicted = [t for line in task.predict_lines([" ".join(s.words) for s in dev], [""] * len(dev), False, 4000)
                 for t in line.split()]
    gold = [t for s in dev for t in s.tags]
    return sum(p == g for p, g in zip(predicted, gold)) / len(gold), task


def test_first_last_word_state_reads_the_end_of_each_word(tmp_path):
    """Tags given by a word's last letter, read by a left-to-right encoder: the state at a word's first
    piece has not seen that letter, so only ``word_state: first_last`` can get every tag right."""
    torch.set_num_threads(1)
    rng = random.Random(3)
    sentences = [[rng.choice("abcd") + rng.choice("abcd") + rng.choice("xyz") for _ in range(rng.randint(2, 8))]
                 for _ in range(700)]
    data = write_split_task(tmp_path / "data", sentences, lambda words, k: words[k][-1].upper())
    accuracy, _ = dev_accuracy(data, tmp_path / "run", {
        "word_state": "first_last", "encoder": {"name": "lstm", "hidden_size": 32, "bidirectional": False}})
    assert accuracy >= 0.95  # the first piece alone: about 1/3


@pytest.mark.parametrize("adversarial", [0.0, 0.5])
def test_word_encoder_reads_the_next_word(tmp_path, adversarial):
    """Tags given by the next word, with a left-to-right piece encoder: only the bidirectional word
    encoder over the word vectors (``model.word_encoder``) sees the next word. Also learned with
    adversarial training, whose move of the piece embeddings goes through the tag task's forward."""
    torch.set_num_threads(1)
    rng = random.Random(4)
    sentences = [[rng.choice(WORDS) for _ in range(rng.randint(2, 8))] for _ in range(700)]
    data = write_split_task(tmp_path / "data", sentences,
                            lambda words, k: "NV"[WORDS.index(words[k + 1]) % 2] if k + 1 < len(words) else "E")
    accuracy, _ = dev_accuracy(data, tmp_path / "run", {
        "embedding": {"size": 32, "adversarial": adversarial},
        "word_state": "first_last", "encoder": {"name": "gru", "hidden_size": 32, "bidirectional": False},
        "word_encoder": {"name": "gru", "hidden_size": 32}})
    assert accuracy >= 0.95  # without it: 0.43


def test_word_start_positions(tag_run):
    from nmt.runs import load_run

    task = load_run(tag_run[0], device="cpu")
    ids, starts = task.encode_words(["cab", "ab", "dace"])
    assert starts == [0, 3, 5] and len(ids) == 9


def test_word_embedding_knows_words_that_the_pieces_do_not_show(tmp_path):
    """Tags given by a word's last letter, with a left-to-right encoder read at each word's first
    piece: it has not seen the last letter yet, so only the whole-word vector
    (``model.word_embedding``) tells the words apart. Words seen once share <unk>."""
    torch.set_num_threads(1)
    words = ["pa", "pab", "pac", "pad", "qa", "qab", "qac", "qad"]
    rng = random.Random(5)
    sentences = [[rng.choice(words) for _ in range(rng.randint(2, 8))] for _ in range(700)]
    sentences[0] = ["pa", "zzz"]  # zzz occurs once: below min_freq, so <unk>
    data = write_split_task(tmp_path / "data", sentences, lambda words, k: f"T{words[k][-1]}")
    encoder = {"name": "gru", "hidden_size": 32, "bidirectional": False}

    accuracy, task = dev_accuracy(data, tmp_path / "with", {"encoder": encoder,
                                                            "word_embedding": {"size": 16, "word_dropout": 0.1}})
    assert accuracy >= 0.95
    vocabulary = json.loads((tmp_path / "with" / "fitted" / "words.vocab.json").read_text())["tokens"]
    assert set(words) <= set(vocabulary) and "zzz" not in vocabulary
    assert len(task.predict_lines(["pa unseen qad"], [""], False, 4000)[0].split()) == 3  # <unk> is tagged too
    assert dev_accuracy(data, tmp_path / "without", {"encoder": encoder})[0] < 0.7  # measured: 0.29
