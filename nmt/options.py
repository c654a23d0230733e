"""The options the ``nmt`` commands share: bounded numbers, their bounds, ``-`` for standard input and
output, and forced decoding's option set (:mod:`nmt.cli` declares the commands)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import click

from nmt.errors import UserError, quote, shorten

ENCODING_ERRORS = click.Choice(["strict", "replace"])

# Search bounds: beyond them the work per sentence grows past any machine (a beam of 100000 asks for
# terabytes; a length ratio of 1e30 or NaN gives no output at all), so they are refused up front.
MAX_BEAM = 100
MAX_LENGTH_RATIO = 10.0
MAX_ALPHA = 10.0
MAX_INPUT_TOKENS = 100_000
# nmt prepare: each worker is a forked process holding a tokenizer and chunks in flight; more than two
# per core only adds memory and contention
MAX_PREPARE_WORKERS = 2 * (os.cpu_count() or 1)


def within(kind: type, value, low: float, high: float, why_high: str = ""):
    """``value`` (a number or its text) as a finite ``kind`` within [low, high], or a ValueError whose text is
    the message: ``expected an integer, got 'x'``, ``expected at least 1, got -1``. Click's options
    (:class:`Bounded`) and the benchmarks' argparse (:func:`nmt.bench.bounded`) say it in the same words."""
    if isinstance(value, kind) and not isinstance(value, bool):
        number = value
    else:
        try:
            number = kind(str(value).strip())
        except ValueError:  # also an integer beyond Python's digit limit
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}, got {quote(value)}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {shorten(value)}")
    if number < low:
        raise ValueError(f"expected at least {low:g}, got {shorten(value)}")
    if number > high:
        raise ValueError(f"expected at most {high:g}{why_high}, got {shorten(value)}")
    return number


class Bounded(click.ParamType):
    """A finite int or float within [low, high]; anything else is ``nmt: --option: expected ...``.

    Click's own ranges accept ``nan`` and ``inf`` and phrase errors their own way; this gives the
    one-line form every other nmt error has."""

    def __init__(self, kind: type, low: float, high: float, why_high: str = ""):
        self.kind, self.low, self.high, self.why_high = kind, low, high, why_high
        self.name = kind.__name__

    def convert(self, value, param, ctx):
        where = max(param.opts, key=len) if param is not None else None
        try:
            return within(self.kind, value, self.low, self.high, self.why_high)
        except ValueError as exc:
            raise UserError(where, str(exc)) from None


CHECKPOINT_HELP = "best, last, averaged (written by nmt average) or a checkpoint path."


def dash_is_standard(ctx, param, value: Path | None) -> Path | None:
    """``-i -`` and ``-o -`` are standard input and output, as the option's default (the Unix convention)."""
    return None if value is not None and str(value) == "-" else value


STDIN_FILE = Path("/dev/stdin")


def dash_is_stdin_file(ctx, param, value):
    """An input option without a stdin default (``--hyp``, ``--src``, ``--nbest`` ...): ``-`` is standard input,
    read through /dev/stdin as the file it names. One option may take it: there is one standard input."""
    values = value if isinstance(value, tuple) else (value,)
    dashes = sum(1 for v in values if v is not None and str(v) == "-")
    if not dashes:
        return value
    taken = ctx.meta.get("nmt.stdin")
    if dashes > 1 or taken:
        raise click.BadParameter(f"- (standard input) is already read by {taken or param.opts[-1]}; "
                                 "give the other inputs as files")
    ctx.meta["nmt.stdin"] = param.opts[-1]
    mapped = tuple(STDIN_FILE if v is not None and str(v) == "-" else v for v in values)
    return mapped if isinstance(value, tuple) else mapped[0]


def forced_decoding_options(command):
    """-o, --batch-size (padded tokens), --max-input-tokens, --encoding-errors and --device: what nmt
    score and nmt rerank share, in this order in their help."""
    options = [
        click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False, path_type=Path),
                     callback=dash_is_standard, help="Output file, written atomically [default: stdout; also -]."),
        click.option("--batch-size", default=4000, show_default=True, type=Bounded(int, 1, 10_000_000),
                     help="Padded tokens per batch."),
        click.option("--max-input-tokens", type=Bounded(int, 1, MAX_INPUT_TOKENS),
                     help="A longer line, on either side, is an error naming its file and line (a score of "
                          "part of a line would be wrong) [default: 4 x the recipe's data.max_length]."),
        click.option("--encoding-errors", default="strict", show_default=True, type=ENCODING_ERRORS,
                     help="What to do with bytes that are not UTF-8."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


