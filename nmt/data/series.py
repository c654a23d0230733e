"""Numeric time series: a CSV reader, chronological splits and sliding windows.

Follow one series from a file to a batch: :func:`read_series` reads the numeric columns (naming the
file and row of anything that is not a finite number); :func:`split_rows` cuts the rows into
train / valid / test in time order; a :class:`~nmt.data.scaling.Scaler` is fitted on the training rows
alone and saved in the run directory; :func:`window_origins` lists the windows whose targets lie inside
one split (inputs may reach back into earlier rows, never forward); :class:`WindowDataset` cuts them lazily.
"""
from __future__ import annotations

import csv
import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from nmt.data.epoch_resume import ResumableEpochs
from nmt.data.text import capped_lines, iter_stream, open_binary
from nmt.errors import DataError, shorten

SPLITS = ("train", "valid", "test")


@dataclass
class Series:
    """Rows of a numeric CSV: ``values`` [N, C] float64 in ``columns`` order; ``rows`` are 1-based file lines."""

    path: str
    columns: list[str]
    values: np.ndarray
    times: list[str]
    rows: list[int]

    def __len__(self) -> int:
        return len(self.values)

    def where(self, index: int) -> str:
        """``path:line`` of row ``index`` (for error messages)."""
        return f"{self.path}:{self.rows[index]}" if self.rows else str(self.path)


#: Bytes of one CSV line: a number takes a few dozen bytes, so this holds a row of tens of thousands of
#: columns, yet a file without line breaks (/dev/zero, a 200 MB line of commas) is refused after 1 MiB,
#: never held whole.
MAX_LINE_BYTES = 1 << 20


def read_series(path, columns: Sequence[str], time_column: str | None = None,
                means: dict[str, Sequence[str]] | None = None, start: str | None = None, end: str | None = None,
                encoding_errors: str = "strict", stream=None, max_line_bytes: int = MAX_LINE_BYTES) -> Series:
    """Read ``columns`` (plus derived ``means``: name -> columns averaged per row) from a CSV with a header.

    With ``time_column``, rows outside ``start <= time < end`` are dropped and the rows must be in increasing
    time order; times compare as numbers or as dates and times (:func:`time_key`), and a bound that is neither
    is a :class:`ValueError` (:func:`parse_time_bound`). ``stream`` (an open binary stream,
    e.g. stdin's buffer) is read instead of opening ``path``, which then only names it in errors. Lines are decoded
    one by one (an invalid byte names its line) and a line over ``max_line_bytes`` is a :class:`DataError`.
    Every kept value must be a finite number: a missing column, an empty cell, NaN or Inf is a
    :class:`DataError` naming ``path:line``.
    """
    means = dict(means or {})
    needed = [c for c in columns if c not in means] + [c for cols in means.values() for c in cols]
    start_bound, end_bound = (parse_time_bound(b) if b is not None else None for b in (start, end))
    with (open_binary(path) if stream is None else _borrowed(stream)) as binary:
        reader = csv.reader(_csv_lines(binary, str(path), encoding_errors, max_line_bytes))
        header = _checked_header(reader, path, needed, means, time_column)
        index = {name: header.index(name) for name in dict.fromkeys(needed)}
        time_index = header.index(time_column) if time_column else None
        try:
            values, times, rows = _read_rows(reader, path, header, columns, means, index, time_index,
                                             (start, start_bound), (end, end_bound))
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}", f"malformed CSV ({exc})") from None
    if not values:
        span = f" between {start or 'the start'} and {end or 'the end'}" if start or end else ""
        raise DataError(path, f"no data rows{span}")
    return Series(str(path), list(columns), np.asarray(values, dtype=np.float64), times, rows)


def read_header(path, means: dict[str, Sequence[str]], needed: Sequence[str], time_column: str | None,
                encoding_errors: str = "strict", max_line_bytes: int = MAX_LINE_BYTES) -> list[str]:
    """The header row of a series CSV, checked as :func:`read_series` checks it (a recipe's check reads no more)."""
    with open_binary(path) as binary:
        reader = csv.reader(_csv_lines(binary, str(path), encoding_errors, max_line_bytes))
        try:
            return _checked_header(reader, path, needed, means, time_column)
        except csv.Error as exc:
            raise DataError(f"{path}:1", f"malformed CSV ({exc})") from None


def _checked_header(reader, path, needed: Sequence[str], means: dict[str, Sequence[str]],
                    time_column: str | None) -> list[str]:
    """The header row: every needed column once, and no derived (``means``) column that is also a real one."""
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(f"{path}:1", "file is empty; expected a header row of column names") from None
    for name in needed + ([time_column] if time_column else []):
        if name not in header:
            raise DataError(f"{path}:1", f"missing column '{name}'; the header has: "
                                         f"{shorten(', '.join(header), 200)}")
    for name in dict.fromkeys(needed + ([time_column] if time_column else [])):
        if header.count(name) > 1:  # header.index would silently take the first
            where = ", ".join(str(i + 1) for i, h in enumerate(header) if h == name)
            raise DataError(f"{path}:1", f"column '{name}' appears {header.count(name)} times in the header "
                                         f"(columns {where}); rename them apart")
    for name in means:
        if name in header:  # the mean would silently stand in for the file's own column of that name
            raise DataError(f"{path}:1", f"data.means.{name}: '{name}' is a column of the file already; "
                                         "give the derived column another name")
    return header


def _read_rows(reader, path, header, columns, means, index, time_index, start, end):
    """The kept rows after the header: (values, times, line numbers). ``start`` and ``end`` are each a pair
    (the bound as written, its :class:`TimeBound` or None)."""
    values, times, rows = [], [], []
    last_key = None
    for record in reader:
        line = reader.line_num
        if not record or all(not f.strip() for f in record):
            continue  # blank lines (a trailing newline) are not rows
        if len(record) != len(header):
            raise DataError(f"{path}:{line}", f"{len(record)} fields, expected {len(header)} as in the header")
        time = record[time_index].strip() if time_index is not None else ""
        if time_index is not None:
            key = time_key(time)
            if last_key is not None and key[0] != last_key[0]:
                raise DataError(f"{path}:{line}", f"time '{time}' is {TIME_KINDS[key[0]]}, the rows before it "
                                                  f"{TIME_KINDS[last_key[0]]}; a time column holds one kind")
            if ((start[1] is not None and key < start[1].key(key, f"{path}:{line}", "data.start"))
                    or (end[1] is not None and key >= end[1].key(key, f"{path}:{line}", "data.end"))):
                continue
            if times and key <= last_key:
                raise DataError(f"{path}:{line}", f"time '{time}' does not follow '{times[-1]}'; "
                                                  "rows must be in increasing time order")
            last_key = key
        parsed = {name: _number(record[i], f"{path}:{line}", name) for name, i in index.items()}
        for name, cols in means.items():
            parsed[name] = sum(parsed[c] for c in cols) / len(cols)
        values.append([parsed[c] for c in columns])
        times.append(time)
        rows.append(line)
    return values, times, rows


def _csv_lines(binary, name: str, encoding_errors: str, max_bytes: int) -> Iterator[str]:
    """The decoded lines of a binary stream for :mod:`csv`, each at most ``max_bytes``: a longer one is an error
    at once (a series row cut short is no row; ``/dev/zero`` has no end to skip to). A lone CR ends a line too
    (old Mac exports read as before, when the file was opened with universal newlines); the csv reader counts
    the pieces."""
    cut: set[int] = set()
    lines = capped_lines(binary, max_bytes, cut, skip_rest=False)
    for number, line in enumerate(iter_stream(lines, name, encoding_errors), start=1):
        if cut:
            hint = "; the file has CR (\\r) line endings, not \\n: convert them (tr '\\r' '\\n')" if "\r" in line else ""
            raise DataError(f"{name}:{number}", f"line is longer than {max_bytes} bytes{hint}")
        yield from line.split("\r") if "\r" in line else (line,)


#: A date, optionally with a time: ``2020-01-03``, ``2020-1-3``, ``2020/01/03 12:00``, ``2020-01-03T12:00:05.5``,
#: ``2020-01`` (the first of the month). Anything else ISO 8601 (a time zone, a week date) goes to fromisoformat.
_DATE = re.compile(r"(\d{4})[-/](\d{1,2})(?:[-/](\d{1,2}))?"
                   r"(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?)?")
TIME_KINDS = ("a number", "a date", "text")  # by the first element of a time_key


def parse_date(text: str) -> datetime | None:
    """``text`` as a date and time (naive; one with a time zone in UTC), or None when it is not one."""
    match = _DATE.fullmatch(text)
    try:
        if match:
            year, month, day, hour, minute, second, fraction = match.groups()
            return datetime(int(year), int(month), int(day or 1), int(hour or 0), int(minute or 0),
                            int(second or 0), int((fraction or "0").ljust(6, "0")))
        value = datetime.fromisoformat(text)
    except ValueError:  # no such date (2020-02-30), or no ISO form at all
        return None
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo is not None else value


def time_key(time: str) -> tuple:
    """A time as it compares: ``(0, number)`` for numbers (9 < 10), ``(1, datetime)`` for dates and times (so
    2020-1-9 < 2020-1-10, and 2020/01/03 is 2020-01-03), else ``(2, text)``."""
    try:
        return (0, float(time))
    except ValueError:
        pass
    date = parse_date(time)
    return (1, date) if date is not None else (2, time)


@dataclass(frozen=True)
class TimeBound:
    """``data.start`` or ``data.end``: a number, a date, or both (2020 is the number and the year's first day)."""

    text: str
    number: float | None
    date: datetime | None

    def key(self, time: tuple, where: str, name: str) -> tuple:
        """This bound as a :func:`time_key` of the kind of ``time`` (a row's time key), to compare with it."""
        if time[0] == 0 and self.number is not None:
            return (0, self.number)
        if time[0] == 1 and self.date is not None:
            return (1, self.date)
        raise DataError(where, f"the time is {TIME_KINDS[time[0]]}; {name} '{self.text}' is "
                               f"{TIME_KINDS[0 if self.number is not None else 1]} and cannot bound it")


def parse_time_bound(text: str) -> TimeBound:
    """A time bound from a recipe; a :class:`ValueError` when it is neither a number nor a date."""
    text = str(text).strip()
    try:
        number = float(text)
        number = number if math.isfinite(number) else None
    except ValueError:
        number = None
    date = parse_date(text)
    if date is None and re.fullmatch(r"\d{4}", text):
        date = datetime(int(text), 1, 1)
    if number is None and date is None:
        raise ValueError(f"expected a date (2020-01-03, 2020-01-03 12:00) or a number, got {text[:60]!r}")
    return TimeBound(text, number, date)


class _borrowed:
    """A context manager that leaves a stream it did not open (stdin) open."""

    def __init__(self, stream):
        self.stream = stream

    def __enter__(self):
        return self.stream

    def __exit__(self, *exc):
        return False


def _number(text: str, where: str, column: str) -> float:
    text = text.strip()
    if not text:
        raise DataError(where, f"column '{column}' is empty; expected a number")
    try:
        value = float(text)
    except ValueError:
        raise DataError(where, f"column '{column}' is not a number: {text[:40]!r}") from None
    if not math.isfinite(value):
        raise DataError(where, f"column '{column}' is {text}; every value must be a finite number")
    return value


# --- splits ---------------------------------------------------------------------------------

def split_rows(n_rows: int, sizes: dict[str, float | int], where: str = "data.split") -> dict[str, tuple[int, int]]:
    """Consecutive row ranges ``[lo, hi)`` for train, valid and test, in time order.

    A size is a row count (an int) or a fraction of all rows (a float <= 1); rows after the last
    split are unused. Earlier rows always go to earlier splits, so no split sees a later one's rows.
    """
    bounds, lo = {}, 0
    for name in SPLITS:
        size = sizes.get(name, 0)
        count = int(round(size * n_rows)) if isinstance(size, float) else int(size)
        bounds[name] = (lo, min(lo + count, n_rows))
        lo += count
    if lo > n_rows + 1:  # allow rounding of fractions by one row
        raise DataError(where, f"the splits need {lo} rows but the series has {n_rows}")
    if bounds["train"][1] - bounds["train"][0] < 2:
        raise DataError(where, f"the training split has {bounds['train'][1] - bounds['train'][0]} rows")
    return bounds


# --- windows --------------------------------------------------------------------------------

@dataclass(frozen=True)
class WindowShape:
    """A window at origin ``t`` (its last input row): inputs ``[t-lookback+1, t]``, targets ``[t+first, t+last]``."""

    lookback: int
    first: int  # target offset of the first target row relative to the origin
    last: int

    @property
    def target_length(self) -> int:
        return self.last - self.first + 1


def window_origins(bounds: tuple[int, int], shape: WindowShape, stride: int = 1,
                   inputs_within: bool = False) -> np.ndarray:
    """Origins of the windows whose target rows all lie in ``bounds`` = ``[lo, hi)``.

    Inputs may start before ``lo`` (the past of a validation or test split is known) unless
    ``inputs_within``; they never reach past ``hi``, so no window of a split reads a later split.
    """
    lo, hi = bounds
    first_origin = max(shape.lookback - 1, lo - shape.first)
    if inputs_within:
        first_origin = max(first_origin, lo + shape.lookback - 1)
    last_origin = min(hi - 1 - shape.last, hi - 1)
    if last_origin < first_origin:
        return np.zeros(0, dtype=np.int64)
    return np.arange(first_origin, last_origin + 1, stride, dtype=np.int64)


class WindowDataset(Dataset):
    """``(inputs [lookback, C_in], targets [T, C_out])`` for each origin, cut lazily from a scaled series."""

    def __init__(self, values: np.ndarray, input_idx: Sequence[int], target_idx: Sequence[int],
                 shape: WindowShape, origins: np.ndarray):
        self.values = torch.as_tensor(values, dtype=torch.float32)  # [N, C]
        self.input_idx = torch.as_tensor(list(input_idx))
        self.target_idx = torch.as_tensor(list(target_idx))
        self.shape, self.origins = shape, origins

    def __len__(self) -> int:
        return len(self.origins)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        t, s = int(self.origins[i]), self.shape
        x = self.values[t - s.lookback + 1: t + 1].index_select(1, self.input_idx)  # [L, C_in]
        y = self.values[t + s.first: t + s.last + 1].index_select(1, self.target_idx)  # [T, C_out]
        return x, y

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every window stacked: ``([W, L, C_in], [W, T, C_out])``."""
        if not len(self):
            return (torch.zeros(0, self.shape.lookback, len(self.input_idx)),
                    torch.zeros(0, self.shape.target_length, len(self.target_idx)))
        xs, ys = zip(*(self[i] for i in range(len(self))))
        return torch.stack(xs), torch.stack(ys)


class WindowSampler(DistributedSampler):
    """This device's share of the training windows, reshuffled each epoch from ``seed + epoch``, resumable mid-epoch.

    A :class:`DistributedSampler` on one device too (one replica): an epoch's order depends on the seed and the
    epoch alone, not on how many epochs this process has drawn, so a resumed process draws the order the
    stopped one had (a DataLoader's own shuffling draws from one generator, so it began again at epoch 0's
    order). Lightning calls ``set_epoch`` on ``dataloader.sampler`` every epoch."""

    def __init__(self, dataset, batch_size: int, seed: int, num_replicas: int | None = None, rank: int | None = None):
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not distributed:  # DistributedSampler would ask the missing process group for them
            num_replicas, rank = num_replicas or 1, rank or 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Make the next pass over ``epoch`` skip the batches a resumed run has already trained on."""
        self._resume = (epoch, batches_done)

    def __iter__(self) -> Iterator[int]:
        skip = self._resume[1] if self._resume is not None and self._resume[0] == self.epoch else 0
        self._resume = None  # one pass only: the epochs after it run whole
        # Every batch but an epoch's last holds batch_size windows, so the trained ones are a prefix.
        return itertools.islice(super().__iter__(), skip * self.batch_size, None)


class WindowDataModule(ResumableEpochs, pl.LightningDataModule):
    """Shuffled training windows and ordered validation windows.

    The training loader shards itself with a :class:`WindowSampler` (the Trainer runs with
    ``use_distributed_sampler=False``); every rank validates on all windows. Like
    :class:`~nmt.data.batching.BucketedDataModule`, its ``state_dict`` (saved in every checkpoint) records
    how far training got in the current epoch's order, so a run resumed from a mid-epoch checkpoint trains
    the rest of that epoch's batches, each once, instead of starting the epoch over."""

    def __init__(self, train: WindowDataset, valid: WindowDataset, batch_size: int, valid_batch_size: int,
                 seed: int, num_workers: int = 0):
        super().__init__()
        self.train_set, self.valid_set = train, valid
        self.batch_size, self.valid_batch_size = batch_size, valid_batch_size
        self.seed, self.num_workers = seed, num_workers

    def train_dataloader(self) -> DataLoader:
        sampler = self.follow(WindowSampler(self.train_set, self.batch_size, self.seed))
        # The generator only seeds the workers; without one the DataLoader would draw from torch's global RNG.
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler,
                          generator=torch.Generator().manual_seed(self.seed), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.valid_set, batch_size=self.valid_batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
