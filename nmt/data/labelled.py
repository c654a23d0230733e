"""Labelled data for classification and tagging: TSV and CoNLL-U readers, a label vocabulary,
and a data module that batches examples by length like the translation data.

Every problem the user can fix names the file and line: ``dev.tsv:17: unknown label 'neutral'
(not in the training labels: 0, 1)``, ``train.tsv:1: no column 'sentence' (columns: label, text)``.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Union

import torch
from pydantic import AfterValidator
from pydantic_core import PydanticCustomError
from torch.utils.data import Dataset

from nmt.data.text import EncodingErrors, StrPath, iter_lines
from nmt.errors import DataError, quote, shorten



def _column_number(column: Union[str, int]) -> Union[str, int]:
    # A negative number would count from the end (Python's indexing): -2 of a two-column file is the label.
    if isinstance(column, int) and column < 0:
        raise PydanticCustomError("column_number", "expected a header name or a 0-based column number >= 0")
    return column


Column = Annotated[Union[str, int], AfterValidator(_column_number)]  # a header name, or a 0-based column number


# --- records as read from files -------------------------------------------------------------

@dataclass
class LabelledText:
    """One TSV row: the input text (words, or row vectors) and its label; ``where`` is ``file:line``."""

    text: str
    label: str
    where: str


@dataclass
class TaggedSentence:
    """One CoNLL-U sentence: its words and one tag per word; ``where`` is the file:line of its first word."""

    words: list[str]
    tags: list[str]
    where: str
    lines: list[int] = field(default_factory=list, compare=False, repr=False)  # the line of each word

    def where_word(self, k: int) -> str:
        """``file:line`` of word ``k`` (the sentence's first line if lines are unknown)."""
        if k < len(self.lines):
            return f"{self.where.rsplit(':', 1)[0]}:{self.lines[k]}"
        return self.where


def read_tsv(path: StrPath, text_column: Column = "sentence", label_column: Column = "label", header: bool = True,
             encoding_errors: EncodingErrors = "strict") -> list[LabelledText]:
    """Rows of a tab-separated file as (text, label); columns by header name or 0-based index.

    Fields are split on tabs only (no quoting), as in SST-2 and GLUE, where quotes are text.
    Blank lines are skipped.
    """
    rows: list[LabelledText] = []
    lines = enumerate(iter_lines(path, encoding_errors), start=1)
    text_at, label_at = text_column, label_column
    if header:
        for lineno, line in lines:
            if line.strip():
                names = line.split("\t")
                text_at = _column_index(text_column, names, f"{path}:{lineno}")
                label_at = _column_index(label_column, names, f"{path}:{lineno}")
                break
    for name, column in (("text_column", text_at), ("label_column", label_at)):
        if not isinstance(column, int):
            raise DataError(str(path), f"{name} {column!r} names a column, but the file has no header "
                                       "(set header: true or give a 0-based column number)")
    needed = max(text_at, label_at) + 1
    for lineno, line in lines:
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < needed:
            raise DataError(f"{path}:{lineno}", f"expected at least {needed} tab-separated columns, got {len(fields)}")
        label = fields[label_at].strip()
        if not label:
            raise DataError(f"{path}:{lineno}", "empty label")
        rows.append(LabelledText(fields[text_at], label, f"{path}:{lineno}"))
    if not rows:
        raise DataError(str(path), "no examples")
    return rows


def _column_index(column: Column, names: list[str], where: str) -> int:
    """The 0-based index of ``column`` (a header name or number) among the header's ``names``."""
    if isinstance(column, int):
        if column < 0:
            raise DataError(where, f"column {column}: expected a 0-based column number >= 0")
        if column >= len(names):
            raise DataError(where, f"no column {column} (the header has {len(names)})")
        return column
    stripped = [n.strip() for n in names]
    if column not in stripped:
        raise DataError(where, f"no column {quote(column)} (columns: {_column_list(stripped)})")
    return stripped.index(column)


def _column_list(names: list[str]) -> str:
    """The header's names for a message: a few, each cut short. A header that is the whole file (CR line
    endings read as one line) would otherwise be a message of megabytes; that case is said outright."""
    listed = shorten(", ".join(n.replace("\r", "\\r") for n in names[:COLUMNS_LISTED]), COLUMNS_CHARS)
    if listed.endswith("...") or len(names) > COLUMNS_LISTED:
        listed += f" ({len(names)} columns)"
    if any("\r" in n for n in names):
        listed += "; the file has CR (\\r) line endings, not \\n: convert them (tr '\\r' '\\n')"
    return listed


COLUMNS_LISTED, COLUMNS_CHARS = 20, 200  # at most this many header names, and characters of them, in an error


CONLLU_COLUMNS = ("id", "form", "lemma", "upos", "xpos", "feats", "head", "deprel", "deps", "misc")


def read_conllu(path: StrPath, tag_column: str = "upos",
                encoding_errors: EncodingErrors = "strict") -> list[TaggedSentence]:
    """Sentences of a CoNLL-U file (plain or .gz) with the word forms and one column as tags.

    Comments (``#``), multiword token ranges (``1-2``) and empty nodes (``8.1``) are skipped: the
    tagged units are the syntactic words.
    """
    if tag_column not in CONLLU_COLUMNS:
        raise DataError(str(path), f"unknown CoNLL-U column {tag_column!r} (one of {', '.join(CONLLU_COLUMNS)})")
    at = CONLLU_COLUMNS.index(tag_column)
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    first = ""
    for lineno, line in enumerate(iter_lines(path, encoding_errors), start=1):
        if not line.strip():
            if words:
                sentences.append(TaggedSentence(words, tags, first, lines))
                words, tags, lines = [], [], []
            continue
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 10:
            raise DataError(f"{path}:{lineno}", f"expected 10 tab-separated CoNLL-U columns, got {len(fields)}")
        token_id = fields[0]
        if "-" in token_id or "." in token_id:  # multiword token range or empty node
            continue
        if not token_id.isdigit():
            raise DataError(f"{path}:{lineno}", f"bad word id {token_id!r}")
        if not words:
            first = f"{path}:{lineno}"
        if not fields[at].strip():  # a word without a tag would leave tagging output a tag short
            raise DataError(f"{path}:{lineno}", f"empty {tag_column} tag")
        words.append(fields[1])
        tags.append(fields[at])
        lines.append(lineno)
    if words:
        sentences.append(TaggedSentence(words, tags, first, lines))
    if not sentences:
        raise DataError(str(path), "no sentences")
    return sentences


def parse_vectors(text: str, where: str, dim: int | None = None) -> list[list[float]]:
    """A sequence of feature vectors written ``v1,v2,... v1,v2,...`` (spaces between time steps)."""
    steps = []
    for step in text.split():
        try:
            steps.append([float(v) for v in step.split(",")])
        except ValueError:
            raise DataError(where, f"expected comma-separated numbers per time step, got {step[:40]!r}") from None
    for vector in steps:
        if dim is not None and len(vector) != dim:
            raise DataError(where, f"expected {dim} features per time step, got {len(vector)}")
        if not all(math.isfinite(v) for v in vector):
            raise DataError(where, "features must be finite numbers")
        dim = len(vector)
    return steps


# --- the label vocabulary -------------------------------------------------------------------

class LabelVocab:
    """Labels seen in training, most frequent first (ties by name), saved as JSON in the run."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)
        self.index = {label: i for i, label in enumerate(self.labels)}

    @classmethod
    def fit(cls, labels: Iterable[str]) -> LabelVocab:
        counts = Counter(labels)
        return cls([label for label, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))])

    def encode(self, label: str, where: str) -> int:
        try:
            return self.index[label]
        except KeyError:
            known = ", ".join(self.labels[:20]) + (" ..." if len(self.labels) > 20 else "")
            raise DataError(where, f"unknown label {label!r} (not in the training labels: {known})") from None

    def __len__(self) -> int:
        return len(self.labels)

    def save(self, path: Path) -> None:
        from nmt.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps({"labels": self.labels}, ensure_ascii=False, indent=0) + "\n")

    @classmethod
    def load(cls, path: Path) -> LabelVocab:
        path = Path(path)
        if not path.is_file():
            raise DataError(str(path), "label vocabulary not found")
        try:
            labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(str(path), f"not a label vocabulary ({exc})") from None
        if not labels or not all(isinstance(label, str) for label in labels):
            raise DataError(str(path), "not a label vocabulary (expected a non-empty list of strings)")
        return cls(labels)


# --- baselines (printed beside every recipe's score) ----------------------------------------

def accuracy(predicted: Sequence[str], gold: Sequence[str]) -> float:
    if len(predicted) != len(gold):
        raise DataError(None, f"{len(predicted)} predictions for {len(gold)} references")
    return sum(p == g for p, g in zip(predicted, gold)) / max(len(gold), 1)


def majority_baseline(train_labels: Sequence[str], gold: Sequence[str]) -> float:
    """Accuracy of always answering the most frequent training label."""
    majority = LabelVocab.fit(train_labels).labels[0]
    return accuracy([majority] * len(gold), gold)


def most_frequent_tag_baseline(train: Sequence[TaggedSentence], gold: Sequence[TaggedSentence]) -> float:
    """Word accuracy of tagging each word with its most frequent training tag (unseen: the commonest tag)."""
    per_word: dict[str, Counter] = {}
    for sentence in train:
        for word, tag in zip(sentence.words, sentence.tags):
            per_word.setdefault(word, Counter())[tag] += 1
    overall = LabelVocab.fit(t for s in train for t in s.tags).labels[0]
    best = {word: min(c.items(), key=lambda item: (-item[1], item[0]))[0] for word, c in per_word.items()}
    predicted = [best.get(w, overall) for s in gold for w in s.words]
    return accuracy(predicted, [t for s in gold for t in s.tags])


# --- examples, batches and the data module --------------------------------------------------

@dataclass
class Example:
    """A model-ready example: token ids or feature vectors, and a label id (or one per word)."""

    index: int
    inputs: list  # token ids [S], or feature vectors [S][F]
    target: Union[int, list[int]]  # a class id, or a tag id per word
    word_starts: list[int] | None = None  # tagging: the position of each word's first piece
    word_ids: list[int] | None = None  # tagging with model.word_embedding: one id per whole word


class ExampleDataset(Dataset):
    def __init__(self, examples: list[Example]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]

    def lengths(self) -> list[int]:
        return [max(1, len(e.inputs)) for e in self.examples]


def collate_inputs(inputs: Sequence[list], pad_id: int, vectors: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token ids to [B,S] (long) or feature vectors to [B,S,F] (float); empty inputs get one pad step."""
    lengths = torch.tensor([max(1, len(x)) for x in inputs])  # [B]
    longest = int(lengths.max())
    if vectors:
        dim = next((len(x[0]) for x in inputs if x), 1)
        out = torch.zeros(len(inputs), longest, dim)
        for i, x in enumerate(inputs):
            if x:
                out[i, : len(x)] = torch.tensor(x, dtype=torch.float)
    else:
        out = torch.full((len(inputs), longest), pad_id, dtype=torch.long)
        for i, x in enumerate(inputs):
            out[i, : len(x)] = torch.as_tensor(x, dtype=torch.long)
    return out, lengths


class ExampleCollator:
    """Pads a list of examples: ``src`` [B,S] or [B,S,F], ``src_len`` [B], and the targets.

    Classification: ``labels`` [B]. Tagging: ``word_starts`` and ``word_ends`` [B,W] (positions of
    each word's first and last piece), ``word_len`` [B] (words per sentence) and ``labels`` [B,W]
    with -100 (ignored by the loss) beyond each sentence's last word; with whole-word ids,
    ``word_ids`` [B,W] padded with 0.
    """

    def __init__(self, pad_id: int = 0, vectors: bool = False):
        self.pad_id, self.vectors = pad_id, vectors

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        src, src_len = collate_inputs([e.inputs for e in examples], self.pad_id, self.vectors)
        batch = {"ids": torch.tensor([e.index for e in examples]), "src": src, "src_len": src_len,
                 "ntokens": src_len.sum()}
        if examples and examples[0].word_starts is not None:
            words = max(1, max(len(e.word_starts) for e in examples))
            starts = torch.zeros(len(examples), words, dtype=torch.long)
            ends = torch.zeros(len(examples), words, dtype=torch.long)
            labels = torch.full((len(examples), words), -100, dtype=torch.long)
            for i, e in enumerate(examples):
                n = len(e.word_starts)
                starts[i, :n] = torch.as_tensor(e.word_starts, dtype=torch.long)
                ends[i, :n] = torch.as_tensor(e.word_starts[1:] + [len(e.inputs)], dtype=torch.long) - 1
                labels[i, : len(e.target)] = torch.as_tensor(e.target, dtype=torch.long)
            batch["word_starts"], batch["word_ends"], batch["labels"] = starts, ends, labels  # [B,W] each
            batch["word_len"] = torch.tensor([len(e.word_starts) for e in examples], dtype=torch.long)  # [B]
            if examples[0].word_ids is not None:  # whole-word ids, padded with the pad id 0
                word_ids = torch.zeros(len(examples), words, dtype=torch.long)
                for i, e in enumerate(examples):
                    word_ids[i, : len(e.word_ids)] = torch.as_tensor(e.word_ids, dtype=torch.long)
                batch["word_ids"] = word_ids  # [B,W]
        else:
            batch["labels"] = torch.tensor([e.target for e in examples], dtype=torch.long)  # [B]
        return batch
