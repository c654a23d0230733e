"""Subword tokenizer backed by Google's sentencepiece (BPE, unigram, char or word models).

Sentencepiece works on raw text (spaces become the piece prefix ``▁``), so decoding gives the
original sentence back without any language-specific detokenizer.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import sentencepiece as spm
from pydantic import Field

from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from nmt.errors import DataError, RecipeError
from nmt.registry import register


@register("tokenizer", "sentencepiece")
class SentencePieceTokenizer(Tokenizer):
    """Subword pieces learned by sentencepiece; files ``<prefix>.model`` and ``<prefix>.vocab``."""

    class Config(Tokenizer.Config):
        """Options passed to sentencepiece's trainer."""

        vocab_size: int = Field(8000, gt=0, le=1 << 20)  # sentencepiece's ids and our embeddings stay sane
        model_type: Literal["bpe", "unigram", "char", "word"] = "bpe"
        character_coverage: float = Field(1.0, gt=0.0, le=1.0)  # a fraction of the characters
        input_sentence_size: int = Field(1_000_000, gt=0, le=2**31 - 1)  # sampled lines; bounds memory on huge corpora
        # False lets a small corpus train with fewer pieces than asked instead of failing.
        hard_vocab_limit: bool = False

    def __init__(self, processor: spm.SentencePieceProcessor):
        self.processor = processor

    @classmethod
    def train(cls, config: Config, texts: Iterable[str], directory: Path, prefix: str) -> SentencePieceTokenizer:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        counted = _CountingIterator(texts)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=counted,
                model_prefix=str(directory / prefix),
                vocab_size=config.vocab_size,
                model_type=config.model_type,
                character_coverage=config.character_coverage,
                input_sentence_size=config.input_sentence_size,
                shuffle_input_sentence=True,
                hard_vocab_limit=config.hard_vocab_limit,
                pad_id=PAD_ID,
                unk_id=UNK_ID,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                num_threads=os.cpu_count() or 1,
                minloglevel=2,  # its progress log is pages long; errors still raise below
            )
        except RuntimeError as exc:
            if counted.non_empty == 0:
                raise DataError(None, f"no training text for tokenizer '{prefix}'") from exc
            raise RecipeError("data.tokenizer", f"sentencepiece cannot train '{prefix}': {exc}") from exc
        return cls.load(directory, prefix)

    @classmethod
    def load(cls, directory: Path, prefix: str) -> SentencePieceTokenizer:
        path = Path(directory) / f"{prefix}.model"
        if not path.is_file():
            raise DataError(str(path), "sentencepiece model not found")
        try:
            processor = spm.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as exc:  # sentencepiece says "INTERNAL: could not parse ModelProto ..."
            reason = "empty file" if path.stat().st_size == 0 else str(exc).splitlines()[0].removeprefix("INTERNAL: ")[:100]
            raise DataError(str(path), f"not a sentencepiece model, truncated or corrupt ({reason}); "
                                       f"copy the run's {path.parent.name}/ directory again or retrain") from None
        found = (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id())
        if found != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            # A model trained outside nmt may put the specials elsewhere; ids would silently clash.
            raise DataError(str(path), f"special ids (pad, unk, bos, eos) are {found}, expected (0, 1, 2, 3)")
        return cls(processor)

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text, out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        # pad, bos and eos are control symbols, which sentencepiece drops when decoding.
        return self.processor.decode([int(i) for i in ids])

    def encode_words(self, words: list[str]) -> list[list[int]]:
        return self.processor.encode(list(words), out_type=int)

    def pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.processor.id_to_piece(int(i)) for i in ids]

    def __len__(self) -> int:
        return self.processor.get_piece_size()


class _CountingIterator(Iterator[str]):
    """Passes texts through to the trainer and counts non-empty ones, to explain a failure."""

    def __init__(self, texts: Iterable[str]):
        self._texts = iter(texts)
        self.non_empty = 0

    def __next__(self) -> str:
        text = next(self._texts)
        if text.strip():
            self.non_empty += 1
        return text
