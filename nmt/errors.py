"""Every error the user can cause, in one place.

The CLI turns a :class:`UserError` into one line, ``nmt: <where>: <what>``, and exit code 2;
anything else is a runtime failure (exit code 1). Tracebacks appear only with ``--debug``.
"""
from __future__ import annotations

import reprlib

QUOTE_LIMIT = 80  # characters of a user's value echoed in a message


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters with ``...``: one readable line, however big the input."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict, _repr.maxset = 3, 6, 6, 6, 6
_repr.maxstring = _repr.maxother = _repr.maxlong = QUOTE_LIMIT


def closest(word, choices) -> str | None:
    """The choice ``word`` most likely meant, for a "did you mean" hint: a close spelling, else one that
    differs in case only (``trainer.MAX_STEPS``, which no close spelling of mixed case reaches); None."""
    import difflib

    word, choices = str(word)[:100], [str(c) for c in choices]
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return close[0]
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1)
    return lowered[close[0]] if close else None


def quote(value, limit: int = QUOTE_LIMIT) -> str:
    """The repr of a user's value for a message, at most ``limit`` characters.

    reprlib stops at a few levels and items, so a value built from nested YAML aliases (billions of
    items by reference) is never walked in full; ``repr`` of it would print hundreds of megabytes.
    """
    try:
        text = _repr.repr(value)
    except ValueError:  # an int beyond Python's int-to-str digit limit
        text = f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else f"<{type(value).__name__}>"
    return shorten(text, limit)


class UserError(Exception):
    """A problem the user can fix: a recipe, a command line, a data file."""

    exit_code = 2
    quiet = False  # said by another process of the same command (a distributed run's first one on this node)

    def __init__(self, where: str | None, what: str):
        self.where = str(where) if where is not None else None
        self.what = what
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.where}: {self.what}" if self.where else self.what

    def __reduce__(self):  # raised in a worker process, re-raised in the parent (nmt prepare)
        return self.__class__, (self.where, self.what)


class RecipeError(UserError):
    """A recipe file or a command-line override is malformed or invalid."""


class PluginError(UserError):
    """A plugin is unknown, registered twice or cannot be loaded."""


class DataError(UserError):
    """A data file is missing, unreadable or malformed (``where`` is ``file:line``)."""


class RunError(UserError):
    """A run directory or checkpoint is missing, incompatible or unsafe to load."""


class RequestError(UserError):
    """An HTTP request to ``nmt serve`` is malformed, too large or out of bounds; ``status`` is the
    HTTP status it is answered with (``where`` names the JSON field at fault)."""

    def __init__(self, status: int, where: str | None, what: str):
        self.status = status
        super().__init__(where, what)

    def __reduce__(self):
        return self.__class__, (self.status, self.where, self.what)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
