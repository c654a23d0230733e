"""Sequence classification as a task: a sequence in, one label out (many-to-one).

Follow one sentence: a TSV row gives text and label; the tokenizer plugin turns the text into ids
(or, with ``data.input: vectors``, each time step is a vector of numbers); ``embed`` maps them to
vectors; the encoder plugin (the same GRU, LSTM or Transformer as translation) gives one state per
position and a pooled summary; ``pool`` reduces them to one vector (``final``: the encoder's summary,
the mean, the maximum, or attention); a linear layer scores each label. What classification shares
with tagging (the embedding, the encoder, the label vocabulary, accuracy, ``nmt predict``) is in
:mod:`nmt.tasks.labels`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import torch
from pydantic import Field
from torch import nn

from nmt.contracts import EncoderOutput
from nmt.data.labelled import Column, Example, LabelledText, LabelVocab, parse_vectors, read_tsv
from nmt.data.prepared import MAX_LENGTH
from nmt.data.scaling import Scaler
from nmt.errors import DataError
from nmt.recipe import EncoderSection, Recipe, Section, TokenizerSection, resolve_data_path
from nmt.registry import register
from nmt.runs import fitted_dir
from nmt.tasks.labels import FEATURES_FILE, InputEmbedding, LabelTask
from nmt.tasks.limits import MAX_BATCH_SENTENCES, MAX_BATCH_TOKENS, MAX_WORKERS, check_encoder_length
from nmt.tasks.tokenizers import load_tokenizers, refuse_sampling, train_tokenizers


# --- recipe sections ------------------------------------------------------------------------

class LabelledFile(Section):
    """A TSV file, with column names that differ from the data section's defaults."""

    path: str
    text_column: Optional[Column] = None
    label_column: Optional[Column] = None


class ClassifyData(Section):
    root: Optional[str] = None  # default: $NMT_DATA, else ../shared/data
    train: Union[str, LabelledFile]
    valid: Union[str, LabelledFile]
    header: bool = True  # the first line names the columns
    text_column: Column = "sentence"  # a header name, or a 0-based column number
    label_column: Column = "label"
    input: Literal["tokens", "vectors"] = "tokens"  # vectors: "v1,v2,... v1,v2,..." per line, one per step
    tokenizer: TokenizerSection = {"name": "whitespace"}  # only for tokens
    # training examples longer than this (tokens or steps) are skipped; bounded as in translation, since
    # nmt predict reads lines of up to 4 x this many tokens by default
    max_length: int = Field(200, gt=0, le=MAX_LENGTH, strict=True)
    batch_tokens: int = Field(4000, gt=0, le=MAX_BATCH_TOKENS, strict=True)  # padded tokens per training batch
    max_sentences: Optional[int] = Field(None, gt=0, le=MAX_BATCH_SENTENCES, strict=True)
    valid_batch_tokens: int = Field(8000, gt=0, le=MAX_BATCH_TOKENS, strict=True)
    num_workers: int = Field(0, ge=0, le=MAX_WORKERS, strict=True)  # DataLoader processes, each a copy of the data
    encoding_errors: str = Field("strict", pattern="^(strict|replace)$")


class ClassifyModel(Section):
    embedding: InputEmbedding = InputEmbedding()
    encoder: EncoderSection = {"name": "gru"}
    # final: the encoder's pooled summary (an RNN's last forward and first backward states; a Transformer's mean)
    pooling: Literal["final", "mean", "max", "attention"] = "attention"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # on the pooled vector, before the output layer


def training_steps(rows: list[LabelledText]) -> np.ndarray:
    """Every time step [N,F] of the training vectors, for the feature scaler. An empty text is allowed, as
    in token input (it trains on one padding step); the number of features is the first non-empty row's."""
    sequences = [parse_vectors(r.text, r.where) for r in rows]
    first = next((k for k, steps in enumerate(sequences) if steps), None)
    if first is None:
        raise DataError(rows[0].where, "empty text, as is every training text; "
                                       "expected time steps of comma-separated numbers")
    dim = len(sequences[first][0])
    for row, steps in zip(rows, sequences):
        if steps and len(steps[0]) != dim:  # parse_vectors checked the steps within a row against its first
            raise DataError(row.where, f"time steps have differing numbers of features "
                                       f"({len(steps[0])} here, {dim} on {rows[first].where})")
    return np.asarray([v for steps in sequences for v in steps], dtype=np.float64)


# --- pooling --------------------------------------------------------------------------------

class AttentionPooling(nn.Module):
    """A learned query scores each state; the weighted mean of the states summarises the sequence."""

    def __init__(self, size: int):
        super().__init__()
        self.proj = nn.Linear(size, size)
        self.score = nn.Linear(size, 1, bias=False)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(torch.tanh(self.proj(states))).squeeze(-1)  # [B,S]
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)  # [B,S]
        return torch.bmm(weights.unsqueeze(1), states).squeeze(1), weights  # [B,D], [B,S]


# --- classification -------------------------------------------------------------------------

@register("task", "classify")
class ClassifyTask(LabelTask):
    """Sequence classification: tokens or feature vectors in, one label out (final, mean, max or attention pooling)."""

    DataConfig = ClassifyData
    ModelConfig = ClassifyModel
    label_probabilities = True

    @classmethod
    def check_recipe(cls, recipe: Recipe, check_data: bool = True) -> None:
        refuse_sampling(recipe)
        data = recipe.data
        check_encoder_length(recipe, "model.encoder", data.max_length, "data.max_length, the longest training input")
        if check_data:
            for split in (data.train, data.valid):
                resolve_data_path(split if isinstance(split, str) else split.path, data.root)

    @classmethod
    def read_split(cls, recipe: Recipe, split: str | LabelledFile) -> list[LabelledText]:
        data = recipe.data
        if isinstance(split, str):
            split = LabelledFile(path=split)
        return read_tsv(resolve_data_path(split.path, data.root),
                        split.text_column if split.text_column is not None else data.text_column,
                        split.label_column if split.label_column is not None else data.label_column,
                        header=data.header, encoding_errors=data.encoding_errors)

    @classmethod
    def prepare_run(cls, recipe: Recipe, run_dir: Path) -> None:
        rows = cls.read_split(recipe, recipe.data.train)
        cls.fit_labels(run_dir, (r.label for r in rows))  # labels and scaler first: see fit_labels
        if recipe.data.input == "vectors":
            path = fitted_dir(run_dir) / FEATURES_FILE
            if not path.exists():
                steps = training_steps(rows)  # [N,F]: every time step
                # A spread below 1e-8 in a feature is rounding noise: the feature is treated as constant.
                Scaler.fit(steps, min_std=1e-8).save(path)
        else:
            train_tokenizers(recipe, run_dir, [r.text for r in rows], None, joint=False)

    @classmethod
    def from_run(cls, recipe: Recipe, run_dir: Path) -> "ClassifyTask":
        labels = cls.load_labels(run_dir)
        if recipe.data.input == "vectors":
            return cls(recipe, run_dir, None, labels, Scaler.load(fitted_dir(run_dir) / FEATURES_FILE))
        tokenizer, _ = load_tokenizers(recipe, run_dir, joint=False, target=False)
        return cls(recipe, run_dir, tokenizer, labels)

    def __init__(self, recipe: Recipe, run_dir: Path, tokenizer, labels: LabelVocab,
                 scaler: Scaler | None = None):
        super().__init__(recipe, run_dir, tokenizer, labels, scaler)
        self.pooling = recipe.model.pooling
        if self.pooling == "attention":
            self.attention = AttentionPooling(self.encoder.output_size)

    def pool(self, encoded: EncoderOutput) -> torch.Tensor:
        """The encoder's output (states [B,S,D], mask [B,S]) to one vector per sequence [B,D]."""
        states, mask = encoded.states, encoded.mask
        if self.pooling == "final":
            return encoded.pooled  # [B,D]
        if self.pooling == "mean":
            weights = mask.unsqueeze(-1).to(states.dtype)  # [B,S,1]
            return (states * weights).sum(1) / weights.sum(1).clamp(min=1)
        if self.pooling == "max":  # each feature's strongest value anywhere in the sequence (Conneau et al. 2017)
            return states.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(1).values
        return self.attention(states, mask)[0]

    def forward(self, batch, perturbation: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B,C] for a padded batch."""
        encoded = self.encode(batch["src"], batch["src_len"], perturbation)  # states [B,S,D], mask [B,S]
        return self.output(self.output_dropout(self.pool(encoded)))  # [B,C]

    def examples(self, split: str) -> list[Example]:
        rows = self.read_split(self.recipe, getattr(self.recipe.data, split))
        return [Example(i, self.encode_inputs(r.text, r.where), self.labels.encode(r.label, r.where))
                for i, r in enumerate(rows)]

    def line_example(self, index: int, line: str, where: str) -> Example:
        return Example(index, self.encode_inputs(line, where), 0)

    def batch_answers(self, logits: torch.Tensor, examples: list[Example], probabilities: bool) -> list[str]:
        """The most probable label of each example, with ``probabilities`` followed by every label's."""
        answers = []
        for p in torch.softmax(logits.float(), dim=-1).cpu():  # [B,C]
            label = self.labels.labels[int(p.argmax())]
            if probabilities:
                label += "".join(f"\t{name}={float(q):.4f}" for name, q in zip(self.labels.labels, p))
            answers.append(label)
        return answers
