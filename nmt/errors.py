"""Every error the user can cause, in one place.

The CLI turns a :class:`UserError` into one line, ``nmt: <where>: <what>``, and exit code 2;
anything else is a runtime failure (exit code 1). Tracebacks appear only with ``--debug``.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: a recipe, a command line, a data file."""

    exit_code = 2

    def __init__(self, where: str | None, what: str):
        self.where = str(where) if where is not None else None
        self.what = what
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.where}: {self.what}" if self.where else self.what


class RecipeError(UserError):
    """A recipe file or a command-line override is malformed or invalid."""


class PluginError(UserError):
    """A plugin is unknown, registered twice or cannot be loaded."""


class DataError(UserError):
    """A data file is missing, unreadable or malformed (``where`` is ``file:line``)."""


class RunError(UserError):
    """A run directory or checkpoint is missing, incompatible or unsafe to load."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
