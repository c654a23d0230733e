"""Built-in tokenizer plugins (sentencepiece, whitespace, characters): train, save, load, round-trip text."""
from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from nmt.data.tokenizer import SPECIAL_PIECES, Tokenizer
from nmt_builtin.sentencepiece_tokenizer import SentencePieceTokenizer
from nmt_builtin.simple_tokenizers import CharacterTokenizer, WhitespaceTokenizer

WORDS = "the a dog cat man woman runs sits on under red blue big small house tree street ball plays".split()


def synthetic_corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory):
    directory = tmp_path_factory.mktemp("spm")
    config = SentencePieceTokenizer.Config(vocab_size=100)
    SentencePieceTokenizer.train(config, iter(synthetic_corpus()), directory, "joint")
    return directory


def test_sentencepiece_saves_loads_and_round_trips(sentencepiece):
    assert (sentencepiece / "joint.model").is_file() and (sentencepiece / "joint.vocab").is_file()
    tokenizer = SentencePieceTokenizer.load(sentencepiece, "joint")
    assert isinstance(tokenizer, Tokenizer)
    assert 20 < len(tokenizer) <= 100
    sentence = synthetic_corpus()[7]
    ids = tokenizer.encode(sentence)
    assert ids and all(4 <= i < len(tokenizer) for i in ids)  # no bos/eos added
    assert tokenizer.decode(ids) == sentence
    # Specials are fixed and skipped when decoding.
    assert tokenizer.pieces([0, 1, 2, 3]) == list(SPECIAL_PIECES)
    assert tokenizer.decode([tokenizer.bos_id, *ids, tokenizer.eos_id, tokenizer.pad_id]) == sentence


def test_sentencepiece_encode_words(sentencepiece):
    tokenizer = SentencePieceTokenizer.load(sentencepiece, "joint")
    words = ["the", "dog", "runs."]
    pieces = tokenizer.encode_words(words)
    assert len(pieces) == len(words) and all(pieces)
    assert [tokenizer.decode(p) for p in pieces] == words


def test_sentencepiece_config_is_strict():
    with pytest.raises(ValidationError):
        SentencePieceTokenizer.Config(vocab_size=100, vocab_sise=3)
    with pytest.raises(ValidationError):
        SentencePieceTokenizer.Config(model_type="wordpiece")


@pytest.mark.parametrize("cls", [WhitespaceTokenizer, CharacterTokenizer])
def test_vocabulary_tokenizers_round_trip(cls, tmp_path):
    corpus = synthetic_corpus()
    trained = cls.train(cls.Config(), corpus, tmp_path, "src")
    tokenizer = cls.load(tmp_path, "src")
    assert tokenizer.tokens == trained.tokens
    assert tokenizer.tokens[:4] == list(SPECIAL_PIECES)
    ids = tokenizer.encode(corpus[3])
    assert min(ids) >= 4
    assert tokenizer.decode([tokenizer.bos_id, *ids, tokenizer.eos_id, tokenizer.pad_id]) == corpus[3]
    assert tokenizer.encode("QZX") == [tokenizer.unk_id] * len(cls.split("QZX"))
    words = corpus[3].split()
    per_word = tokenizer.encode_words(words)
    assert len(per_word) == len(words)
    assert [tokenizer.decode(p) for p in per_word] == words


def test_whitespace_vocabulary_options(tmp_path):
    texts = ["a a a b b c", "a b d"]
    config = WhitespaceTokenizer.Config(min_freq=2)
    tokenizer = WhitespaceTokenizer.train(config, texts, tmp_path, "tgt")
    assert tokenizer.tokens[4:] == ["a", "b"]
    capped = WhitespaceTokenizer.train(WhitespaceTokenizer.Config(max_size=5), texts, tmp_path, "tgt")
    assert len(capped) == 5 and capped.tokens[4] == "a"
    # A literal special in the text is unknown, not a control id that decoding would drop.
    assert tokenizer.encode("a <s> b") == [4, tokenizer.unk_id, 5]


def test_characters_keep_spaces(tmp_path):
    tokenizer = CharacterTokenizer.train(CharacterTokenizer.Config(), ["ab ba"], tmp_path, "src")
    assert len(tokenizer) == 4 + 3
    assert tokenizer.decode(tokenizer.encode("a b  a")) == "a b  a"
