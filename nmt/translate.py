"""``nmt translate``: stream text through a trained run with batched beam search.

Input is read in chunks so memory stays flat however long the input is; within a chunk, lines are
sorted by length into token-count batches and put back in input order before they are written.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Iterable, Iterator

import click
import torch

from nmt import search
from nmt.errors import UserError
from nmt.io import open_output, refuse_same_file
from nmt.runs import load_run

CHUNK_LINES = 2000


def encode_lines(task, lines: list[str]) -> list[list[int]]:
    """Source token ids per line; an empty or blank line has none."""
    return [task.src_tokenizer.encode(line) if line.strip() else [] for line in lines]


def translate_lines(task, lines: list[str], beam: int, nbest: int, alpha: float, batch_tokens: int,
                    max_length_ratio: float, encoded: list[list[int]] | None = None) -> list[list[search.Hypothesis]]:
    """Hypotheses for each line, in input order; an empty or blank line gets none."""
    encoded = encode_lines(task, lines) if encoded is None else encoded
    order = sorted((i for i in range(len(lines)) if encoded[i]), key=lambda i: len(encoded[i]))
    results: list[list[search.Hypothesis]] = [[] for _ in lines]
    device = next(task.parameters()).device
    batch: list[int] = []
    for i in order + [None]:
        if i is not None and (not batch or (len(batch) + 1) * len(encoded[i]) <= batch_tokens):
            batch.append(i)
            continue
        if batch:
            src = torch.nn.utils.rnn.pad_sequence([torch.tensor(encoded[j]) for j in batch], batch_first=True,
                                                  padding_value=task.src_tokenizer.pad_id).to(device)
            src_len = torch.tensor([len(encoded[j]) for j in batch])
            if beam == 1 and nbest == 1:
                hyps = [[h] for h in search.greedy_search(task, src, src_len, max_length_ratio)]
            else:
                hyps = search.beam_search(task, src, src_len, beam, alpha, nbest, max_length_ratio)
            for j, h in zip(batch, hyps):
                results[j] = h
        batch = [i] if i is not None else []
    return results


def chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(lines)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def translate_file(run_dir: Path, checkpoint: str = "best", beam: int = 5, nbest: int = 1, alpha: float = 0.6,
                   batch_tokens: int = 4000, max_length_ratio: float = 2.0, input_path: Path | None = None,
                   output_path: Path | None = None, encoding_errors: str = "strict", device: str = "auto") -> None:
    from nmt.data.text import iter_lines, iter_stream

    if nbest > beam:
        raise UserError("--nbest", f"must not exceed --beam ({nbest} > {beam})")
    refuse_same_file(output_path, input_path, stdin=input_path is None)
    task = load_run(run_dir, checkpoint=checkpoint, device=device)
    if not hasattr(task, "src_tokenizer") or not hasattr(task, "decode_step"):
        raise UserError(run_dir, f"task '{task.recipe.spec.task}' does not translate; use nmt predict")
    source = iter_lines(input_path, encoding_errors) if input_path else iter_stream(sys.stdin.buffer, "<stdin>", encoding_errors)
    longest = task.recipe.data.max_length
    warned = False
    with open_output(output_path) as out:
        line_no = 0
        for chunk in chunks(source, CHUNK_LINES):
            encoded = encode_lines(task, chunk)
            too_long = next((k for k, ids in enumerate(encoded) if len(ids) > longest), None)
            if too_long is not None and not warned:
                click.echo(f"nmt: warning: {input_path or '<stdin>'}:{line_no + too_long + 1}: line is longer than "
                           f"any training sentence ({longest} tokens); translating it anyway", err=True)
                warned = True
            results = translate_lines(task, chunk, beam, nbest, alpha, batch_tokens, max_length_ratio, encoded)
            for k, hyps in enumerate(results):
                if nbest == 1:
                    out.write((task.tgt_tokenizer.decode(hyps[0].tokens) if hyps else "") + "\n")
                else:  # an empty input line still gets its numbered (empty) entry
                    for h in hyps or [search.Hypothesis([], 0.0, 0.0)]:
                        out.write(f"{line_no + k} ||| {task.tgt_tokenizer.decode(h.tokens)} ||| {h.score:.4f}\n")
            line_no += len(chunk)
            out.flush()
