"""``nmt translate``: stream text through a trained run with batched beam search.

Input is read in chunks so memory stays flat however long the input is; within a chunk, lines are
sorted by length into token-count batches and put back in input order before they are written.
Work per line is bounded too: a line is read up to a byte cap and encoded up to a token cap
(``--max-input-tokens``), so one huge line can neither exhaust memory nor hold up the whole job.
"""
from __future__ import annotations

import math
import os
import select
import stat
import sys
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

import click
import torch

from nmt import plugin_checks, search
from nmt.alignment import EOS_PIECE, labels_fit, pharaoh
from nmt.alignment import plot_attention as plot_attention_png
from nmt.data.buckets import search_batches
from nmt.data.text import BYTES_PER_TOKEN, capped_lines
from nmt.ensemble import Ensemble, check_same_vocabulary
from nmt.errors import UserError
from nmt.io import describe, open_output, refuse_same_file
from nmt.runs import load_run, refuse_run_files

CHUNK_LINES = 2000


def encode_lines(task, lines: list[str], name: str = "<input>", first_line: int = 1) -> list[list[int]]:
    """Source token ids per line; an empty or blank line has none. What the tokenizer returns is checked
    (:func:`nmt.plugin_checks.check_ids`), its lines named ``name:N`` from ``first_line``."""
    tokenizer = task.src_tokenizer
    vocab = len(tokenizer)
    return [plugin_checks.check_ids(tokenizer, tokenizer.encode(line), line, f"{name}:{first_line + k}", vocab)
            if line.strip() else [] for k, line in enumerate(lines)]


def output_text(task, tokens: list[int], where: str) -> str:
    """The target text of ``tokens``, checked to be one line of text (:func:`nmt.plugin_checks.check_text`)."""
    return plugin_checks.check_text(task.tgt_tokenizer, task.tgt_tokenizer.decode(tokens), where)


def translate_lines(task, lines: list[str], beam: int, nbest: int, alpha: float, batch_tokens: int,
                    max_length_ratio: float, encoded: list[list[int]] | None = None,
                    attention: bool = False) -> list[list[search.Hypothesis]]:
    """Hypotheses for each line, in input order; an empty or blank line gets none. With ``attention``
    each hypothesis carries its attention weights (``Hypothesis.attention``).

    Batched by :func:`nmt.data.buckets.search_batches`: at most ``batch_tokens * BUDGET_BEAM`` hypothesis
    tokens a batch (sentences x longest source x beam, at least BUDGET_BEAM wide), so a wide beam takes
    fewer sentences at a time."""
    if hasattr(task, "translate_lines"):  # an engine with its own search (nmt.onnx_engine.OnnxEngine)
        return task.translate_lines(lines, beam, nbest, alpha, batch_tokens, max_length_ratio, encoded)
    encoded = encode_lines(task, lines) if encoded is None else encoded
    results: list[list[search.Hypothesis]] = [[] for _ in lines]
    device = next(task.parameters()).device
    for batch in search_batches(encoded, beam, batch_tokens):
        src = torch.nn.utils.rnn.pad_sequence([torch.tensor(encoded[j]) for j in batch], batch_first=True,
                                              padding_value=task.src_tokenizer.pad_id).to(device)
        src_len = torch.tensor([len(encoded[j]) for j in batch])
        extra = {"attention": True} if attention else {}  # the searches' own signature unless asked
        if beam == 1 and nbest == 1:
            hyps = [[h] for h in search.greedy_search(task, src, src_len, max_length_ratio, **extra)]
        else:
            hyps = search.beam_search(task, src, src_len, beam, alpha, nbest, max_length_ratio, **extra)
        for j, h in zip(batch, hyps):
            results[j] = h
    return results


def standard_input() -> BinaryIO:
    """The binary standard input; closed (``nmt translate <&-``) is a one-line error, not an AttributeError."""
    stream = sys.stdin
    if stream is None or getattr(stream, "closed", False) or not hasattr(stream, "buffer"):
        raise UserError("<stdin>", "standard input is closed; pass the input with -i FILE")
    return stream.buffer


class LiveInput:
    """Standard input that is a terminal or a pipe, read as it arrives.

    ``readline(limit)`` as on a binary stream, and ``pending()``: whether the next line can be read
    without waiting. A chunk of input is translated as soon as nothing more is pending, so a user at
    a terminal (or a program feeding one line at a time) gets each translation right away, while a
    pipe that is kept full still fills whole chunks. A buffered stream cannot say what it holds, so
    the file descriptor is read directly."""

    def __init__(self, fd: int):
        self.fd, self.buffer, self.eof = fd, b"", False

    def readline(self, limit: int) -> bytes:
        while b"\n" not in self.buffer[:limit] and len(self.buffer) < limit and not self.eof:
            data = os.read(self.fd, 1 << 16)
            self.eof = not data
            self.buffer += data
        end = self.buffer.find(b"\n", 0, limit)
        size = end + 1 if end >= 0 else min(limit, len(self.buffer))
        line, self.buffer = self.buffer[:size], self.buffer[size:]
        return line

    def pending(self) -> bool:
        if self.eof or b"\n" in self.buffer:
            return True
        return bool(select.select([self.fd], [], [], 0)[0])


def read_source(input_path: Path | None, encoding_errors: str, max_bytes: int,
                cut: set[int]) -> tuple[Iterator[str], Callable[[], bool] | None]:
    """Decoded input lines (file or stdin), each read up to ``max_bytes`` (see :func:`capped_lines`),
    and for a terminal or pipe on stdin, whether another line is waiting (see :class:`LiveInput`)."""
    from nmt.data.text import iter_stream, open_binary

    if input_path is None:
        stream = standard_input()
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            live = LiveInput(stream.fileno())
            return iter_stream(capped_lines(live, max_bytes, cut), "<stdin>", encoding_errors), live.pending
        return iter_stream(capped_lines(stream, max_bytes, cut), "<stdin>", encoding_errors), None

    def from_file() -> Iterator[str]:
        with open_binary(input_path) as stream:
            yield from iter_stream(capped_lines(stream, max_bytes, cut), str(input_path), encoding_errors)

    return from_file(), None


def nbest_entries(hyps: list[search.Hypothesis], nbest: int) -> list[search.Hypothesis]:
    """``nbest`` entries: an empty input line gets ``nbest`` empty ones (log-probability 0 of the empty
    translation), a search that found fewer distinct hypotheses is padded with empty ones scored -inf."""
    filler = search.Hypothesis([], 0.0, 0.0) if not hyps else search.Hypothesis([], float("-inf"), float("-inf"))
    return hyps[:nbest] + [filler] * (nbest - len(hyps))


def alignment_field(hyp: search.Hypothesis, alignments: bool) -> str:
    """`` ||| i-j ...`` (the hard alignment of ``hyp``) with ``alignments``, else nothing."""
    return f" ||| {pharaoh(hyp.attention, len(hyp.tokens))}" if alignments else ""


def check_plot_dir(directory: Path) -> None:
    """Refuse a ``--plot-attention`` directory that cannot be created, before the model is loaded and
    without creating anything (:func:`make_plot_dir` creates it once the command is known to proceed)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(directory, "exists and is not a directory (--plot-attention needs a directory)")
    existing = directory
    while not existing.exists() and existing.parent != existing:  # the nearest folder that exists
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(directory, "cannot create the --plot-attention directory (a parent is not a directory)")
    if existing != directory and not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(directory, f"cannot create the --plot-attention directory (permission denied in {existing})")


def make_plot_dir(directory: Path) -> None:
    """Create the ``--plot-attention`` directory (and its parents), once the model is loaded."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(directory, "exists and is not a directory (--plot-attention needs a directory)") from None
    except OSError as exc:
        raise UserError(directory, f"cannot create the --plot-attention directory ({describe(exc)})") from None


def plot_chunk(task, directory: Path, line_no: int, encoded: list[list[int]],
               results: list[list[search.Hypothesis]]) -> list[int]:
    """One heatmap per line of the chunk that has a translation: ``directory/NNNNNN.png`` (line number,
    1-based), the weights of its best hypothesis over the source pieces the model read. The numbers of
    the lines whose heatmap has too many pieces for their labels (:func:`nmt.alignment.labels_fit`)."""
    unlabelled = []
    for k, hyps in enumerate(results):
        if not hyps or not hyps[0].attention:
            continue
        best = hyps[0]
        target = task.tgt_tokenizer.pieces(best.tokens)
        target += [EOS_PIECE] * (len(best.attention) - len(target))  # a row for EOS when it ended with one
        plot_attention_png(Path(directory) / f"{line_no + k + 1:06d}.png", best.attention,
                           task.src_tokenizer.pieces(encoded[k]), target)
        if not (labels_fit(len(encoded[k])) and labels_fit(len(target))):
            unlabelled.append(line_no + k + 1)
    return unlabelled


def format_score(score: float) -> str:
    """A score of ``--nbest`` output: 6 significant digits, so distinct scores stay distinct however
    small (``-1.23457e-05`` under a strong length penalty, where 4 decimals printed ``-0.0000``); ``0``
    for an empty line's entries, ``-inf`` for padding."""
    return f"{score:.6g}"


class LineWarnings:
    """Warnings about some lines of one input: the first such line by name and number when it is met,
    and at the end how many there were in all (when more than one). ``first`` is the first one's warning
    (after ``NAME:LINE: ``), ``total`` the count's (after ``NAME: ``; it may use {count} and {first})."""

    def __init__(self, name: str, first: str, total: str):
        self.name, self.first_text, self.total_text = name, first, total
        self.first: int | None = None
        self.count = 0

    def add(self, numbers: Iterable[int]) -> None:
        """Lines ``numbers`` (1-based) have the condition."""
        numbers = list(numbers)
        if numbers and self.first is None:
            self.first = min(numbers)
            click.echo(f"nmt: warning: {self.name}:{self.first}: {self.first_text}", err=True)
        self.count += len(numbers)

    def finish(self) -> None:
        if self.count > 1:
            click.echo(f"nmt: warning: {self.name}: {self.total_text.format(count=self.count, first=self.first)}",
                       err=True)


class CutLines(LineWarnings):
    """The input lines cut to ``--max-input-tokens`` and their warnings, each line's when its chunk is done.

    ``lines`` collects the numbers (1-based): :func:`read_source` adds those cut by bytes while reading,
    the caller those cut by tokens."""

    def __init__(self, name: str, max_tokens: int, doing: str):  # doing: e.g. "translating"
        super().__init__(name, f"line longer than --max-input-tokens ({max_tokens} tokens); {doing} its first "
                               f"{max_tokens} tokens",
                         f"{{count}} lines in all were cut to {max_tokens} tokens (the first at line {{first}})")
        self.lines: set[int] = set()

    def flush(self, last_line: int) -> set[int]:
        """The numbers of the lines cut up to ``last_line`` (the end of the chunk just done), warned of."""
        numbers = {n for n in self.lines if n <= last_line}
        self.lines -= numbers
        self.add(numbers)
        return numbers


def unlabelled_plots(name: str) -> LineWarnings:
    """The warnings for attention heatmaps drawn with piece indices, their pieces too many to label."""
    return LineWarnings(name, "too many pieces to label in its attention heatmap; its axes show piece indices "
                              "(0-based) instead",
                        "{count} attention heatmaps in all show piece indices instead of labels (the first at line {first})")


def chunks(lines: Iterable[str], size: int, pending: Callable[[], bool] | None = None) -> Iterator[list[str]]:
    """Lists of up to ``size`` lines; with ``pending``, a list also ends when no line is waiting."""
    iterator = iter(lines)
    while True:
        chunk = []
        for line in iterator:
            chunk.append(line)
            if len(chunk) >= size or (pending is not None and not pending()):
                break
        if not chunk:
            return
        yield chunk


def compile_decoder(model, run_dir: Path) -> None:
    """``--compile``: ``model``'s decoder step through ``torch.compile`` (its ``compile_step()``, dynamic
    shapes, as ``model.compile: true`` trains), or a one-line error naming the option."""
    if not callable(getattr(getattr(model, "decoder", None), "compile_step", None)):
        raise UserError("--compile", f"the decoder of {run_dir} has no compile_step; leave out --compile")
    model.decoder.compile_step()


def load_translator(run_dir: Path | Sequence[Path], checkpoint: str = "best", device: str = "auto",
                    engine: str = "torch", onnx_dir: Path | None = None, attention_option: str | None = None,
                    compile_step: bool = False):
    """What ``nmt translate`` searches: a run's task, its ONNX engine, or for several run directories an
    :class:`~nmt.ensemble.Ensemble` of their tasks (each with ``checkpoint``), which must share one
    tokenizer. ``attention_option`` names the option that needs attention weights, if one does.
    ``compile_step``: each decoder's step through ``torch.compile`` (:func:`compile_decoder`), compiled at
    the first batch."""
    run_dirs = [Path(run_dir)] if isinstance(run_dir, (str, Path)) else [Path(r) for r in run_dir]
    if engine == "onnx" and len(run_dirs) > 1:
        raise UserError("--engine", f"onnx translates one run; an ensemble of {len(run_dirs)} runs "
                                    "needs --engine torch")
    if engine == "onnx" and compile_step:
        raise UserError("--compile", "compiles the torch search's decoder step; --engine onnx searches on onnxruntime")
    models = []
    for path in run_dirs:
        if engine == "onnx":  # the export of nmt export --format onnx, searched on onnxruntime without torch
            from nmt.onnx_engine import load_engine

            model = load_engine(path, onnx_dir, checkpoint=checkpoint, device=device)
        else:
            model = load_run(path, checkpoint=checkpoint, device=device)
            if not hasattr(model, "src_tokenizer") or not hasattr(model, "decode_step"):
                raise UserError(path, f"task '{model.recipe.spec.task}' does not translate; use nmt predict")
        if attention_option and not hasattr(model, "decode_step_with_attention"):
            raise UserError(attention_option, f"the model of {path} does not report attention weights")
        if compile_step:
            compile_decoder(model, path)
        if models:
            check_same_vocabulary(models[0], model, run_dirs[0], path)
        models.append(model)
    return models[0] if len(models) == 1 else Ensemble(models)


def translate_file(run_dir: Path | Sequence[Path], checkpoint: str = "best", beam: int = 5, nbest: int = 1,
                   alpha: float = 0.6, batch_tokens: int = 4000, max_length_ratio: float = 2.0,
                   input_path: Path | None = None, output_path: Path | None = None, encoding_errors: str = "strict",
                   device: str = "auto", max_input_tokens: int | None = None, plot_attention: Path | None = None,
                   alignments: bool = False, engine: str = "torch", onnx_dir: Path | None = None,
                   compile_step: bool = False) -> None:
    """Translate ``input_path`` (default stdin) to ``output_path`` (default stdout), one line per line.

    Lines longer than ``max_input_tokens`` (default 4 x the recipe's ``data.max_length``) are cut to
    it, with a warning naming the first such line and a count of the others. ``alignments`` adds
    `` ||| `` and the hard alignment (``i-j``: source piece i, target piece j) to each output line;
    ``plot_attention`` names a directory for one heatmap per non-empty input line (000001.png ...).
    Several run directories are searched as one :class:`nmt.ensemble.Ensemble` (see :func:`load_translator`,
    also for ``compile_step``)."""
    if nbest > beam:
        raise UserError("--nbest", f"must not exceed --beam ({nbest} > {beam})")
    if not (math.isfinite(alpha) and alpha >= 0):  # the CLI checks bounds; this guards Python callers
        raise UserError("--alpha", f"expected a finite number >= 0, got {alpha}")
    if not (math.isfinite(max_length_ratio) and max_length_ratio > 0):
        raise UserError("--max-length-ratio", f"expected a finite number > 0, got {max_length_ratio}")
    if input_path is None:
        standard_input()  # before the model is loaded
    refuse_same_file(output_path, input_path, stdin=input_path is None)
    refuse_run_files(output_path, [run_dir] if isinstance(run_dir, (str, Path)) else run_dir, checkpoint)
    if plot_attention is not None:
        check_plot_dir(plot_attention)
    want_attention = alignments or plot_attention is not None
    attention_option = ("--plot-attention" if plot_attention else "--alignments") if want_attention else None
    if engine == "onnx" and want_attention:  # the export has no attention output: refused before anything is made
        raise UserError(attention_option, "needs attention weights, which --engine onnx does not report; "
                                          "use --engine torch")
    task = load_translator(run_dir, checkpoint, device, engine, onnx_dir, attention_option, compile_step)
    if plot_attention is not None:
        make_plot_dir(plot_attention)
    longest = task.max_length
    max_input_tokens = max_input_tokens or 4 * longest
    name = str(input_path or "<stdin>")
    report, warned = CutLines(name, max_input_tokens, "translating"), False
    unlabelled = unlabelled_plots(name)
    source, pending = read_source(input_path, encoding_errors, max_input_tokens * BYTES_PER_TOKEN, report.lines)
    with open_output(output_path) as out:
        line_no = 0
        for chunk in chunks(source, CHUNK_LINES, pending):
            encoded = encode_lines(task, chunk, name, line_no + 1)
            for k, ids in enumerate(encoded):
                if len(ids) > max_input_tokens:
                    encoded[k] = ids[:max_input_tokens]
                    report.lines.add(line_no + k + 1)
            chunk_cut = report.flush(line_no + len(chunk))
            too_long = next((k for k, ids in enumerate(encoded) if len(ids) > longest
                             and line_no + k + 1 not in chunk_cut), None)
            if too_long is not None and not warned:
                click.echo(f"nmt: warning: {name}:{line_no + too_long + 1}: line is longer than "
                           f"any training sentence ({longest} tokens); translating it anyway", err=True)
                warned = True
            results = translate_lines(task, chunk, beam, nbest, alpha, batch_tokens, max_length_ratio, encoded,
                                      attention=want_attention)
            for k, hyps in enumerate(results):
                if nbest == 1:
                    best = hyps[0] if hyps else search.Hypothesis([], 0.0, 0.0)
                    out.write(output_text(task, best.tokens, f"{name}:{line_no + k + 1}")
                              + alignment_field(best, alignments) + "\n")
                else:  # exactly nbest entries per line, so scripts can read N lines per input
                    for h in nbest_entries(hyps, nbest):
                        text = output_text(task, h.tokens, f"{name}:{line_no + k + 1}")
                        out.write(f"{line_no + k} ||| {text} ||| {format_score(h.score)}"
                                  f"{alignment_field(h, alignments)}\n")
            if plot_attention is not None:
                unlabelled.add(plot_chunk(task, plot_attention, line_no, encoded, results))
            line_no += len(chunk)
            out.flush()
    report.finish()
    unlabelled.finish()
