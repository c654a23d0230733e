"""The tokenizer interface that every tokenizer plugin implements.

A tokenizer turns a line of text into integer ids and back. Plugins subclass :class:`Tokenizer`
and register with ``@nmt.register("tokenizer", name)``; the built-in ones are ``sentencepiece``,
``whitespace`` and ``characters`` (in ``plugins/nmt_builtin``).

The four special ids are the same for every tokenizer, so models, batching and search never need
to ask a tokenizer which id is padding or end-of-sentence:

==========  ==  ===========================================================
``pad_id``  0   fills a batch up to its longest sequence; never predicted
``unk_id``  1   a piece the vocabulary does not know
``bos_id``  2   starts every decoder input
``eos_id``  3   ends every target; search stops on it
==========  ==  ===========================================================

``encode`` adds none of ``bos``/``eos``: the task adds them where its shape needs them.
"""
from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_PIECES = ("<pad>", "<unk>", "<s>", "</s>")  # index = id; sentencepiece uses the same names


class Tokenizer(ABC):
    """Base class of tokenizer plugins: train (and save), load, encode, decode.

    A tokenizer is trained once per run on the training texts and saved into the run directory,
    so ``nmt translate --run DIR`` can load it without the recipe's data. ``prefix`` names the
    files of one tokenizer in that directory (``src``, ``tgt`` or ``joint``), so a source and a
    target tokenizer can share one directory.
    """

    pad_id: int = PAD_ID
    unk_id: int = UNK_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID

    class Config(BaseModel):
        """Recipe options of a tokenizer (``data.tokenizer`` in a recipe); subclasses extend it.

        A tokenizer that can sample segmentations adds a ``sampling`` option and implements
        :meth:`Tokenizer.sampling_encoder`; for the others ``sampling`` is an unknown key."""

        model_config = ConfigDict(extra="forbid")

    @classmethod
    @abstractmethod
    def train(cls, config: Config, texts: Iterable[str], directory: Path, prefix: str) -> Tokenizer:
        """Fit on ``texts``, save the files into ``directory`` named with ``prefix``, return it."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path, prefix: str) -> Tokenizer:
        """Load a tokenizer that :meth:`train` saved into ``directory`` under ``prefix``."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, without ``bos``/``eos``."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; ``pad``, ``bos`` and ``eos`` ids are skipped, nothing stops early."""

    @abstractmethod
    def __len__(self) -> int:
        """Vocabulary size including the four special ids."""

    def sampling_encoder(self, config: Config, seed: int) -> Callable[[str], list[int]] | None:
        """For training examples only: an ``encode`` that draws a new segmentation at every call
        (subword regularisation), when ``config`` (the recipe's ``data.tokenizer``) asks for one; else
        None. ``seed`` makes the draws of a run repeatable. This default cannot sample."""
        return None

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`encode` of many texts as two arrays: every text's ids back to back (int64), and each
        text's count of ids. What a prepared corpus stores (it tokenises a few thousand lines at a time,
        one process per core); a plugin may make it faster than one list per text."""
        ids = [self.encode(text) for text in texts]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum())), lengths

    def encode_words(self, words: list[str]) -> list[list[int]]:
        """Ids of each word on its own, one list per word (to align pieces with word tags)."""
        return [self.encode(word) for word in words]

    def pieces(self, ids: Sequence[int]) -> list[str]:
        """A readable string per id, e.g. for the axes of an attention plot.

        This default decodes each id alone; plugins override it with their exact piece strings.
        """
        return [SPECIAL_PIECES[i] if 0 <= i < len(SPECIAL_PIECES) else self.decode([i]) for i in map(int, ids)]
