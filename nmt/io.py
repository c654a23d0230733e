"""Writing files without damaging anything: the one helper every writer of nmt goes through.

A regular file (or a symlink to one, resolved) is written to a temporary file beside it and renamed
into place only when complete, so a reader, a crash or a full disk sees the old file or the new one,
never half of either. The new file gets the mode a plain ``open()`` would give it: the old file's
mode when it replaces one, else ``0o666`` less the umask. Anything else (``/dev/null``, ``/dev/full``,
a FIFO, a terminal) is written through, never replaced by a regular file. A SIGTERM while writing
removes the temporary file; the temporary files of a killed process are removed by the next write.
An output that is the input (the same file, through any link) is refused before anything is read.
"""
from __future__ import annotations

import errno
import os
import signal
import stat
import sys
import tempfile
import threading
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import IO, Iterator

from nmt.errors import UserError

#: ``errno`` values a user can fix (space, permissions, names), reported as one line, not a traceback.
USER_ERRNOS = {errno.ENOSPC: "disk full", errno.EFBIG: "file too large", errno.EDQUOT: "disk quota exceeded",
               errno.EACCES: "permission denied", errno.EPERM: "not permitted", errno.EROFS: "read-only file system",
               errno.ENAMETOOLONG: "file name too long", errno.EISDIR: "is a directory",
               errno.ENOTDIR: "a parent is not a directory", errno.ENOENT: "no such directory"}
#: Of those, the ones that may strike any write of a long command (a training's logs, a checkpoint).
SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class Terminated(SystemExit):
    """Raised by the SIGTERM handler of :func:`cleanup_on_sigterm` so ``finally`` blocks run."""

    def __init__(self):
        super().__init__(128 + signal.SIGTERM)


@contextmanager
def cleanup_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (exit 143) instead of killing the process
    outright, so temporary files are removed. Left alone where someone else already handles SIGTERM
    (Lightning during training) or outside the main thread."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def same_file(a: str | os.PathLike | int, b: str | os.PathLike) -> bool:
    """Whether ``a`` (a path or an open descriptor) and ``b`` are one file, through any link."""
    try:
        first = os.fstat(a) if isinstance(a, int) else os.stat(a)
        second = os.stat(b)
    except (OSError, ValueError):
        return False
    return os.path.samestat(first, second)


def refuse_same_file(output: Path | None, *inputs: Path | None, stdin: bool = False) -> None:
    """Refuse an ``output`` that is one of ``inputs`` (or standard input, when ``stdin``): writing it
    would replace the input with its own translation. Checked before anything is read."""
    if output is None:
        return
    for source in inputs:
        if source is not None and same_file(source, output):
            raise UserError(output, f"is the input file {source}; write the output to another file")
    if stdin:
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):
            return
        if same_file(fd, output):
            raise UserError(output, "is the file on standard input; write the output to another file")


def describe(exc: OSError) -> str:
    return USER_ERRNOS.get(exc.errno) or exc.strerror or str(exc)


def _target(path: Path) -> tuple[Path, bool]:
    """(the file to write, whether to replace it atomically): a regular file or a new name is
    replaced, through any symlink resolved; anything else that exists is written through."""
    try:
        mode = os.stat(path).st_mode  # follows links: /dev/stdout is whatever fd 1 is
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        return path, False
    return Path(os.path.realpath(path)), True


def _new_file_mode(target: Path) -> int:
    """The mode ``open(target, 'w')`` would leave: the old file's, or 0o666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _temp_prefix(target: Path) -> str:
    """``.NAME.PID.`` with NAME cut so the temporary name fits where the output name fits."""
    name = target.name
    budget = 200 - len(str(os.getpid()))
    while len(os.fsencode(name)) > budget:
        name = name[:-1]
    return f".{name}.{os.getpid()}."


def remove_stale_temporaries(target: Path) -> None:
    """Temporary files left beside ``target`` by a process that no longer exists (killed mid-write)."""
    prefix = _temp_prefix(target).rsplit(".", 2)[0] + "."
    try:
        candidates = [p for p in target.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")]
    except OSError:
        return
    for path in candidates:
        pid = path.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open ``path`` for writing (``mode`` "w" or "wb"): atomically for regular files, through for others.

    Raises :class:`UserError` naming the file for what the user can fix (missing directory, full
    disk, permissions, a name too long); the old file is then untouched and no temporary is left.
    """
    path = Path(path)
    kwargs = {"encoding": "utf-8"} if "b" not in mode else {}
    target, regular = _target(path)
    if not target.parent.is_dir():
        raise UserError(path, "output directory does not exist")
    if not regular:  # a device, FIFO or terminal: replacing it with a file would destroy it
        try:
            with open(target, mode, **kwargs) as f:
                yield f
        except OSError as exc:
            if exc.errno in USER_ERRNOS:
                raise UserError(path, f"cannot write output ({describe(exc)})") from None
            raise
        return
    if len(os.fsencode(target.name)) > os.pathconf(target.parent, "PC_NAME_MAX"):
        raise UserError(path, "cannot write output (file name too long)")
    file_mode = _new_file_mode(target)
    remove_stale_temporaries(target)
    tmp = None
    try:
        with cleanup_on_sigterm():
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_temp_prefix(target), suffix=".tmp")
            os.fchmod(fd, file_mode)
            with os.fdopen(fd, mode, **kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            tmp = None
    except OSError as exc:
        if exc.errno in USER_ERRNOS:
            raise UserError(path, f"cannot write output ({describe(exc)}); nothing was written") from None
        raise
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_open`: readers see the old file or the new one."""
    with atomic_open(path, "w") as f:
        f.write(text)


@contextmanager
def open_output(path: Path | None) -> Iterator[IO]:
    """Standard output, or ``path`` through :func:`atomic_open`.

    While standard output is the output, whatever else prints to it (a plugin's ``print()`` inside the
    model) goes to stderr instead: it would have come between the lines, which must answer the input's."""
    if path is None:
        out = sys.stdout
        if out is None or getattr(out, "closed", False):
            raise UserError("<stdout>", "standard output is closed")
        with redirect_stdout(sys.stderr):
            yield out
        out.flush()
        return
    with atomic_open(path, "w") as f:
        yield f


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def describe_file_kind(path: Path) -> str:
    """'a directory', 'a FIFO', 'a character device' ... for a path that is there but not a regular file."""
    mode = os.stat(path).st_mode
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def read_small_file(path: Path, limit: int, error: type[UserError] = UserError, what: str = "file") -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes, else ``error`` naming the path.

    Checked with stat before opening: reading ``/dev/zero`` would never end and opening a FIFO
    blocks until someone writes to it.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(path, f"{what} not found") from None
    except OSError as exc:
        raise error(path, f"cannot read {what} ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(path, f"{describe_file_kind(path)}, not a {what}")
    too_large = f"too large for a {what} (over {limit // 1024} KB)"
    if info.st_size > limit:
        raise error(path, too_large)
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)  # the file may have grown since stat
    except OSError as exc:
        raise error(path, f"cannot read {what} ({exc.strerror})") from None
    if len(data) > limit:
        raise error(path, too_large)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(path, f"not UTF-8 text ({exc.reason})") from None
