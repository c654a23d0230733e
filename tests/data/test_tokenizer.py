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


ODD_TEXT = ["a", "b", "é", " ", "  ", "\t", "\u00a0", "\u3000", "\u200b", "\u0301", "e\u0301", "\ufb01", "\u2028",
            "\x1c", "\x85", "😀", "①", "Ａ", "\u00ad", "ß", "İ", "\x00", "\u2003", "\ufeff", "▁", " ▁", "1", ".", "'"]


def test_sentencepiece_encode_flat_is_encode_line_by_line(tmp_path):
    """encode_flat encodes each distinct space-separated word once and gathers; it must give exactly the
    ids of encoding each line whole, on real text in four languages and on odd Unicode and spacing."""
    import gzip
    import itertools
    import random

    import numpy as np

    from nmt.recipe import default_data_root
    from nmt_builtin import sentencepiece_tokenizer as sp

    root = default_data_root() / "multi30k"
    if not root.is_dir():
        pytest.skip("Multi30k not found")
    corpus = {lang: gzip.open(root / f"train.{lang}.gz", "rt", encoding="utf-8").read().splitlines()[:4000]
              for lang in ("en", "de", "fr", "cs")}
    rng = random.Random(0)
    odd = ["".join(rng.choice(ODD_TEXT) for _ in range(rng.randint(0, 14))) for _ in range(3000)]
    for model_type in ("bpe", "unigram"):
        config = sp.SentencePieceTokenizer.Config(vocab_size=2000, model_type=model_type)
        tok = sp.SentencePieceTokenizer.train(config, itertools.chain(*corpus.values()), tmp_path, model_type)
        for lines in [*corpus.values(), odd, [], [""]]:
            tokens, lengths = tok.encode_flat(lines)
            expected = [tok.encode(line) for line in lines]
            assert lengths.tolist() == [len(ids) for ids in expected]
            assert tokens.tolist() == [i for ids in expected for i in ids]
        assert tok.encode_flat(corpus["de"])[0].tolist() == [i for line in corpus["de"] for i in tok.encode(line)]


def test_sentencepiece_word_memory_is_bounded(tmp_path, monkeypatch):
    from nmt_builtin import sentencepiece_tokenizer as sp

    config = sp.SentencePieceTokenizer.Config(vocab_size=30)
    tok = sp.SentencePieceTokenizer.train(config, ["a b c d e f g h"] * 50, tmp_path, "joint")
    monkeypatch.setattr(sp, "WORD_CACHE", 5)
    for line in ["a b c", "d e f", "g h a", "b", "a b c d e f g"] * 2:  # one call's words are kept whatever
        tokens, lengths = tok.encode_flat([line])
        assert len(tok._words.ids) <= 7  # WORD_CACHE, or the 7 words one call needed
        assert tokens.tolist() == tok.encode(line) and lengths.tolist() == [len(tok.encode(line))]
