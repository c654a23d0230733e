"""data.tokenizer.sampling: training examples get a new sentencepiece segmentation each time they are
drawn (unigram sampling, BPE-dropout); validation and translation encode as without it."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from conftest import reverse_recipe, write_recipe, write_reverse_corpus
from nmt.cli import main
from nmt.errors import RecipeError
from nmt.recipe import load_recipe, validate_recipe
from nmt.runs import load_run
from nmt_builtin.sentencepiece_tokenizer import SentencePieceTokenizer
from tests.tasks.test_classify import classify_recipe

WORDS = "the a dog cat man woman runs sits on under red blue big small house tree street ball plays".split()


@pytest.mark.parametrize("model_type, sampling", [("bpe", {"alpha": 0.2}), ("unigram", {"alpha": 0.1}),
                                                  ("unigram", {"alpha": 0.1, "nbest": 8})])
def test_draws_differ_and_decode_to_the_text(tmp_path: Path, model_type: str, sampling: dict):
    rng = random.Random(0)
    spm.set_random_generator_seed(0)  # the trainer shuffles with it: the same pieces whatever ran before
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(300)]
    config = SentencePieceTokenizer.Config(vocab_size=80, model_type=model_type, sampling=sampling)
    tokenizer = SentencePieceTokenizer.train(config, iter(corpus), tmp_path, "joint")
    sentence = "the big red dog sits under the small blue tree"
    plain = tokenizer.encode(sentence)
    sample = tokenizer.sampling_encoder(config, seed=1)
    draws = {tuple(sample(sentence)) for _ in range(20)}
    assert len(draws) > 1
    assert all(tokenizer.decode(list(d)) == sentence for d in draws)
    assert tokenizer.encode(sentence) == plain  # encode itself never samples
    again = tokenizer.sampling_encoder(config, seed=1)  # the same seed draws the same segmentations
    first = [again(sentence) for _ in range(5)]
    again = tokenizer.sampling_encoder(config, seed=1)
    assert [again(sentence) for _ in range(5)] == first
    assert tokenizer.sampling_encoder(config.model_copy(update={"sampling": None}), seed=1) is None


SAMPLING = {"name": "sentencepiece", "vocab_size": 40, "sampling": {"alpha": 0.3}}


def make_task(base: Path, data: Path, tokenizer: dict, name: str = "run"):
    """A seq2seq task over the reverse corpus in ``base/name``; the tokenizer is fitted once (in the
    first run made under ``base``) and copied, so runs with and without sampling share it."""
    recipe = validate_recipe(reverse_recipe(data, data={"tokenizer": tokenizer}), base / "r.yaml")
    first = next(iter(sorted(base.glob("*/fitted"))), None)
    if first is not None:
        shutil.copytree(first, base / name / "fitted")
    recipe.task_cls.prepare_run(recipe, base / name)
    return recipe.task_cls.from_run(recipe, base / name)


def one_epoch(module, epoch: int) -> dict[int, tuple[list[int], list[int]]]:
    """Source and target ids of each training pair, by line, as the training loader gives them in ``epoch``."""
    loader = module.train_dataloader()
    loader.batch_sampler.set_epoch(epoch)
    seen = {}
    for batch in loader:
        for row, index in enumerate(batch["ids"].tolist()):
            src = batch["src"][row][: batch["src_len"][row]].tolist()
            tgt = [t for t in batch["tgt_out"][row].tolist() if t not in (0, 3)]  # padding and EOS
            seen[index] = (src, tgt)
    return seen


def test_each_epoch_samples_training_pairs_anew_and_nothing_else(tmp_path: Path):
    data = write_reverse_corpus(tmp_path / "data", n_train=200, n_dev=30)
    sampled = make_task(tmp_path, data, SAMPLING)
    plain = make_task(tmp_path, data, {k: v for k, v in SAMPLING.items() if k != "sampling"}, "plain")
    sampled_data, plain_data = sampled.make_datamodule(), plain.make_datamodule()
    sources = (data / "train.src").read_text().splitlines()
    targets = (data / "train.tgt").read_text().splitlines()

    first, second = one_epoch(sampled_data, 0), one_epoch(sampled_data, 1)
    assert first.keys() == second.keys() == set(range(200))
    changed = sum(first[i][0] != second[i][0] for i in first) + sum(first[i][1] != second[i][1] for i in first)
    assert changed > 200  # most of the 400 sides got another segmentation
    tok = sampled.src_tokenizer
    for i, (src, tgt) in [*first.items(), *second.items()]:
        assert tok.decode(src) == sources[i] and tok.decode(tgt) == targets[i]
    deterministic = one_epoch(plain_data, 0)
    assert sum(first[i] != deterministic[i] for i in first) > 100

    # batches are bucketed by the deterministic lengths, whatever is sampled
    assert sampled_data.train_set.lengths().tolist() == plain_data.train_set.lengths().tolist()
    # validation encodes as without sampling
    assert [(p.src, p.tgt) for p in sampled_data.valid_set] == [(p.src, p.tgt) for p in plain_data.valid_set]
    dev = (data / "dev.src").read_text().splitlines()
    assert [sampled.src_tokenizer.encode(line) for line in dev] == [plain.src_tokenizer.encode(line) for line in dev]


def test_a_sampled_side_longer_than_max_length_falls_back_to_the_plain_encoding(tmp_path: Path):
    data = write_reverse_corpus(tmp_path / "data", n_train=100, n_dev=10)
    task = make_task(tmp_path, data, {**SAMPLING, "sampling": {"alpha": 1.0}})  # every merge dropped
    task.recipe.data = task.recipe.data.model_copy(update={"max_length": 12})
    train = task.make_datamodule().train_set
    for i in range(len(train)):
        pair, drawn = train.corpus.pair(i), train[i]
        assert len(drawn.src) <= 12 and len(drawn.tgt) <= 12
        assert drawn.src == pair.src or len(drawn.src) > len(pair.src)  # characters, or the plain pieces


def test_training_with_sampling_translates_deterministically(tmp_path: Path):
    torch.set_num_threads(1)
    data = write_reverse_corpus(tmp_path / "data", n_train=300, n_dev=20)
    recipe = write_recipe(tmp_path / "r.yaml", reverse_recipe(data, data={"tokenizer": SAMPLING},
                                                              trainer={"max_epochs": 2}))
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    task = load_run(tmp_path / "run", device="cpu")
    line = "a0 b1 c2 d3 e0 f1"
    assert task.src_tokenizer.encode(line) == task.src_tokenizer.processor.encode(line)
    outputs = []
    for name in ("one", "two"):
        assert main(["translate", "--run", str(tmp_path / "run"), "-i", str(data / "test.src"),
                     "-o", str(tmp_path / name)]) == 0
        outputs.append((tmp_path / name).read_text())
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("tokenizer, key, message", [
    ("{name: sentencepiece, sampling: {alpha: 0}}", "sampling.alpha", "greater than 0"),
    ("{name: sentencepiece, sampling: {alpha: 1.5}}", "sampling.alpha", "less than or equal to 1"),
    ("{name: sentencepiece, sampling: {alpha: .nan}}", "sampling.alpha", ""),
    ("{name: sentencepiece, sampling: {}}", "sampling.alpha", "required"),
    ("{name: sentencepiece, model_type: unigram, sampling: {alpha: 0.1, nbest: 1}}", "sampling.nbest", "-1"),
    ("{name: sentencepiece, sampling: {alpha: 0.1, nbest: 4}}", "sampling", "nbest is for unigram models"),
    ("{name: sentencepiece, model_type: char, sampling: {alpha: 0.1}}", "sampling", "a char model has one"),
    ("{name: sentencepiece, model_type: word, sampling: {alpha: 0.1}}", "sampling", "a word model has one"),
    ("{name: whitespace, sampling: {alpha: 0.1}}", "sampling", "unknown key"),
])
def test_invalid_sampling_is_a_recipe_error_naming_the_key(reverse_data: Path, tmp_path: Path, tokenizer, key,
                                                           message):
    recipe = write_recipe(tmp_path / "r.yaml", reverse_recipe(reverse_data))
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe, [f"data.tokenizer={tokenizer}"])
    assert error.value.where == f"override data.tokenizer.{key}"
    assert message in error.value.what


def test_a_task_that_encodes_once_refuses_sampling(tmp_path: Path):
    raw = classify_recipe(tmp_path, data={"tokenizer": SAMPLING})
    with pytest.raises(RecipeError, match="data.tokenizer.sampling: task 'classify' encodes its training text once"):
        validate_recipe(raw, tmp_path / "r.yaml", check_data=False)
