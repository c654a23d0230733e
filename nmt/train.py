"""``nmt train``: a recipe and a run directory in, a trained run out, through Lightning's Trainer."""
from __future__ import annotations

import re
import shutil
import signal
import time
import warnings
from pathlib import Path

import click
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from nmt import runs
from nmt.runs import is_rank_zero
from nmt.errors import RecipeError, UserError, shorten
from nmt.lightning_fixes import AtomicCheckpointIO, BestCheckpoints, CheckpointAlignedCSVLogger, \
    InterruptAsSigterm, LastCheckpoint, quiet_lightning, resume_finished_epochs, stop_at_step_boundaries
from nmt.recipe import Recipe
from nmt.run_claim import check_resumable, claimed, has_checkpoint, resume_checkpoint


class Throughput(Callback):
    """Logs training target tokens per second (``train/tokens_per_sec``), averaged over log windows."""

    def __init__(self):
        self.tokens, self.start = 0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.tokens += int(batch["ntokens"]) if isinstance(batch, dict) and "ntokens" in batch else 0
        if (batch_idx + 1) % trainer.log_every_n_steps == 0 and self.tokens:
            elapsed = time.perf_counter() - self.start
            pl_module.log("train/tokens_per_sec", self.tokens * trainer.world_size / elapsed, prog_bar=True)
            self.tokens, self.start = 0, time.perf_counter()

    def on_validation_start(self, trainer, pl_module):  # validation time is not training time
        self.tokens, self.start = 0, None


class FirstStep(Callback):
    """Whether this process trained a batch: a failure before it leaves the run directory as it found it."""

    seen = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen = True


class WallClock(Callback):
    """Logs ``val/wall_minutes``, wall time since training began (kept across resumes), for curves over time."""

    def __init__(self):
        self.before, self.since = 0.0, None  # minutes of earlier processes, start of this one

    def on_fit_start(self, trainer, pl_module):
        self.since = time.time()

    def minutes(self) -> float:
        return self.before + (time.time() - self.since) / 60 if self.since else self.before

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            pl_module.log("val/wall_minutes", self.minutes(), rank_zero_only=True)

    def state_dict(self):
        return {"minutes": self.minutes()}

    def load_state_dict(self, state_dict):
        self.before = float(state_dict.get("minutes", 0.0))


class CosineSpan(Callback):
    """Refuses a resume whose cosine schedule would span other steps than the one in ``last.ckpt``.

    The schedule's state, saved whole, brings back the span of the run's start (``T_max``): with a
    higher ``trainer.max_steps`` the learning rate went past its minimum and climbed again. Checked
    when the checkpoint is loaded (after the data module's state, before the optimizer's): no step
    has run, and the run's recipe.yaml is put back (:class:`KeptRecipe`)."""

    SPAN_KEYS = ("optim.total_steps", "optim.warmup_steps", "trainer.max_steps", "trainer.max_epochs",
                 "trainer.accumulate_grad_batches", "trainer.limit_train_batches")

    def __init__(self, recipe: Recipe, saved: Recipe, run_dir: Path):
        self.recipe, self.saved, self.run_dir = recipe, saved, run_dir

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        spans = [s["T_max"] for state in checkpoint.get("lr_schedulers") or []
                 for s in [state, *state.get("_schedulers", [])] if isinstance(s, dict) and "T_max" in s]
        cfg = self.recipe.spec.optim
        wanted = max(pl_module.total_steps(cfg) - cfg.warmup_steps, 1)  # as step_schedule makes it
        if spans and spans[0] != wanted:
            key = next((k for k in self.SPAN_KEYS if self.setting(self.recipe, k) != self.setting(self.saved, k)),
                       "trainer.max_steps")
            raise RecipeError(f"{self.run_dir}: {key}", f"changes the length of the cosine schedule, whose state in "
                              f"last.ckpt keeps the old one ({spans[0]} steps after the warm-up, {wanted} now): its "
                              f"learning rate would rise again past the old end; use the run's {key}, or another "
                              "--run-dir (with --init-from to start from this run's weights)")

    @staticmethod
    def setting(recipe: Recipe, key: str):
        section, _, field = key.partition(".")
        return getattr(recipe.spec.optim, field) if section == "optim" else recipe.spec.trainer.get(field)


def build_trainer(recipe: Recipe, run_dir: Path, task) -> pl.Trainer:
    """Lightning's Trainer for ``recipe``; ``task`` (a Task class or instance) gives the monitored score.

    Writes nothing: ``train_recipe`` builds it before the run directory, so a bad trainer argument
    leaves no half run behind."""
    quiet_lightning()
    ckpt_dir = run_dir / "checkpoints"
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=task.monitor, mode=task.monitor_mode,
                        save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False),
        *kept_checkpoints(recipe.spec.checkpoint.keep, ckpt_dir, task),
        LastCheckpoint(ckpt_dir / "last.ckpt"),
        Throughput(),
        WallClock(),
    ]
    if recipe.spec.early_stopping.patience:
        # Checked after each validation only: at a stop inside an epoch before any validation (max_steps)
        # Lightning's default check at the epoch's end found no score and failed the run.
        callbacks.append(EarlyStopping(monitor=task.monitor, mode=task.monitor_mode,
                                       patience=recipe.spec.early_stopping.patience,
                                       min_delta=recipe.spec.early_stopping.min_delta,
                                       check_on_train_epoch_end=False))
    if recipe.spec.optim.ema_decay is not None:
        callbacks.append(weight_average(recipe))
    loggers = [CheckpointAlignedCSVLogger(run_dir, name="logs", version="")]
    try:
        loggers.append(TensorBoardLogger(run_dir, name="tb", version="", default_hp_metric=False))
        callbacks.append(LearningRateMonitor())
    except ModuleNotFoundError:  # tensorboard is optional at run time
        pass
    kwargs = {"num_sanity_val_steps": 0, "use_distributed_sampler": False, "log_every_n_steps": 20,
              **recipe.spec.trainer}
    try:
        trainer = pl.Trainer(default_root_dir=run_dir, logger=loggers, callbacks=callbacks,
                             plugins=[AtomicCheckpointIO()], **kwargs)
    except (ValueError, TypeError, pl.utilities.exceptions.MisconfigurationException) as exc:
        raise RecipeError(f"{recipe.path}: trainer", str(exc).splitlines()[0]) from None
    except ImportError as exc:  # precision: transformer-engine, accelerator: tpu without their packages
        raise RecipeError(f"{recipe.path}: trainer", f"needs a package that is not installed ({exc})") from None
    resume_finished_epochs(trainer)
    stop_at_step_boundaries(trainer)
    return trainer


def kept_checkpoints(keep: int, ckpt_dir: Path, task) -> list[Callback]:
    """``checkpoint.keep`` N > 1: the N best validations by the monitored score (``best-<step>.ckpt``)
    and the N latest (``step-<step>.ckpt``, the oldest removed), for ``nmt average``. Saved after each
    validation only (a stop between two would file the new weights under the old score), and whole,
    not weights only: Lightning leaves an EMA run's average out of a weights-only checkpoint."""
    if keep == 1:
        return []
    options = {"dirpath": ckpt_dir, "save_top_k": keep, "save_on_train_epoch_end": False,
               "auto_insert_metric_name": False, "enable_version_counter": False}
    return [BestCheckpoints(filename="best-{step}", monitor=task.monitor, mode=task.monitor_mode, **options),
            ModelCheckpoint(filename="step-{step}", monitor="step", mode="max", **options)]


def weight_average(recipe: Recipe) -> Callback:
    """Lightning's EMA callback: validation, checkpoints (their ``state_dict``) and so prediction use the average."""
    try:
        from pytorch_lightning.callbacks import EMAWeightAveraging
    except ImportError:  # added in Lightning 2.6
        raise RecipeError(f"{recipe.path}: optim.ema_decay", f"needs pytorch-lightning >= 2.6 "
                                                             f"(installed: {pl.__version__})") from None
    return EMAWeightAveraging(decay=recipe.spec.optim.ema_decay)


def wait_for(path: Path, timeout: float = 3600.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f}s for rank 0 to write {path}")
        time.sleep(0.5)


class TrainingStopped(UserError):
    """Training was stopped by SIGTERM; ``last.ckpt`` holds the step it reached. Exit 143 (128 + SIGTERM),
    as a scheduler expects of a process it terminated."""

    exit_code = 128 + signal.SIGTERM


class TrainingInterrupted(TrainingStopped):
    """Training was stopped by Ctrl-C (SIGINT), as by SIGTERM; exit 130 (128 + SIGINT), as a shell expects."""

    exit_code = 128 + signal.SIGINT


def train_recipe(recipe: Recipe, run_dir: Path, fresh: bool = False, init_from: Path | None = None) -> Path:
    """Train ``recipe`` into ``run_dir``; an existing run there is resumed from its last checkpoint.

    ``init_from``: a new run starts from that trained run's best weights and fitted tokenizer (fine-tuning
    on new data); a resumed run continues from its own ``last.ckpt`` and ignores it. A run that holds no
    checkpoint yet (killed before its first) starts from them again, not from random weights.
    Rank 0 holds the run directory's lock throughout; the other ranks of a distributed run start
    after it has written the run, and wait for its artifacts."""
    run_dir = Path(run_dir)
    start = InitialRun.check(init_from, recipe) if init_from is not None and not has_checkpoint(run_dir) else None
    if not is_rank_zero():
        return _train(recipe, run_dir, fresh, start)
    with claimed(run_dir) as held_before:
        return _train(recipe, run_dir, fresh, start, held_before)


class InitialRun:
    """The trained run a new run starts from (``nmt train --init-from RUN``): its weights and tokenizer.

    The vocabulary must stay the same for the weights to mean anything, so the fitted folder
    (tokenizers, labels, scalers) is copied rather than fitted on the new data, and the recipe must
    name the same task and tokenizer. A model of another shape is refused naming the first parameter."""

    def __init__(self, run_dir: Path, checkpoint: Path):
        self.run_dir, self.checkpoint = run_dir, checkpoint

    @classmethod
    def check(cls, run_dir: Path, recipe: Recipe) -> "InitialRun":
        run_dir = Path(run_dir)
        saved = runs.load_run_recipe(run_dir)
        for key in ("task", "data.tokenizer", "data.joint_vocab"):
            if cls.setting(recipe, key) != cls.setting(saved, key):
                raise RecipeError(f"{recipe.path}: {key}", f"differs from the run it starts from (--init-from "
                                  f"{run_dir}), whose tokenizer and weights it reuses; use that run's {key}")
        return cls(run_dir, runs.checkpoint_path(run_dir, "best"))

    @staticmethod
    def setting(recipe: Recipe, key: str):
        """``key``'s value in ``recipe``, as far as the reused tokenizer and weights depend on it."""
        if key == "data.joint_vocab":  # validated, so that a default and its explicit value agree
            return getattr(recipe.data, "joint_vocab", None)
        section, _, field = key.partition(".")
        value = recipe.raw.get(section)
        if not field:
            return value
        value = (value or {}).get(field)
        if key == "data.tokenizer" and isinstance(value, dict):
            # subword sampling is how training draws pieces, not what the vocabulary is
            value = {k: v for k, v in value.items() if k != "sampling"}
        return value

    def copy_fitted(self, run_dir: Path) -> None:
        """The fitted folder of the initial run, before ``prepare_run`` (which then fits nothing). Copied again
        over one a run without checkpoints holds: it may have been fitted on the new data (``nmt prepare``)."""
        target = runs.fitted_dir(run_dir)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(runs.fitted_dir(self.run_dir), target)

    def load_weights(self, task) -> None:
        runs.load_weights(task, self.checkpoint)


def prepare_recipe(recipe: Recipe, run_dir: Path, workers: int | None = None, force: bool = False) -> dict:
    """``nmt prepare``: what ``nmt train`` does before it trains (the run directory, the fitted tokenizer,
    the prepared corpus), on its own; returns the corpus manifest. ``force`` rebuilds an up-to-date corpus."""
    run_dir = Path(run_dir)
    if not hasattr(recipe.task_cls, "corpus_spec"):
        raise RecipeError(f"{recipe.path}: task", f"task '{recipe.spec.task}' reads its training data into memory; "
                                                  "nmt prepare is for parallel corpora (task seq2seq)")
    with claimed(run_dir) as held_before:
        check_resumable(recipe, run_dir, fresh=False, held_before=held_before)
        # an existing run keeps its recipe.yaml: preparing trains nothing, so the recipe of its
        # checkpoints is still the one it was trained with
        return prepare_run_dir(recipe, run_dir, None, write_recipe=not runs.is_run(run_dir), workers=workers,
                               force=force, announce=True).manifest


def prepare_run_dir(recipe: Recipe, run_dir: Path, start: InitialRun | None, write_recipe: bool = True, **options):
    """Rank 0 writes the run and what the task fits and prepares (``prepare_run``), then marks it READY."""
    runs.write_run(run_dir, recipe.raw if write_recipe else None)
    if start is not None:
        start.copy_fitted(run_dir)
    prepared = recipe.task_cls.prepare_run(recipe, run_dir, **options)
    ready = runs.fitted_dir(run_dir) / runs.READY  # the artifacts are complete once this exists
    ready.parent.mkdir(parents=True, exist_ok=True)
    ready.touch()
    return prepared


UNKNOWN_WARNING = 0.1  # a share of <unk> tokens in the training data worth a warning


def warn_unknown(prepared, start: InitialRun | None) -> None:
    """Warns when over UNKNOWN_WARNING of a side's prepared tokens are ``<unk>``: most often the vocabulary
    of an ``--init-from`` run, which does not know the new data's words (they would all train as one)."""
    manifest = getattr(prepared, "manifest", None) or {}
    shares = {side: share for side, share in (manifest.get("unknown_share") or {}).items() if share > UNKNOWN_WARNING}
    if not shares:
        return
    which = " and ".join(f"{share:.0%} of the {'source' if side == 'src' else 'target'} tokens"
                         for side, share in shares.items())
    if start is not None:
        whose = f"the vocabulary copied from {start.run_dir} (--init-from), which does not know the new data's words"
    else:
        whose = "the run's tokenizer; a larger data.tokenizer.vocab_size or a subword tokenizer spells more words"
    click.echo(f"nmt: warning: {prepared.directory}: {which} are <unk> under {whose}", err=True)


def _train(recipe: Recipe, run_dir: Path, fresh: bool, start: InitialRun | None, held_before: bool = False) -> Path:
    check_resumable(recipe, run_dir, fresh, held_before)
    last = resume_checkpoint(run_dir)
    if last is not None and early_stopped(recipe, run_dir, last):
        return run_dir
    pl.seed_everything(recipe.spec.seed, workers=True, verbose=False)
    trainer = build_trainer(recipe, run_dir, recipe.task_cls)  # before any file is written: bad arguments fail here
    if last is not None and recipe.spec.optim.scheduler == "cosine":  # before prepare_run_dir replaces the recipe
        trainer.callbacks.append(CosineSpan(recipe, runs.load_run_recipe(run_dir), run_dir))
    if is_rank_zero():
        warn_unknown(prepare_run_dir(recipe, run_dir, start), start)
    else:
        wait_for(runs.fitted_dir(run_dir) / runs.READY)
    task = recipe.task_cls.from_run(recipe, run_dir)
    if start is not None:
        start.load_weights(task)
    datamodule = task.make_datamodule()
    train_set = getattr(datamodule, "train_set", None)
    if train_set is not None and len(train_set) == 0:  # Lightning would say "No training batches" and exit 0
        raise task.no_training_example()
    if last is not None and trainer.is_global_zero:
        click.echo(f"nmt: resuming {run_dir} from {last}", err=True)
    # Lightning warns that a mid-epoch resume restarts the epoch; BucketedDataModule resumes it instead.
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    ctrl_c, first_step = InterruptAsSigterm(trainer), FirstStep()
    trainer.callbacks.append(first_step)
    logs_before = set((run_dir / "tb").glob("*"))
    try:
        with ctrl_c:
            trainer.fit(task, datamodule=datamodule, ckpt_path=str(last) if last is not None else None)
    except BaseException as exc:
        if not first_step.seen and not isinstance(exc, SIGTERMException):
            # failed before its first step (a refusal as the checkpoint loads, a bad trainer value Lightning
            # checks in fit): the TensorBoard events file Lightning opened logs nothing; a run left as it was
            for opened in set((run_dir / "tb").glob("*")) - logs_before:
                opened.unlink(missing_ok=True)
            refused = trainer_value_refused(recipe, exc)
            if refused is not None:
                raise refused from None
        if not isinstance(exc, SIGTERMException):
            raise
        raise stopped_error(trainer, run_dir, ctrl_c.received) from None
    if trainer.is_global_zero:
        say_finished(recipe, run_dir, trainer.global_step, trainer.checkpoint_callback.best_model_score)
    return run_dir


def trainer_value_refused(recipe: Recipe, exc: BaseException) -> RecipeError | None:
    """Lightning checks some trainer values only inside fit, against the data (an integer
    ``val_check_interval`` above an epoch's batches): its error, when it names a key of the recipe's
    ``trainer:`` section, as that key's RecipeError (it was 'nmt: error: ValueError: ...', exit 1)."""
    if not isinstance(exc, (ValueError, pl.utilities.exceptions.MisconfigurationException)):
        return None
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    named = [key for key in recipe.spec.trainer if re.search(rf"`{re.escape(str(key))}`|\b{re.escape(str(key))}=", message)]
    if not named:
        return None
    from nmt.recipe import _where

    return RecipeError(_where(recipe.path, f"trainer.{named[0]}", recipe.overrides), shorten(message, 300))


def stopped_error(trainer, run_dir: Path, interrupted: bool) -> TrainingStopped:
    """What a stop by SIGTERM (or Ctrl-C: ``interrupted``) says: where training got to, and how to go on."""
    last = run_dir / "checkpoints" / "last.ckpt"
    kept = f"last.ckpt holds step {trainer.global_step}" if last.exists() else "no checkpoint was written yet"
    stopped, by = (TrainingInterrupted, "Ctrl-C (SIGINT)") if interrupted else (TrainingStopped, "SIGTERM")
    error = stopped(run_dir, f"training stopped by {by} ({kept}); run the same nmt train again to resume")
    error.quiet = trainer.local_rank != 0  # one line on a node's terminal, not one per process
    return error


def say_finished(recipe: Recipe, run_dir: Path, step: int, best, why: str = "") -> None:
    score = f"{recipe.task_cls.monitor} {float(best):.4g}" if best is not None else "no validation yet"
    click.echo(f"nmt: finished {recipe.name} at step {step}{why}: best {score}; run directory {run_dir}", err=True)


def early_stopped(recipe: Recipe, run_dir: Path, last: Path) -> bool:
    """Whether early stopping has already ended the run: ``last.ckpt`` waited ``early_stopping.patience``
    validations without a better score. If so, says so and trains nothing: resumed, Lightning trained
    on to the next validation and stopped again, so each rerun of the command trained more."""
    patience = recipe.spec.early_stopping.patience
    if not patience:
        return False
    checkpoint = runs.load_checkpoint(last)
    states = {key: state for key, state in (checkpoint.get("callbacks") or {}).items() if isinstance(state, dict)}
    waited = max((int(state.get("wait_count", 0)) for key, state in states.items()
                  if key.startswith("EarlyStopping")), default=0)
    if waited < patience:
        return False
    if is_rank_zero():
        monitor = recipe.task_cls.monitor
        best = next((state.get("best_model_score") for key, state in states.items()
                     if key.startswith("ModelCheckpoint") and state.get("monitor") == monitor), None)
        say_finished(recipe, run_dir, checkpoint["global_step"], best,
                     f" (early stopping had stopped it: {waited} validations without a better {monitor}, "
                     f"early_stopping.patience {patience}; raise it to train on)")
    return True
