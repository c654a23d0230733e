"""Whether ``nmt train`` may take a run directory, and what it may resume there: the directory's lock, the
undoing of a first start that failed, and the checks that a resume goes on with the run's own training (its
model, data, seed, optimizer and schedule, and a ``last.ckpt``) and that a first start replaces nothing of the
user's. :mod:`nmt.train` trains; this module says whether it may."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
from pathlib import Path

import click
import filelock

from nmt import runs
from nmt.errors import RecipeError, RunError, shorten
from nmt.io import atomic_write_text, same_file
from nmt.recipe import Recipe
from nmt.runs import is_rank_zero


LOCK_NAME, HOLDER_NAME = ".lock", ".lock.holder"  # in the run directory


def lock_run_dir(run_dir: Path) -> filelock.BaseFileLock | None:
    """Take the run directory for this process, or raise naming the ``nmt train`` that holds it.

    ``flock`` based: the kernel releases it when the process dies, however it dies, so a killed run
    never blocks the next one. Two trainings in one directory would interleave ``metrics.csv`` and
    overwrite each other's checkpoints. The lock file itself cannot say who holds it (every try to
    take it truncates it), so the holder's pid and host are written beside it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(run_dir, "is a file, expected a run directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(run_dir, f"cannot create the run directory ({exc.strerror or exc})") from None
    try:  # filelock 4 falls back to a marker file where flock fails; that one outlives a killed process
        lock = filelock.FileLock(run_dir / LOCK_NAME, timeout=0, fallback_to_soft=False)
    except TypeError:  # filelock 3: flock only
        lock = filelock.FileLock(run_dir / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        try:
            pid, host = (run_dir / HOLDER_NAME).read_text(encoding="utf-8").split()[:2]
            holder = f" (pid {pid} on host {host})"
        except (OSError, ValueError):  # the holder has not written it yet
            holder = ""
        raise RunError(run_dir, f"in use by another nmt train{holder}; wait for it or pick another --run-dir") from None
    except (OSError, NotImplementedError) as exc:  # a file system without flock (some network mounts)
        click.echo(f"nmt: {run_dir}: cannot lock ({exc}); two nmt train on it at once would mix their logs", err=True)
        return None
    atomic_write_text(run_dir / HOLDER_NAME, f"{os.getpid()} {socket.gethostname()}\n")
    return lock


def has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("*.ckpt"))


@contextlib.contextmanager
def claimed(run_dir: Path):
    """Hold the run directory's lock; if a first start fails before any checkpoint, undo what it wrote.

    A half-written run (run.json and recipe.yaml, no checkpoint) would make the retry with fixed
    data or trainer arguments fail as "differs from the run being resumed", and refuse --fresh.
    Only what this process added goes: a directory that held a run before, or a checkpoint, is kept."""
    existed = run_dir.exists()
    ours = {name for name in (LOCK_NAME, HOLDER_NAME) if not (run_dir / name).exists()}
    lock = lock_run_dir(run_dir)
    before = set(os.listdir(run_dir)) - ours
    first_start = not runs.is_run(run_dir)
    kept = None if first_start else KeptRecipe(run_dir)
    try:
        yield HOLDER_NAME not in ours  # an nmt train held it before: what it left is nmt's, not the user's
    except BaseException:
        if first_start and not has_checkpoint(run_dir):
            undo_start(run_dir, existed, before)
        elif kept is not None:
            kept.restore_if_untrained()
        raise
    finally:
        if lock is not None:
            lock.release()


class KeptRecipe:
    """A resumed run's recipe.yaml as it was, put back if the command fails before it writes a checkpoint:
    the run's recipe then still says how its checkpoints were trained (a resume with new trainer
    settings that fails at once, as an optimizer the checkpoint's state does not fit, changed nothing)."""

    def __init__(self, run_dir: Path):
        self.path, self.last = run_dir / "recipe.yaml", run_dir / "checkpoints" / "last.ckpt"
        self.text = self.path.read_text(encoding="utf-8") if self.path.is_file() else None
        self.stamp = self._stamp()

    def _stamp(self):
        return self.last.stat().st_mtime_ns if self.last.exists() else None

    def restore_if_untrained(self) -> None:
        if self.text is None or self._stamp() != self.stamp:
            return
        with contextlib.suppress(OSError):
            if self.path.read_text(encoding="utf-8") != self.text:
                runs.atomic_write_text(self.path, self.text)


def undo_start(run_dir: Path, existed: bool, before: set[str]) -> None:
    if not existed:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for name in set(os.listdir(run_dir)) - before:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def check_resumable(recipe: Recipe, run_dir: Path, fresh: bool, held_before: bool = False) -> None:
    """An existing run in ``run_dir`` may be resumed by ``recipe``: same task, data and model, and the
    optimizer and schedule whose state its last checkpoint holds. A first start does not replace a
    recipe.yaml there that is not a run's (a user's own recipe beside it); one that an nmt train killed
    before it wrote run.json left (``held_before``: its lock holder's file is there) is replaced."""
    if not runs.is_run(run_dir):
        if not is_rank_zero():  # rank 0 checks the folder it creates; another node's rank may start first
            return
        if (run_dir / "recipe.yaml").exists() and not held_before:
            raise RecipeError(run_dir, "holds a recipe.yaml that is not a run's, which the run would replace "
                                       "with its own; pick another --run-dir (e.g. a folder inside it)")
        foreign = foreign_files(run_dir, recipe.path)
        if foreign:
            raise RecipeError(run_dir, f"holds files that are not a run's ({shorten(', '.join(foreign))}); a run "
                                       "and what its recipe scripts write beside it (test.hyp, dev.pred ...) could "
                                       "replace them: pick an empty or new --run-dir")
        return
    if fresh and is_rank_zero():  # other ranks start after rank 0 has written the run
        raise RecipeError(run_dir, "already holds a run; drop --fresh to resume it or pick another --run-dir")
    saved = runs.load_run_recipe(run_dir)
    for section in ("task", "data", "model"):
        if saved.raw.get(section) != recipe.raw.get(section):
            raise RecipeError(f"{run_dir}: {section}", "differs from the run being resumed; "
                              "use another --run-dir for a different model or data")
    if recipe.spec.seed != saved.spec.seed:  # it draws the batch order, which a mid-epoch resume goes on with
        raise RecipeError(f"{run_dir}: seed", f"{recipe.spec.seed!r} differs from the run being resumed "
                          f"({saved.spec.seed!r}), whose batch order it draws; use the run's seed or another "
                          "--run-dir (with --init-from to start from this run's weights)")
    check_same_optimizer(recipe, saved, run_dir)


# The optim keys whose values the optimizer's and schedules' state in last.ckpt holds (param_groups' lr and
# weight_decay, the schedules' base and least learning rates, the plateau's factor and patience): Lightning
# loads that state over the recipe's, so a resume with new values silently trained on with the old ones.
HELD_OPTIM_KEYS = ("lr", "weight_decay", "min_lr", "plateau_factor", "plateau_patience", "warmup_steps")


def check_same_optimizer(recipe: Recipe, saved: Recipe, run_dir: Path) -> None:
    """The resumed run's optimizer, schedule and weight averaging are the ones whose state ``last.ckpt`` holds."""
    for key in ("name", "scheduler"):  # last.ckpt holds this optimizer's and schedule's state
        ours, theirs = getattr(recipe.spec.optim, key), getattr(saved.spec.optim, key)
        if ours != theirs:
            raise RecipeError(f"{run_dir}: optim.{key}", f"{ours!r} differs from the run being resumed ({theirs!r}), "
                              "whose last checkpoint holds that one's state; use another --run-dir "
                              "(with --init-from to start from this run's weights)")
    for key in HELD_OPTIM_KEYS:
        ours, theirs = getattr(recipe.spec.optim, key), getattr(saved.spec.optim, key)
        if ours != theirs:
            raise RecipeError(f"{run_dir}: optim.{key}", f"{ours!r} differs from the run being resumed ({theirs!r}): "
                              f"its last checkpoint's optimizer and schedule state would bring back {theirs!r} while "
                              f"recipe.yaml said {ours!r}; use the run's optim.{key}, or another --run-dir (with "
                              "--init-from to start from this run's weights)")
    ours, theirs = recipe.spec.optim.ema_decay, saved.spec.optim.ema_decay
    if (ours is None) != (theirs is None):  # an EMA run's checkpoint holds the average as its weights
        was = "with" if theirs is not None else "without"
        raise RecipeError(f"{run_dir}: optim.ema_decay", f"{ours!r} differs from the run being resumed ({theirs!r}), "
                          f"whose last checkpoint was saved {was} weight averaging: its weights and optimizer state "
                          f"do not go on {'without' if was == 'with' else 'with'} it; set optim.ema_decay as the run "
                          "had it (on or off) or use another --run-dir (with --init-from to start from its weights)")


def foreign_files(run_dir: Path, recipe_path: Path | None) -> list[str]:
    """The names in a folder a first start would make a run of that are not a run's own (``runs.RUN_FILES``,
    ``RUN_FOLDERS``, the lock), a hidden file (a temporary of an interrupted write) or the recipe being trained."""
    own = {*runs.RUN_FILES, *runs.RUN_FOLDERS, LOCK_NAME, HOLDER_NAME}
    recipe_name = recipe_path.name if recipe_path is not None and same_file(recipe_path.parent, run_dir) else None
    return sorted(name for name in os.listdir(run_dir) if name not in own and not name.startswith(".")
                  and name != recipe_name)


def resume_checkpoint(run_dir: Path) -> Path | None:
    """``last.ckpt`` to resume from, or None for a first start; a run whose other checkpoints outlived
    it is refused: started over from step 0, it would overwrite them with a second training's."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        return last
    if has_checkpoint(run_dir):
        kept = shorten(", ".join(sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))))
        raise RunError(last, f"missing, while the run holds checkpoints ({kept}) that starting over would "
                             "overwrite; restore last.ckpt (a copy of best.ckpt goes on from the best validation) "
                             "or train into a new --run-dir")
    return None
