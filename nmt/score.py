"""``nmt score``: how probable a trained run finds given translations (forced decoding).

A pair (source line, target line) is read the way validation reads it: both sides tokenised, the
target followed by EOS, an empty source read as a lone EOS (:class:`~nmt.data.parallel.PairCollator`).
Teacher forcing gives the log-probability of each target piece given the source and the pieces
before it. Summed over a corpus and divided by the number of target pieces (EOS included), it is
minus the validation loss without label smoothing, so the perplexity printed here is ``val/ppl``.

Output, one line per input pair and in input order: the total log-probability, or with ``--json``
an object ``{"line": n (1-based), "logprob", "tokens" (target pieces and "</s>"), "token_logprobs",
"ppl"}``. The corpus line goes to standard error, so standard output stays one line per pair:
``corpus: N lines, T target tokens (EOS included), NLL x nats/token, ppl y``.

The files are streamed in chunks and each chunk is batched under the token budget, longest pairs
together, as ``nmt translate`` does. Work per line is bounded as there: a line longer than
``--max-input-tokens`` (default 4 x the recipe's ``data.max_length``) is an error naming its file and
line, found while reading (by bytes, before the line is held whole) or after tokenising. Unlike a
translation, a score of part of a line would be wrong, so the line is refused rather than cut.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import click
import torch

from nmt import plugin_checks
from nmt.alignment import EOS_PIECE
from nmt.data.batching import bucket_by_length
from nmt.data.parallel import PairCollator
from nmt.data.text import BYTES_PER_TOKEN, iter_bounded_lines
from nmt.errors import DataError, UserError
from nmt.io import open_output, refuse_same_file
from nmt.runs import load_run, load_run_recipe, refuse_run_files
from nmt.tasks.seq2seq import Seq2SeqData

CHUNK_LINES = 2000
DEFAULT_MAX_LENGTH = Seq2SeqData.model_fields["max_length"].default  # a recipe's data.max_length when not given


@dataclass
class LineScore:
    """The forced-decoding score of one target line: one log-probability per piece, EOS last."""

    line: int  # 1-based
    tokens: list[str]
    token_logprobs: list[float]

    @property
    def logprob(self) -> float:
        return sum(self.token_logprobs)

    @property
    def ppl(self) -> float:
        return math.exp(-self.logprob / len(self.token_logprobs))

    def json(self) -> str:
        return json.dumps({"line": self.line, "logprob": self.logprob, "tokens": self.tokens,
                           "token_logprobs": self.token_logprobs, "ppl": self.ppl}, ensure_ascii=False)


def score_lines(task, sources: list[str], targets: list[str], batch_tokens: int, first_line: int = 1,
                max_tokens: int | None = None, locations: Sequence[tuple[str, str]] = ()) -> list[LineScore]:
    """The score of each pair, in input order; batches hold at most ``batch_tokens`` padded tokens.
    With ``max_tokens``, a side longer than that is a :class:`DataError` at its entry of ``locations``
    (``(source's "file:line", target's)`` per pair; by default "source line N" and "target line N",
    numbered from ``first_line``)."""
    numbers = range(first_line, first_line + len(sources))
    locations = locations or [(f"source line {n}", f"target line {n}") for n in numbers]
    pairs = task.tokenize_pairs(sources, targets, locations)  # every pair, none skipped: Pair(index, src ids, tgt ids)
    if max_tokens is not None:
        check_lengths(pairs, max_tokens, locations)
    collate = PairCollator(task.pad_id, task.bos_id, task.eos_id)
    device = next(task.parameters()).device
    log_probs: list[list[float]] = [[] for _ in pairs]
    lengths = [max(len(p.src), len(p.tgt) + 1) for p in pairs]  # as training and validation batch
    with torch.inference_mode():
        for batch_ids in bucket_by_length(lengths, batch_tokens):
            batch = collate([pairs[i] for i in batch_ids])
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            scores = task.target_log_probs(batch).cpu()  # [B,T], 0 at padding
            if not bool(torch.isfinite(scores).all()):  # NaN is not a score, nor valid JSON: nothing is written
                plugin_checks.refuse_scores(task)
            rows = scores.tolist()
            for i, row in zip(batch_ids, rows):
                log_probs[i] = row[: len(pairs[i].tgt) + 1]  # the pieces and EOS
    return [LineScore(first_line + i, task.tgt_tokenizer.pieces(p.tgt) + [EOS_PIECE], log_probs[i])
            for i, p in enumerate(pairs)]


def check_lengths(pairs, max_tokens: int, locations: Sequence[tuple[str, str]]) -> None:
    """A :class:`DataError` at the first side of ``pairs`` with more than ``max_tokens`` tokens."""
    for pair, where in zip(pairs, locations, strict=True):
        for ids, side in ((pair.src, where[0]), (pair.tgt, where[1])):
            if len(ids) > max_tokens:
                raise DataError(side, f"line has {len(ids)} tokens, more than --max-input-tokens ({max_tokens}); "
                                      "raise it to score the line")


def input_token_limit(run_dir: Path, max_input_tokens: int | None) -> int:
    """``max_input_tokens``, or by default 4 x the run's ``data.max_length`` (as ``nmt translate``), read
    from its recipe before the model is loaded. (A task whose data has no ``max_length`` gets 4 x the
    seq2seq default; it is refused when loaded, since it does not translate.)"""
    return max_input_tokens or 4 * getattr(load_run_recipe(run_dir).data, "max_length", DEFAULT_MAX_LENGTH)


def count_lines(path: Path, max_bytes: int, encoding_errors: str) -> int:
    """Lines of ``path``, read through (and so checked for bad UTF-8 and length) before the model is loaded."""
    return sum(1 for _ in iter_bounded_lines(path, max_bytes, "--max-input-tokens", encoding_errors))


def check_line_counts(src_path: Path, tgt_path: Path, n_src: int, n_tgt: int) -> None:
    """Sources and targets must pair up line for line, and there must be some."""
    if n_src != n_tgt:
        raise DataError(str(tgt_path), f"line count differs from {src_path} ({n_tgt} vs {n_src})")
    if n_src == 0:
        raise DataError(str(src_path), "file is empty")


def score_files(run_dir: Path, src_path: Path, tgt_path: Path, checkpoint: str = "best", as_json: bool = False,
                output_path: Path | None = None, batch_tokens: int = 4000, encoding_errors: str = "strict",
                device: str = "auto", max_input_tokens: int | None = None) -> tuple[float, int]:
    """Score every line of ``tgt_path`` as a translation of the same line of ``src_path``; write one
    line per pair to ``output_path`` (default stdout), the corpus line to stderr. Returns the corpus
    (log-probability, target tokens)."""
    refuse_same_file(output_path, src_path, tgt_path)
    refuse_run_files(output_path, [run_dir], checkpoint)
    max_tokens = input_token_limit(run_dir, max_input_tokens)
    max_bytes = max_tokens * BYTES_PER_TOKEN
    if Path(src_path).is_file() and Path(tgt_path).is_file():  # counted before the model is loaded; a pipe
        # reads once only: it is checked as it is scored, and a mismatch there leaves no output either
        check_line_counts(src_path, tgt_path, count_lines(src_path, max_bytes, encoding_errors),
                          count_lines(tgt_path, max_bytes, encoding_errors))
    task = load_run(run_dir, checkpoint=checkpoint, device=device)
    if not hasattr(task, "target_log_probs"):
        raise UserError(run_dir, f"task '{task.recipe.spec.task}' does not translate; nmt score needs a seq2seq run")
    total, ntokens, line = 0.0, 0, 1
    pairs = itertools.zip_longest(*(iter_bounded_lines(path, max_bytes, "--max-input-tokens", encoding_errors)
                                    for path in (src_path, tgt_path)))
    with open_output(output_path) as out:
        while chunk := list(itertools.islice(pairs, CHUNK_LINES)):
            if any(None in pair for pair in chunk):  # one ran out before the other: count both to the end
                counts = [line - 1, line - 1]
                for pair in itertools.chain(chunk, pairs):
                    counts[0], counts[1] = counts[0] + (pair[0] is not None), counts[1] + (pair[1] is not None)
                check_line_counts(src_path, tgt_path, *counts)
            sources, targets = zip(*chunk)
            locations = [(f"{src_path}:{n}", f"{tgt_path}:{n}") for n in range(line, line + len(chunk))]
            for scored in score_lines(task, list(sources), list(targets), batch_tokens, first_line=line,
                                      max_tokens=max_tokens, locations=locations):
                out.write((scored.json() if as_json else f"{scored.logprob:.6f}") + "\n")
                total += scored.logprob
                ntokens += len(scored.token_logprobs)
            line += len(chunk)
            out.flush()
        if line == 1:
            check_line_counts(src_path, tgt_path, 0, 0)
    n_src = line - 1
    nll = -total / ntokens
    click.echo(f"corpus: {n_src} lines, {ntokens} target tokens (EOS included), NLL {nll:.6f} nats/token, "
               f"ppl {math.exp(min(nll, 50)):.4f}", err=True)
    return total, ntokens
