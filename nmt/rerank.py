"""``nmt rerank``: pick each line's translation from an n-best list with more than the search knew.

The n-best list is what ``nmt translate --nbest K`` writes (``i ||| hypothesis ||| score``, ``i`` the
0-based input line). Each hypothesis ``y`` of source ``x`` is scored again by forced decoding
(:func:`nmt.score.score_lines`):

- the **forward** runs (``--run``, as in ``nmt translate``): ``log P(y | x)``, several runs taken as the
  same mixture the ensemble search uses (:func:`nmt.ensemble.mean_probability`, token by token);
- the **channel** runs (``--channel``, trained in the other direction): ``log P(x | y)``, how well the
  hypothesis explains the source. A translation that drops or invents content can be fluent and
  probable forward, yet explains its source badly (noisy-channel reranking: Yee et al., 2019,
  "Simple and Effective Noisy Channel Modeling for Neural Machine Translation").

and ranked by ``log P(y | x) / lp(|y|, alpha) + weight * log P(x | y) / |x|``: ``lp`` the GNMT length
penalty of the search over the forward target pieces (EOS included), ``|x|`` the channel's source
pieces (EOS included), the same for every hypothesis of a line. (Fairseq's noisy channel divides the
sum of both by the hypothesis length; the channel term, tens of nats for the same source, then
rewards every extra target piece. On the Multi30k en-de dev set that form lost 0.1 to 4 BLEU at
every weight tried, see the README.) With weight 0 and the search's alpha this is the search's own
ranking, so the first hypothesis of each line is kept.

With ``--ref`` (a dev set), every weight and alpha of the grid is tried, its corpus BLEU printed, and
the best written; its values are then passed as ``--weight`` and ``--alpha`` for the test sets, which
are never tuned on.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import click
import torch

from nmt.data.text import BYTES_PER_TOKEN, iter_bounded_lines
from nmt.ensemble import Ensemble, mean_probability
from nmt.errors import DataError, UserError
from nmt.io import open_output, refuse_same_file
from nmt.runs import refuse_run_files
from nmt.score import DEFAULT_MAX_LENGTH
from nmt.search_rules import length_penalty

SEPARATOR = "|||"
ALIGNMENT = re.compile(r"(\d+-\d+(\s+\d+-\d+)*)?")  # --alignments' field: 'i-j' pairs, none for an empty line
#: Bytes of an n-best line by default: twice those of a line of the default --max-input-tokens (4 x
#: the default data.max_length), as the line also holds a score and, with --alignments, one pair per
#: target piece.
NBEST_LINE_BYTES = 2 * 4 * DEFAULT_MAX_LENGTH * BYTES_PER_TOKEN


class Entry(NamedTuple):
    """One hypothesis of the n-best list, with its line number there (1-based)."""

    line: int
    text: str


@dataclass
class Candidate:
    """One hypothesis of one source line, with the scores reranking gives it."""

    text: str
    forward: float  # log P(y | x), EOS included
    pieces: int  # forward target pieces, EOS included
    channel: float  # log P(x | y), EOS included (0 without a channel run)
    source_pieces: int  # the channel's target (the source line) pieces, EOS included (1 without one)

    def score(self, weight: float, alpha: float) -> float:
        return self.forward / length_penalty(self.pieces, alpha) + weight * self.channel / self.source_pieces


def nbest_fields(line: str, where: str) -> tuple[int, str, float]:
    """(input line, hypothesis, score) of ``i ||| hypothesis ||| score [||| alignment]``. The number is before
    the first separator and the score after the last (or before an alignment, ``--alignments``' ``i-j`` pairs),
    so a hypothesis may itself hold ``|||``, as a model's output can."""
    fields = line.split(SEPARATOR)
    if len(fields) >= 4 and ALIGNMENT.fullmatch(fields[-1].strip()) and not is_number(fields[-1]):
        fields = fields[:-1]
    if len(fields) < 3:
        raise DataError(where, "expected 'i ||| hypothesis ||| score' (nmt translate --nbest K)")
    try:
        return int(fields[0]), SEPARATOR.join(fields[1:-1]).strip(), float(fields[-1])
    except ValueError:
        raise DataError(where, f"expected an input line number and a score, got {fields[0].strip()!r} and "
                               f"{fields[-1].strip()!r}") from None


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_nbest(path: Path, sources: int, encoding_errors: str = "strict",
               max_bytes: int = NBEST_LINE_BYTES) -> list[list[Entry]]:
    """The hypotheses of each of ``sources`` input lines, in the list's order. Entries the search
    padded with (empty, scored -inf: it found fewer than K) are dropped; a line without any hypothesis
    is an error naming the file and line, as is a line that is not ``i ||| text ||| score`` or one
    longer than ``max_bytes``."""
    nbest: list[list[Entry]] = [[] for _ in range(sources)]
    seen = [False] * sources
    previous = -1
    lines = iter_bounded_lines(path, max_bytes, "--max-input-tokens", encoding_errors)
    for number, line in enumerate(lines, start=1):
        index, text, score = nbest_fields(line, f"{path}:{number}")
        if not 0 <= index < sources:
            raise DataError(f"{path}:{number}", f"input line {index} is not among the {sources} source lines "
                                                "(0-based)")
        if index < previous:
            raise DataError(f"{path}:{number}", f"input line {index} after {previous}: the list is out of order")
        previous, seen[index] = index, True
        if score != float("-inf"):
            nbest[index].append(Entry(number, text))
    missing = next((i for i, found in enumerate(seen) if not found), None)
    if missing is not None:
        raise DataError(path, f"no hypothesis for input line {missing} (0-based) of {sources}")
    return nbest


def forced_log_probs(run_dirs: Sequence[Path], checkpoint: str, sources: list[str], targets: list[str],
                     batch_tokens: int, device: str, option: str = "--run", max_tokens: int | None = None,
                     locations: Sequence[tuple[str, str]] = ()) -> tuple[list[float], list[int]]:
    """Per pair, the log-probability of the target given the source under the runs as one mixture
    (each run's token log-probabilities combined with :func:`mean_probability`), and its pieces.
    The runs are loaded as ``nmt translate`` loads an ensemble, so they must share one vocabulary.
    A side longer than ``max_tokens`` is an error at its entry of ``locations`` (see :func:`score_lines`)."""
    from nmt.score import score_lines
    from nmt.translate import load_translator

    model = load_translator(run_dirs, checkpoint, device)
    tasks = list(model.members) if isinstance(model, Ensemble) else [model]
    for run_dir, task in zip(run_dirs, tasks):
        if not hasattr(task, "target_log_probs"):
            raise UserError(run_dir, f"task '{task.recipe.spec.task}' cannot score a translation; nmt rerank "
                                     "needs seq2seq runs")
    members = [score_lines(task, sources, targets, batch_tokens, max_tokens=max_tokens, locations=locations)
               for task in tasks]
    totals, pieces = [], []
    for scored in zip(*members):
        lengths = {len(s.token_logprobs) for s in scored}
        if len(lengths) > 1:  # the same pieces, split differently (another sentencepiece model)
            raise UserError(option, "the runs split a line into different pieces; they must share one tokenizer")
        tokens = torch.tensor([s.token_logprobs for s in scored], dtype=torch.float64)  # [runs, pieces]
        totals.append(float(mean_probability(list(tokens)).sum()))
        pieces.append(lengths.pop())
    return totals, pieces


def score_candidates(nbest: list[list[Entry]], sources: list[str], run_dirs: Sequence[Path],
                     channel_dirs: Sequence[Path], checkpoint: str, channel_checkpoint: str, batch_tokens: int,
                     device: str, max_tokens: int | None = None,
                     names: tuple[str, str] = ("<input>", "<nbest>")) -> list[list[Candidate]]:
    """Each hypothesis with its forward and channel scores. Empty source lines are left out of the
    scoring (their translation is empty). A source or hypothesis longer than ``max_tokens`` is an
    error naming its line in the input or the n-best list (``names``: their files)."""
    pairs = [(i, entry) for i, entries in enumerate(nbest) if sources[i].strip() for entry in entries]
    srcs, hyps = [sources[i] for i, _ in pairs], [entry.text for _, entry in pairs]
    where = [(f"{names[0]}:{i + 1}", f"{names[1]}:{entry.line}") for i, entry in pairs]
    forward, pieces = (forced_log_probs(run_dirs, checkpoint, srcs, hyps, batch_tokens, device, "--run", max_tokens,
                                        where) if pairs else ([], []))
    channel, source_pieces = (forced_log_probs(channel_dirs, channel_checkpoint, hyps, srcs, batch_tokens, device,
                                               "--channel", max_tokens, [(h, s) for s, h in where])
                              if pairs and channel_dirs else ([0.0] * len(pairs), [1] * len(pairs)))
    candidates: list[list[Candidate]] = [[] for _ in nbest]
    for (i, entry), f, n, c, m in zip(pairs, forward, pieces, channel, source_pieces):
        candidates[i].append(Candidate(entry.text, f, n, c, m))
    return candidates


def pick(candidates: list[list[Candidate]], weight: float, alpha: float) -> list[str]:
    """Each line's best candidate (the first of equals, so the search's order breaks ties); an empty
    line for a line without candidates (an empty source)."""
    return [max(line, key=lambda c: c.score(weight, alpha)).text if line else "" for line in candidates]


def parse_grid(option: str, text: str, low: float, high: float) -> list[float]:
    """A comma-separated list of finite numbers within [low, high]."""
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise UserError(option, f"expected comma-separated numbers, got {item.strip()!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise UserError(option, f"expected numbers from {low:g} to {high:g}, got {item.strip()}")
        values.append(value)
    return values


def rerank_file(nbest_path: Path, input_path: Path, run_dirs: Sequence[Path], channel_dirs: Sequence[Path] = (),
                checkpoint: str = "best", channel_checkpoint: str = "best", weights: Sequence[float] = (0.0,),
                alphas: Sequence[float] = (0.6,), ref_path: Path | None = None, output_path: Path | None = None,
                batch_tokens: int = 4000, encoding_errors: str = "strict", device: str = "auto",
                max_input_tokens: int | None = None) -> tuple[float, float, float | None]:
    """Rerank ``nbest_path`` (hypotheses of ``input_path``'s lines) and write one line per input line.

    With ``ref_path``, every (weight, alpha) is scored by corpus BLEU against it, a table goes to
    stderr, and the best is written; without it, ``weights`` and ``alphas`` must hold one value each.
    A source or hypothesis longer than ``max_input_tokens`` (default 4 x the first forward run's
    ``data.max_length``) is an error naming its file and line, as in ``nmt score``; so is a line of any
    input file over the byte cap that goes with it (the reference is read under it too).
    Returns the (weight, alpha) written and, with a reference, its BLEU."""
    from nmt.metrics import score
    from nmt.score import input_token_limit

    refuse_same_file(output_path, nbest_path, input_path, ref_path)
    refuse_run_files(output_path, [*run_dirs, *channel_dirs], checkpoint)
    refuse_run_files(output_path, (), channel_checkpoint)
    if ref_path is None and (len(weights) != 1 or len(alphas) != 1):
        raise UserError("--ref", "several weights or alphas are tried only against a reference (--ref)")
    if not channel_dirs and any(w != 0 for w in weights):
        raise UserError("--channel", "a channel weight needs a channel run (--channel RUN)")
    max_tokens = input_token_limit(run_dirs[0], max_input_tokens)
    max_bytes = max_tokens * BYTES_PER_TOKEN

    def read(path: Path) -> list[str]:
        return list(iter_bounded_lines(path, max_bytes, "--max-input-tokens", encoding_errors))

    sources = read(input_path)
    if not sources:
        raise DataError(input_path, "file is empty")
    references = None
    if ref_path is not None:
        references = read(ref_path)
        if len(references) != len(sources):
            raise DataError(ref_path, f"line count differs from {input_path} ({len(references)} vs {len(sources)})")
    # an n-best line holds a hypothesis (up to max_tokens, checked once tokenised), its score and
    # with --alignments one pair per target piece: twice the bytes of a line is ample
    nbest = read_nbest(nbest_path, len(sources), encoding_errors, 2 * max_bytes)
    candidates = score_candidates(nbest, sources, run_dirs, channel_dirs, checkpoint, channel_checkpoint,
                                  batch_tokens, device, max_tokens, (str(input_path), str(nbest_path)))
    best: tuple[float, float, float | None] = (weights[0], alphas[0], None)
    if references is not None:
        click.echo(f"{'weight':>8} {'alpha':>6} {'BLEU':>7}", err=True)
        for weight in weights:
            for alpha in alphas:
                bleu = score(pick(candidates, weight, alpha), [references], ("bleu",))["bleu"].score
                click.echo(f"{weight:8g} {alpha:6g} {bleu:7.2f}", err=True)
                if best[2] is None or bleu > best[2]:
                    best = (weight, alpha, bleu)
        click.echo(f"chosen: --weight {best[0]:g} --alpha {best[1]:g} (BLEU {best[2]:.2f})", err=True)
    with open_output(output_path) as out:
        for line in pick(candidates, best[0], best[1]):
            out.write(line + "\n")
    return best
