"""What classification and tagging share: :class:`LabelTask`, the base of ``classify`` and ``tag``.

Both embed the input (token ids, or with ``data.input: vectors`` scaled feature vectors), run the
encoder plugin over it and score labels with a linear layer; both keep their label vocabulary (and
the feature scaler) in the run's fitted folder, train with cross-entropy (optionally with word
dropout and adversarial perturbations of the embedded inputs), report accuracy on the validation
set, and answer ``nmt predict`` one line per input line. A subclass reads its data, says how an
encoded sequence becomes logits (``forward``), and how logits become an output line.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from nmt import plugin_checks
from nmt.contracts import EncoderOutput, build_encoder
from nmt.data.batching import BucketedDataModule, bucket_by_length
from nmt.data.labelled import Example, ExampleCollator, ExampleDataset, LabelVocab, parse_vectors
from nmt.data.scaling import Scaler
from nmt.errors import DataError
from nmt.recipe import Recipe, Section
from nmt.runs import fitted_dir
from nmt.tasks.base import Task

LABELS_FILE = "labels.json"  # in the run's fitted folder, beside the tokenizer model
FEATURES_FILE = "features.json"  # numeric input: the per-feature mean and std of the training steps


class InputEmbedding(Section):
    """The ``model.embedding`` section of both tasks."""

    size: int = Field(256, gt=0, le=65536)  # embedding size for tokens; projection size for vectors
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # Training only: each token becomes <unk> with this probability, so the model learns to use the
    # context of words it has never seen (Iyyer et al. 2015; Kiperwasser and Goldberg 2016).
    word_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # Training only: each batch is also scored with its embedded inputs moved this far (L2 norm per
    # sequence) in the direction that raises the loss most, and that loss is added (adversarial
    # training, Miyato et al. 2017): two forward and backward passes per step.
    adversarial: float = Field(0.0, ge=0.0, le=100.0, allow_inf_nan=False)  # 1e300 turned the loss NaN at step 1


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
                 scaler: Scaler | None = None):
        super().__init__(recipe, run_dir)
        self.tokenizer, self.labels, self.scaler = tokenizer, labels, scaler
        emb = recipe.model.embedding
        if tokenizer is not None:
            self.embed = nn.Embedding(len(tokenizer), emb.size, padding_idx=tokenizer.pad_id)
        else:
            self.embed = nn.Linear(scaler.dim, emb.size)
        self.embed_dropout = nn.Dropout(emb.dropout)
        self.encoder = build_encoder(recipe.components["model.encoder"], input_size=emb.size)
        self.output_dropout = nn.Dropout(recipe.model.dropout)
        self.output = nn.Linear(self.encoder.output_size, len(labels))
        self._valid = [0.0, 0, 0]  # loss sum, correct, count

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id if self.tokenizer is not None else 0

    def encode(self, src: torch.Tensor, src_len: torch.Tensor,
               perturbation: torch.Tensor | None = None) -> EncoderOutput:
        """Ids [B,S] (or vectors [B,S,F]) to the encoder's output (states [B,S,D], mask [B,S], pooled [B,D]).

        ``perturbation`` [B,S,E] is added to the embedded inputs (adversarial training)."""
        if self.training and self.tokenizer is not None:
            src = drop_to_unk(src, self.recipe.model.embedding.word_dropout, self.pad_id, self.tokenizer.unk_id)
        embedded = self.embed_dropout(self.embed(src))  # [B,S,E]
        if perturbation is not None:
            embedded = embedded + perturbation
        return plugin_checks.check_encoded(self.encoder, self.encoder(embedded, src_len), embedded)

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
        loss_sum = F.cross_entropy(logits.float(), labels, reduction="sum").item()
        self._valid[0] += plugin_checks.check_validation_loss(self, loss_sum)
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

    # --- the run directory --------------------------------------------------------------------

    @staticmethod
    def fit_labels(run_dir: Path, labels: Iterable[str]) -> None:
        """Save the label vocabulary of the training labels, unless a resumed run has it already.

        Written before the tokenizer, whose READY file the other ranks of a distributed run wait for."""
        path = fitted_dir(run_dir) / LABELS_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            LabelVocab.fit(labels).save(path)

    @staticmethod
    def load_labels(run_dir: Path) -> LabelVocab:
        return LabelVocab.load(fitted_dir(run_dir) / LABELS_FILE)

    # --- reading data -------------------------------------------------------------------------

    def encode_inputs(self, text: str, where: str) -> list:
        """Token ids of a text, or the scaled feature vectors of a numeric line."""
        if self.tokenizer is not None:
            return plugin_checks.check_ids(self.tokenizer, self.tokenizer.encode(text), text, where, len(self.tokenizer))
        return self.scaler.scale_steps(parse_vectors(text, where, self.scaler.dim))

    def make_datamodule(self) -> BucketedDataModule:
        data = self.recipe.data
        train = [e for e in self.examples("train") if len(e.inputs) <= data.max_length]
        if not train:
            raise DataError(None, f"no training example is within data.max_length ({data.max_length})")
        return BucketedDataModule(ExampleDataset(train), ExampleDataset(self.examples("valid")),
                                  ExampleCollator(self.pad_id, self.tokenizer is None),
                                  batch_tokens=data.batch_tokens, max_sentences=data.max_sentences,
                                  valid_batch_tokens=data.valid_batch_tokens, seed=self.recipe.spec.seed,
                                  num_workers=data.num_workers)

    def examples(self, split: str) -> list[Example]:
        raise NotImplementedError

    # --- nmt predict ----------------------------------------------------------------------------

    def predict_file(self, input_path=None, output_path=None, probabilities: bool = False,
                     encoding_errors: str = "strict", batch_tokens: int = 8000, max_input_tokens: int | None = None,
                     **options) -> None:
        """Answer each input line with one output line, in order; empty lines stay empty.

        Work per line is bounded as in ``nmt translate``: a line is read up to a byte cap and cut to
        ``max_input_tokens`` (default 4 x ``data.max_length``; steps for numeric lines) with a warning
        (:meth:`cut_example`). Standard input from a terminal or pipe is answered line by line as it comes."""
        from nmt.data.text import BYTES_PER_TOKEN
        from nmt.io import open_output
        from nmt.translate import CHUNK_LINES, CutLines, chunks, read_source

        max_tokens = max_input_tokens or 4 * self.recipe.data.max_length
        name = str(input_path) if input_path else "<stdin>"
        step_bytes = BYTES_PER_TOKEN * (1 if self.tokenizer is not None else self.scaler.dim)  # a vector: its features
        report = CutLines(name, max_tokens, "predicting from")
        source, pending = read_source(input_path, encoding_errors, max_tokens * step_bytes, report.lines)
        with open_output(output_path) as out, torch.inference_mode():
            line_no = 0
            for chunk in chunks(source, CHUNK_LINES, pending):
                wheres = [f"{name}:{line_no + k + 1}" for k in range(len(chunk))]
                cut_here: set[int] = set()  # indices in the chunk
                for answer in self.predict_lines(chunk, wheres, probabilities, batch_tokens, max_tokens, cut_here):
                    out.write(answer + "\n")
                report.lines.update(line_no + k + 1 for k in cut_here)
                report.flush(line_no + len(chunk))
                line_no += len(chunk)
                out.flush()
        report.finish()

    def predict_lines(self, lines: list[str], wheres: list[str], probabilities: bool, batch_tokens: int,
                      max_tokens: int | None = None, cut: set[int] | None = None) -> list[str]:
        """One answer per line, in order; a blank line gets an empty one. Lines go through the model in
        batches of similar length, at most ``batch_tokens`` padded tokens each. A line longer than
        ``max_tokens`` is cut (:meth:`cut_example`) and its index added to ``cut``."""
        examples = {i: self.line_example(i, line, where)
                    for i, (line, where) in enumerate(zip(lines, wheres)) if line.strip()}
        if max_tokens is not None:
            for i, example in examples.items():
                if len(example.inputs) > max_tokens:
                    examples[i] = self.cut_example(example, max_tokens)
                    if cut is not None:
                        cut.add(i)
        todo = [i for i, example in examples.items() if example.inputs]
        answers = [""] * len(lines)
        collate = ExampleCollator(self.pad_id, self.tokenizer is None)
        for batch_ids in bucket_by_length([len(examples[i].inputs) for i in todo], batch_tokens):
            batch_examples = [examples[todo[k]] for k in batch_ids]
            batch = collate(batch_examples)
            # Lengths stay on the CPU, where the encoder's packing reads them.
            batch = {k: v if k in ("src_len", "word_len") else v.to(self.device) for k, v in batch.items()}
            for example, answer in zip(batch_examples, self.batch_answers(self(batch), batch_examples, probabilities)):
                answers[example.index] = answer
        return answers

    def cut_example(self, example: Example, max_tokens: int) -> Example:
        """``example`` with its first ``max_tokens`` inputs (tokens or steps): a label for the start of the line."""
        return Example(example.index, example.inputs[:max_tokens], example.target)

    def line_example(self, index: int, line: str, where: str) -> Example:
        """The example of one non-blank input line of ``nmt predict`` (its targets are placeholders)."""
        raise NotImplementedError

    def batch_answers(self, logits: torch.Tensor, examples: list[Example], probabilities: bool) -> list[str]:
        """The output line of each example of a batch, from the model's logits."""
        raise NotImplementedError
