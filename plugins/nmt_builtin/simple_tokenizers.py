"""Tokenizers with an explicit vocabulary: whitespace-separated words and single characters.

Both count their tokens in the training texts and keep the most frequent ones; the vocabulary is
saved as ``<prefix>.vocab.json``, a list of tokens in id order beginning with the four specials.
They suit pre-tokenized data (tags, symbols, digits) where subwords would only get in the way.
"""
from __future__ import annotations

import json
from abc import abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import Field, PositiveInt

from nmt.data.tokenizer import PAD_ID, SPECIAL_PIECES, UNK_ID, Tokenizer
from nmt.errors import DataError
from nmt.registry import register


class VocabularyTokenizer(Tokenizer):
    """Shared vocabulary logic; subclasses only say how to split text and join tokens."""

    class Config(Tokenizer.Config):
        """How much of the counted vocabulary to keep."""

        min_freq: PositiveInt = 1  # rarer tokens become <unk>
        max_size: int | None = Field(default=None, gt=len(SPECIAL_PIECES))  # including specials

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        # Specials are left out of the lookup so a literal "<s>" in the text is <unk>, not a
        # control id that decoding would drop.
        self.index = {token: i for i, token in enumerate(tokens) if i >= len(SPECIAL_PIECES)}

    @staticmethod
    @abstractmethod
    def split(text: str) -> list[str]:
        """The tokens of ``text``."""

    @staticmethod
    @abstractmethod
    def join(tokens: list[str]) -> str:
        """The text of ``tokens``; the inverse of :meth:`split` for text it can represent."""

    @classmethod
    def train(cls, config: Config, texts: Iterable[str], directory: Path, prefix: str) -> VocabularyTokenizer:
        counts = Counter(token for text in texts for token in cls.split(text))
        for special in SPECIAL_PIECES:
            counts.pop(special, None)
        # Ties broken by the token itself so the same data always gives the same ids.
        kept = [t for t, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if n >= config.min_freq]
        if config.max_size is not None:
            kept = kept[: config.max_size - len(SPECIAL_PIECES)]
        tokenizer = cls([*SPECIAL_PIECES, *kept])
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{prefix}.vocab.json"
        payload = {"tokenizer": cls.registered_name, "tokens": tokenizer.tokens}
        path.write_text(json.dumps(payload, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        return tokenizer

    @classmethod
    def load(cls, directory: Path, prefix: str) -> VocabularyTokenizer:
        path = Path(directory) / f"{prefix}.vocab.json"
        if not path.is_file():
            raise DataError(str(path), "vocabulary file not found")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            tokens = payload["tokens"]
        except (ValueError, KeyError, TypeError) as exc:  # a truncated, empty or foreign file
            reason = "empty file" if path.stat().st_size == 0 else str(exc)[:100]
            raise DataError(str(path), f"not a vocabulary file, truncated or corrupt ({reason})") from None
        except OSError as exc:
            raise DataError(str(path), f"cannot read vocabulary file ({exc.strerror or exc})") from None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise DataError(str(path), "not a vocabulary file (tokens must be a list of strings)")
        if tuple(tokens[: len(SPECIAL_PIECES)]) != SPECIAL_PIECES:
            raise DataError(str(path), f"vocabulary must begin with {', '.join(SPECIAL_PIECES)}")
        return cls(tokens)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(token, UNK_ID) for token in self.split(text)]

    def decode(self, ids: Sequence[int]) -> str:
        skipped = (PAD_ID, self.bos_id, self.eos_id)
        return self.join([self.tokens[i] for i in map(int, ids) if i not in skipped])

    def pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.tokens[int(i)] for i in ids]

    def __len__(self) -> int:
        return len(self.tokens)


@register("tokenizer", "whitespace")
class WhitespaceTokenizer(VocabularyTokenizer):
    """Words separated by whitespace; decoding joins them with single spaces."""

    @staticmethod
    def split(text: str) -> list[str]:
        return text.split()

    @staticmethod
    def join(tokens: list[str]) -> str:
        return " ".join(tokens)


@register("tokenizer", "characters")
class CharacterTokenizer(VocabularyTokenizer):
    """Every character is a token, spaces included; decoding concatenates them."""

    @staticmethod
    def split(text: str) -> list[str]:
        return list(text)

    @staticmethod
    def join(tokens: list[str]) -> str:
        return "".join(tokens)
