"""Subword tokenizer backed by Google's sentencepiece (BPE, unigram, char or word models).

Sentencepiece works on raw text (spaces become the piece prefix ``▁``), so decoding gives the
original sentence back without any language-specific detokenizer.
"""
from __future__ import annotations

import functools
import itertools
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import sentencepiece as spm
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from nmt.data.sentencepiece_model import open_sentencepiece
from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from nmt.errors import DataError, RecipeError
from nmt.registry import register


#: sentencepiece's own limits (0.2.x), checked here so that a recipe error names the key before anything is trained:
MAX_NBEST = 512  # kMaxNBestSize: a larger nbest_size fails at the first sampled training example
MIN_CHARACTER_COVERAGE = 0.98  # its trainer refuses less, for every model type
MIN_INPUT_SENTENCES = 101  # its trainer samples no fewer lines
# pad, unk, bos and eos, then (bpe, unigram) the word boundary piece and one character at least
MIN_VOCAB_SIZE = 6
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


class Sampling(BaseModel):
    """``data.tokenizer.sampling``: each training example is segmented afresh every time it is drawn.

    unigram models sample a segmentation from the model's distribution raised to the power ``alpha``
    (Kudo 2018: the smaller, the more varied); bpe models drop each merge with probability ``alpha`` (BPE-dropout, Provilkov et al.
    2020). Validation, translation and the tokenizer's training never sample."""

    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(gt=0.0, le=1.0, allow_inf_nan=False)
    # unigram: -1 (the default) samples from every segmentation, N > 1 from the N best
    nbest: Optional[int] = Field(None, ge=-1, le=MAX_NBEST, strict=True)  # sentencepiece takes at most 512

    @field_validator("nbest")
    @classmethod
    def _nbest_samples(cls, nbest: Optional[int]) -> Optional[int]:
        if nbest is not None and nbest != -1 and nbest < 2:
            raise PydanticCustomError("nbest", "expected -1 (every segmentation) or at least 2 (the N best)")
        return nbest


WORD_CACHE = 500_000  # distinct words encode_flat remembers (about 100 MB)


@register("tokenizer", "sentencepiece")
class SentencePieceTokenizer(Tokenizer):
    """Subword pieces learned by sentencepiece; files ``<prefix>.model`` and ``<prefix>.vocab``."""

    class Config(Tokenizer.Config):
        """Options passed to sentencepiece's trainer."""

        # at most what sentencepiece's ids and our embeddings stay sane at
        vocab_size: int = Field(8000, ge=MIN_VOCAB_SIZE, le=1 << 20)  # 4 special pieces, the word boundary, a character
        model_type: Literal["bpe", "unigram", "char", "word"] = "bpe"
        character_coverage: float = Field(1.0, ge=MIN_CHARACTER_COVERAGE, le=1.0)  # characters covered (sentencepiece: 0.98 to 1)
        input_sentence_size: int = Field(1_000_000, ge=MIN_INPUT_SENTENCES, le=2**31 - 1)  # sampled lines (> 100); bounds memory
        # False lets a small corpus train with fewer pieces than asked instead of failing.
        hard_vocab_limit: bool = False
        # Subword regularisation of the training examples: None encodes them one way, like everything else.
        sampling: Optional[Sampling] = None

        @field_validator("sampling")
        @classmethod
        def _model_can_sample(cls, sampling: Optional[Sampling], info: ValidationInfo) -> Optional[Sampling]:
            model_type = info.data.get("model_type")
            if sampling is not None and model_type in ("char", "word"):
                raise PydanticCustomError("cannot_sample", f"a {model_type} model has one segmentation to "
                                                           "sample from; use model_type bpe or unigram")
            if sampling is not None and model_type == "bpe" and sampling.nbest is not None:
                raise PydanticCustomError("cannot_sample", "nbest is for unigram models; BPE-dropout takes alpha "
                                                           "alone (the probability of dropping a merge)")
            return sampling

    def __init__(self, processor: spm.SentencePieceProcessor):
        self.processor = processor
        self._words = _WordIds()

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
            if counted.error is not None:  # reading the texts failed (a bad byte, a damaged file): say that
                raise counted.error from None
            if counted.non_empty == 0:
                raise DataError(None, f"no training text for tokenizer '{prefix}'") from exc
            too_small = _TOO_SMALL.search(str(exc))
            if too_small:  # the training text has more distinct characters than the pieces asked for
                asked, needed = too_small.groups()
                raise RecipeError("data.tokenizer.vocab_size", f"expected at least {needed} for tokenizer '{prefix}' "
                                  f"(4 special pieces and {int(needed) - 4} characters of the training text), "
                                  f"got {asked}; or lower character_coverage") from None
            raise RecipeError("data.tokenizer", f"sentencepiece cannot train '{prefix}': {exc}") from exc
        return cls.load(directory, prefix)

    @classmethod
    def load(cls, directory: Path, prefix: str) -> SentencePieceTokenizer:
        path = Path(directory) / f"{prefix}.model"
        processor = open_sentencepiece(path, DataError, f"copy the run's {path.parent.name}/ directory again or retrain")
        return cls(processor)

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text, out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        # pad, bos and eos are control symbols, which sentencepiece drops when decoding.
        return self.processor.decode([int(i) for i in ids])

    def sampling_encoder(self, config: Config, seed: int) -> Callable[[str], list[int]] | None:
        if config.sampling is None:
            return None
        spm.set_random_generator_seed(seed)  # sentencepiece's own generator, for the whole process
        return functools.partial(self.processor.encode, out_type=int, enable_sampling=True,
                                 alpha=config.sampling.alpha, nbest_size=config.sampling.nbest or -1)

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The ids of many lines, as :meth:`encode` gives them, several times faster.

        Sentencepiece pieces never span a space (``split_by_whitespace``, which nmt never turns off),
        so a line's ids are its space-separated words' ids one after the other. Each distinct word
        goes through sentencepiece once, whole (normalisation included), and is remembered; a line is
        then a gather of its words' ids in numpy, without a Python list per line. The memory is
        bounded: past WORD_CACHE distinct words (or those of one call, if more) it starts afresh."""
        words = [text.split(" ") for text in texts]
        occurrences = list(itertools.chain.from_iterable(words))
        self._words.learn(set(occurrences), self.processor)
        word = np.fromiter(map(self._words.ids.__getitem__, occurrences), dtype=np.int64, count=len(occurrences))
        counts, starts = self._words.counts[word], self._words.starts[word]  # per occurrence
        total = int(counts.sum())
        ends = np.cumsum(counts)
        tokens = self._words.tokens[np.repeat(starts - (ends - counts), counts) + np.arange(total)]
        per_line = np.fromiter(map(len, words), dtype=np.int64, count=len(words))  # >= 1: "".split(" ") == [""]
        return tokens, np.add.reduceat(counts, np.cumsum(per_line) - per_line) if len(words) else per_line

    def encode_words(self, words: list[str]) -> list[list[int]]:
        return self.processor.encode(list(words), out_type=int)

    def pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.processor.id_to_piece(int(i)) for i in ids]

    def __len__(self) -> int:
        return self.processor.get_piece_size()


class _WordIds:
    """Distinct words and their sentencepiece ids (for :meth:`SentencePieceTokenizer.encode_flat`): word
    ``ids[w]`` has ``counts[k]`` ids from ``tokens[starts[k]]`` on."""

    def __init__(self):
        self.ids: dict[str, int] = {}
        self.tokens = self.starts = self.counts = np.zeros(0, dtype=np.int64)

    def learn(self, words: set[str], processor: spm.SentencePieceProcessor) -> None:
        new = list(words.difference(self.ids.keys()))
        if not new:
            return
        if len(self.ids) + len(new) > WORD_CACHE:
            self.__init__()
            new = list(words)
        # One thread: a prepared corpus runs one tokenising process per core already.
        encoded = processor.encode(new, out_type=int, num_threads=1)
        counts = np.fromiter(map(len, encoded), dtype=np.int64, count=len(new))
        self.ids.update(zip(new, range(len(self.ids), len(self.ids) + len(new))))
        self.starts = np.concatenate([self.starts, len(self.tokens) + np.cumsum(counts) - counts])
        self.counts = np.concatenate([self.counts, counts])
        self.tokens = np.concatenate([self.tokens, np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64,
                                                               count=int(counts.sum()))])


class _CountingIterator(Iterator[str]):
    """Passes texts through to the trainer and counts non-empty ones, to explain a failure. An error
    reading them is kept: sentencepiece turns it into a RuntimeError of its own."""

    def __init__(self, texts: Iterable[str]):
        self._texts = iter(texts)
        self.non_empty = 0
        self.error: Exception | None = None

    def __next__(self) -> str:
        try:
            text = next(self._texts)
        except StopIteration:
            raise
        except Exception as exc:
            self.error = exc
            raise
        if text.strip():
            self.non_empty += 1
        return text
