"""The tokenizer base class: fixed special ids, its default encode_words and pieces, strict options.

The built-in tokenizer plugins are tested in ``tests/plugins/test_tokenizers.py``."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIAL_PIECES, UNK_ID, Tokenizer


class Letters(Tokenizer):
    """The smallest tokenizer: one id per lowercase letter, after the four specials."""

    @classmethod
    def train(cls, config, texts, directory, prefix):
        return cls()

    @classmethod
    def load(cls, directory, prefix):
        return cls()

    def encode(self, text):
        return [ord(c) - ord("a") + 4 if "a" <= c <= "z" else self.unk_id for c in text]

    def decode(self, ids):
        return "".join(chr(i - 4 + ord("a")) if i >= 4 else "?" for i in ids if i not in (PAD_ID, BOS_ID, EOS_ID))

    def __len__(self):
        return 4 + 26


def test_special_ids_are_the_same_for_every_tokenizer():
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    tokenizer = Letters()
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    assert SPECIAL_PIECES == ("<pad>", "<unk>", "<s>", "</s>")


def test_default_encode_words_and_pieces():
    tokenizer = Letters()
    assert tokenizer.encode_words(["ab", "c"]) == [[4, 5], [6]]
    assert tokenizer.pieces([BOS_ID, 4, 5, EOS_ID, PAD_ID, UNK_ID]) == ["<s>", "a", "b", "</s>", "<pad>", "<unk>"]


def test_base_config_takes_no_options():
    assert Tokenizer.Config().model_dump() == {}
    with pytest.raises(ValidationError):
        Tokenizer.Config(vocab_size=10)


def test_a_tokenizer_must_implement_the_abstract_methods():
    class Incomplete(Tokenizer):
        def encode(self, text):
            return []

    with pytest.raises(TypeError):
        Incomplete()
