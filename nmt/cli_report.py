"""How ``nmt`` reports what went wrong: one line on stderr and an exit code, never a traceback unless
``--debug`` asks for it (:func:`nmt.cli.main` maps each kind of failure to one of these)."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import nmt
from nmt.io import SPACE_ERRNOS, describe


def say(message: str) -> None:
    """Write one error line to stderr; a closed or broken stderr (``nmt ... 2>&-``) must not turn
    the error into a second, uglier one: the exit code still tells what happened."""
    try:
        stream = sys.stderr
        if stream is None or getattr(stream, "closed", False):
            return
        stream.write(message + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def thread_failure(args) -> None:
    """A full disk in a library's background thread (TensorBoard's event writer) is one line, not a
    traceback printed beside the command's own one-line error."""
    if isinstance(args.exc_value, OSError) and args.exc_value.errno in SPACE_ERRNOS:
        where = args.exc_value.filename or (args.thread.name if args.thread else "a background thread")
        say(f"nmt: warning: {where}: cannot write ({describe(args.exc_value)})")
    else:
        threading.__excepthook__(args)


def caller_outside_nmt(exc: BaseException) -> str | None:
    """``file:line`` of the innermost frame of ``exc``'s traceback outside nmt, the standard library and the
    installed packages: the plugin that raised it; None where there is none."""
    import sysconfig
    import traceback

    ours = (str(Path(nmt.__file__).parent), sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
            sysconfig.get_paths()["platlib"])
    frames = traceback.extract_tb(exc.__traceback__)
    outside = [f for f in frames if not f.filename.startswith(ours) and not f.filename.startswith("<")]
    return f"{outside[-1].filename}:{outside[-1].lineno}" if outside else None


def failure(exc: Exception, debug: bool) -> int:
    """A runtime failure, not the user's doing: one line and exit 1 (``--debug``: the traceback)."""
    if debug:
        raise exc
    say(f"nmt: error: {type(exc).__name__}: {exc} (run with --debug for the traceback)")
    return 1
