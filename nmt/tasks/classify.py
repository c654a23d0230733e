"""Sequence classification as a task: a sequence in, one label out (many-to-one).

Follow one sentence: a TSV row gives text and label; the tokenizer plugin turns the text into ids
(or, with ``data.input: vectors``, each time step is a vector of numbers); ``embed`` maps them to
vectors; the encoder plugin (the same GRU or LSTM as translation) gives one state per position;
``pool`` reduces them to one vector (the final state, the mean, the maximum, or attention); a linear layer
scores each label.

:class:`LabelTask` holds what classification and tagging (``nmt.tasks.tag``) share: the input
embedding, the encoder, the label vocabulary and feature scaler in the run directory, accuracy
on the validation set, and ``nmt predict``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from nmt.data.batching import BucketedDataModule
from nmt.data.labelled import (Column, Example, ExampleCollator, ExampleDataset, LabelledText, LabelVocab,
                               length_batches, parse_vectors, read_tsv)
from nmt.errors import DataError
from nmt.recipe import Recipe, Section, component, resolve_data_path
from nmt.registry import register
from nmt.tasks.base import Task
from nmt.tasks.tokenizers import load_tokenizers, tokenizer_dir, train_tokenizers

LABELS_FILE = "labels.json"  # in the run's tokenizer/ directory, beside the tokenizer model
FEATURES_FILE = "features.json"  # numeric input: dimension and the per-feature mean and scale of train


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
    tokenizer: dict[str, Any] = {"name": "whitespace"}  # only for tokens
    max_length: PositiveInt = 200  # training examples longer than this (tokens or steps) are skipped
    batch_tokens: PositiveInt = 4000  # padded tokens per training batch
    max_sentences: Optional[PositiveInt] = None
    valid_batch_tokens: PositiveInt = 8000
    num_workers: int = Field(0, ge=0)
    encoding_errors: str = Field("strict", pattern="^(strict|replace)$")


class InputEmbedding(Section):
    size: int = Field(256, gt=0, le=65536)  # embedding size for tokens; projection size for vectors
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # Training only: each token becomes <unk> with this probability, so the model learns to use the
    # context of words it has never seen (Iyyer et al. 2015; Kiperwasser and Goldberg 2016).
    word_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # Training only: each batch is also scored with its embedded inputs moved this far (L2 norm per
    # sequence) in the direction that raises the loss most, and that loss is added (adversarial
    # training, Miyato et al. 2017): two forward and backward passes per step.
    adversarial: float = Field(0.0, ge=0.0, allow_inf_nan=False)


class ClassifyModel(Section):
    embedding: InputEmbedding = InputEmbedding()
    encoder: dict[str, Any] = {"name": "gru"}
    pooling: Literal["final", "mean", "max", "attention"] = "attention"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # on the pooled vector, before the output layer


# --- shared by classification and tagging ---------------------------------------------------

class FeatureScaler:
    """Per-feature standardisation of numeric input, fitted on the training set."""

    def __init__(self, mean: list[float], scale: list[float]):
        self.dim = len(mean)
        self.mean, self.scale = torch.tensor(mean), torch.tensor(scale)

    @classmethod
    def fit(cls, sequences: list[list[list[float]]]) -> "FeatureScaler":
        values = torch.tensor([v for seq in sequences for v in seq], dtype=torch.float64)  # [N,F]
        std = values.std(dim=0, unbiased=False) if len(values) > 1 else torch.ones(values.shape[1])
        return cls(values.mean(dim=0).tolist(), torch.where(std > 1e-8, std, torch.ones_like(std)).tolist())

    def __call__(self, sequence: list[list[float]]) -> list[list[float]]:
        if not sequence:
            return []
        return ((torch.tensor(sequence) - self.mean) / self.scale).tolist()

    def save(self, path: Path) -> None:
        from nmt.io import atomic_write_text

        payload = {"dim": self.dim, "mean": self.mean.tolist(), "scale": self.scale.tolist()}
        atomic_write_text(path, json.dumps(payload) + "\n")

    @classmethod
    def load(cls, path: Path) -> "FeatureScaler":
        if not path.is_file():
            raise DataError(str(path), "feature scaler not found")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            return cls(payload["mean"], payload["scale"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(str(path), f"not a feature scaler ({exc})") from None


def drop_to_unk(ids: torch.Tensor, rate: float, pad_id: int, unk_id: int) -> torch.Tensor:
    """Word dropout: each non-padding id [B,S] becomes ``unk_id`` with probability ``rate``."""
    if rate <= 0:
        return ids
    drop = (torch.rand(ids.shape, device=ids.device) < rate) & (ids != pad_id)  # [B,S]
    return ids.masked_fill(drop, unk_id)


class LabelTask(Task):
    """Base of tasks that predict labels from an encoded sequence, scored by accuracy."""

    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(self, recipe: Recipe, run_dir: Path, tokenizer, labels: LabelVocab,
                 scaler: FeatureScaler | None = None):
        super().__init__(recipe, run_dir)
        self.tokenizer, self.labels, self.scaler = tokenizer, labels, scaler
        emb = recipe.model.embedding
        if tokenizer is not None:
            self.embed = nn.Embedding(len(tokenizer), emb.size, padding_idx=tokenizer.pad_id)
        else:
            self.embed = nn.Linear(scaler.dim, emb.size)
        self.embed_dropout = nn.Dropout(emb.dropout)
        encoder_cls, encoder_cfg = component("encoder", recipe.model.encoder, "model.encoder", recipe.path)
        self.encoder = encoder_cls(encoder_cfg, input_size=emb.size)
        self.output_dropout = nn.Dropout(recipe.model.dropout)
        self.output = nn.Linear(self.encoder.output_size, len(labels))
        self._valid = [0.0, 0, 0]  # loss sum, correct, count

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id if self.tokenizer is not None else 0

    def encode(self, src: torch.Tensor, src_len: torch.Tensor, perturbation: torch.Tensor | None = None):
        """Ids [B,S] (or vectors [B,S,F]) to encoder (states [B,S,D], final, mask [B,S]).

        ``perturbation`` [B,S,E] is added to the embedded inputs (adversarial training)."""
        if self.training and self.tokenizer is not None:
            src = drop_to_unk(src, self.recipe.model.embedding.word_dropout, self.pad_id, self.tokenizer.unk_id)
        embedded = self.embed_dropout(self.embed(src))  # [B,S,E]
        if perturbation is not None:
            embedded = embedded + perturbation
        return self.encoder(embedded, src_len)

    def scores(self, batch, perturbation: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [N,C], labels [N]) over the batch's labelled units, padding already left out."""
        logits = self(batch, perturbation)
        labels = batch["labels"]
        if logits.dim() == 3:  # tagging: [B,W,C], padding words labelled -100
            keep = labels >= 0
            return logits[keep], labels[keep]
        return logits, labels

    def training_step(self, batch, batch_idx):
        epsilon = self.recipe.model.embedding.adversarial
        if epsilon > 0:
            loss, adversarial, count = self.adversarial_losses(batch, epsilon)
            self.log("train/adversarial_loss", adversarial, batch_size=count)
            total = loss + adversarial
        else:
            loss, count = self.train_loss(batch)
            total = loss
        self.log("train/loss", self.check_finite(loss), prog_bar=True, batch_size=count)
        return total

    def train_loss(self, batch, perturbation: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """(cross-entropy with the recipe's label smoothing, labelled units) of a training batch."""
        logits, labels = self.scores(batch, perturbation)
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.recipe.spec.optim.label_smoothing), len(labels)

    def adversarial_losses(self, batch, epsilon: float) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(the loss at the inputs, the loss at the inputs moved ``epsilon`` the way that raises it most, units).

        The direction is the gradient of the first loss with respect to the embedded inputs,
        normalised per sequence (Miyato et al. 2017); both passes draw the same dropout masks."""
        src = batch["src"]
        probe = torch.zeros(*src.shape[:2], self.recipe.model.embedding.size, device=src.device,
                            requires_grad=True)  # [B,S,E]: the gradient at the embedded inputs
        devices = [src.device.index or 0] if src.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the RNG state is restored for the second pass
            loss, count = self.train_loss(batch, probe)
        (grad,) = torch.autograd.grad(loss, probe, retain_graph=True)  # [B,S,E]
        norm = grad.flatten(1).norm(dim=1).clamp(min=1e-12)[:, None, None]  # [B,1,1]
        return loss, self.train_loss(batch, epsilon * grad / norm)[0], count

    def validation_step(self, batch, batch_idx):
        logits, labels = self.scores(batch)
        self._valid[0] += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        self._valid[1] += int((logits.argmax(-1) == labels).sum())
        self._valid[2] += len(labels)

    def on_validation_epoch_end(self):
        totals = torch.tensor(self._valid, dtype=torch.float64, device=self.device)
        self._valid = [0.0, 0, 0]
        if dist.is_available() and dist.is_initialized():  # score the whole dev set, not this rank's share
            dist.all_reduce(totals)
        loss_sum, correct, count = totals.tolist()
        values = {"val/loss": loss_sum / max(count, 1), "val/acc": correct / max(count, 1), "val/count": count}
        self.log_dict(values, prog_bar=True, sync_dist=False, rank_zero_only=False)
        self.step_plateau(values[self.monitor])

    # --- reading data -------------------------------------------------------------------------

    def encode_inputs(self, text: str, where: str) -> list:
        """Token ids of a text, or the scaled feature vectors of a numeric line."""
        if self.tokenizer is not None:
            return self.tokenizer.encode(text)
        return self.scaler(parse_vectors(text, where, self.scaler.dim))

    def make_datamodule(self) -> BucketedDataModule:
        data = self.recipe.data
        train = [e for e in self.examples("train") if len(e.inputs) <= data.max_length]
        if not train:
            raise DataError(None, f"no training example is within data.max_length ({data.max_length})")
        return BucketedDataModule(ExampleDataset(train), ExampleDataset(self.examples("valid")), ExampleCollator(self.pad_id, self.tokenizer is None),
                                  batch_tokens=data.batch_tokens, max_sentences=data.max_sentences,
                                  valid_batch_tokens=data.valid_batch_tokens, seed=self.recipe.spec.seed,
                                  num_workers=data.num_workers)

    def examples(self, split: str) -> list[Example]:
        raise NotImplementedError

    # --- nmt predict ----------------------------------------------------------------------------

    def predict_file(self, input_path=None, output_path=None, probabilities: bool = False,
                     encoding_errors: str = "strict", batch_tokens: int = 8000, **options) -> None:
        """Answer each input line with one output line, in order; empty lines stay empty."""
        from nmt.data.text import iter_lines, iter_stream
        from nmt.io import open_output
        from nmt.translate import CHUNK_LINES, chunks
        name = str(input_path) if input_path else "<stdin>"
        source = iter_lines(input_path, encoding_errors) if input_path else iter_stream(sys.stdin.buffer, name, encoding_errors)
        with open_output(output_path) as out, torch.inference_mode():
            line_no = 0
            for chunk in chunks(source, CHUNK_LINES):
                wheres = [f"{name}:{line_no + k + 1}" for k in range(len(chunk))]
                for answer in self.predict_lines(chunk, wheres, probabilities, batch_tokens):
                    out.write(answer + "\n")
                line_no += len(chunk)
                out.flush()

    def predict_lines(self, lines: list[str], wheres: list[str], probabilities: bool, batch_tokens: int) -> list[str]:
        raise NotImplementedError


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


def last_layer(final) -> torch.Tensor:
    """The top layer of an encoder's final state: a tensor [L,B,D] or an LSTM's (h, c) -> [B,D]."""
    h = final[0] if isinstance(final, tuple) else final
    return h[-1] if h.dim() == 3 else h


# --- classification -------------------------------------------------------------------------

@register("task", "classify")
class ClassifyTask(LabelTask):
    """Sequence classification: tokens or feature vectors in, one label out (final, mean, max or attention pooling)."""

    DataConfig = ClassifyData
    ModelConfig = ClassifyModel

    @classmethod
    def check_recipe(cls, recipe: Recipe, check_data: bool = True) -> None:
        data = recipe.data
        component("encoder", recipe.model.encoder, "model.encoder", recipe.path)
        if data.input == "tokens":
            component("tokenizer", data.tokenizer, "data.tokenizer", recipe.path)
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
        directory = tokenizer_dir(run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        rows = cls.read_split(recipe, recipe.data.train)
        # Labels and scaler first: other ranks start once the tokenizer's READY file exists.
        if not (directory / LABELS_FILE).exists():
            LabelVocab.fit(r.label for r in rows).save(directory / LABELS_FILE)
        if recipe.data.input == "vectors":
            if not (directory / FEATURES_FILE).exists():
                sequences = [parse_vectors(r.text, r.where) for r in rows]
                dims = {len(v) for seq in sequences for v in seq}
                if len(dims) != 1:
                    where = next(r.where for r, s in zip(rows, sequences) if s and len(s[0]) != len(sequences[0][0]))
                    raise DataError(where, f"time steps have differing numbers of features ({sorted(dims)})")
                FeatureScaler.fit(sequences).save(directory / FEATURES_FILE)
        else:
            train_tokenizers(recipe, run_dir, [r.text for r in rows], None, joint=False)

    @classmethod
    def from_run(cls, recipe: Recipe, run_dir: Path) -> "ClassifyTask":
        directory = tokenizer_dir(run_dir)
        labels = LabelVocab.load(directory / LABELS_FILE)
        if recipe.data.input == "vectors":
            return cls(recipe, run_dir, None, labels, FeatureScaler.load(directory / FEATURES_FILE))
        tokenizer, _ = load_tokenizers(recipe, run_dir, joint=False, target=False)
        return cls(recipe, run_dir, tokenizer, labels)

    def __init__(self, recipe: Recipe, run_dir: Path, tokenizer, labels: LabelVocab,
                 scaler: FeatureScaler | None = None):
        super().__init__(recipe, run_dir, tokenizer, labels, scaler)
        self.pooling = recipe.model.pooling
        if self.pooling == "attention":
            self.attention = AttentionPooling(self.encoder.output_size)

    def pool(self, states: torch.Tensor, final, mask: torch.Tensor) -> torch.Tensor:
        """Encoder states [B,S,D] to one vector per sequence [B,D]."""
        if self.pooling == "final":
            return last_layer(final)
        if self.pooling == "mean":
            weights = mask.unsqueeze(-1).to(states.dtype)  # [B,S,1]
            return (states * weights).sum(1) / weights.sum(1).clamp(min=1)
        if self.pooling == "max":  # each feature's strongest value anywhere in the sequence (Conneau et al. 2017)
            return states.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(1).values
        return self.attention(states, mask)[0]

    def forward(self, batch, perturbation: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B,C] for a padded batch."""
        states, final, mask = self.encode(batch["src"], batch["src_len"], perturbation)  # [B,S,D], ..., [B,S]
        return self.output(self.output_dropout(self.pool(states, final, mask)))  # [B,C]

    def examples(self, split: str) -> list[Example]:
        rows = self.read_split(self.recipe, getattr(self.recipe.data, split))
        return [Example(i, self.encode_inputs(r.text, r.where), self.labels.encode(r.label, r.where))
                for i, r in enumerate(rows)]

    def predict_lines(self, lines, wheres, probabilities, batch_tokens) -> list[str]:
        encoded = [self.encode_inputs(line, where) if line.strip() else [] for line, where in zip(lines, wheres)]
        answers = [""] * len(lines)
        todo = [i for i, e in enumerate(encoded) if e]
        collate = ExampleCollator(self.pad_id, self.tokenizer is None)
        for batch_ids in length_batches([len(encoded[i]) for i in todo], batch_tokens):
            indices = [todo[j] for j in batch_ids]
            batch = collate([Example(i, encoded[i], 0) for i in indices])
            batch = {k: v.to(self.device) if k != "src_len" else v for k, v in batch.items()}
            probs = torch.softmax(self(batch).float(), dim=-1).cpu()  # [B,C]
            for i, p in zip(indices, probs):
                label = self.labels.labels[int(p.argmax())]
                if probabilities:
                    label += "".join(f"\t{name}={float(q):.4f}" for name, q in zip(self.labels.labels, p))
                answers[i] = label
        return answers
