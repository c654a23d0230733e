"""Where nmt changes what PyTorch Lightning does, in one place: each fix reaches into Lightning's
internals, so each class names the Lightning version it was written and checked for.

On a Lightning upgrade, read these first: a fix may have become unnecessary, or may need the new
version's internals. The tests that hold them are in ``tests/reliability`` (crash recovery,
mid-epoch resume, outputs, safe loading, resume safety, resume state).
"""
from __future__ import annotations

import csv
import logging
import os
import re
import signal
import threading
import types
import warnings
from pathlib import Path

import torch
from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.loops.fit_loop import _FitLoop
from pytorch_lightning.loops.loop import _Loop
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.trainer.connectors.signal_connector import _SignalConnector
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from nmt import runs
from nmt.io import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints go to a temporary file that is renamed into place: a kill never leaves a torn file.

    For Lightning 2.6 (checked with 2.6.6): written through :func:`nmt.io.atomic_open` like every
    other file nmt writes (links, modes, cleanup at SIGTERM), and loaded safely when a run resumes."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        """Resume with ``weights_only=True`` whatever Lightning asks for: a checkpoint never runs code."""
        return relocated(runs.load_checkpoint(Path(path)), Path(path).parent)


def relocated(checkpoint: dict, ckpt_dir: Path) -> dict:
    """``checkpoint`` with its ModelCheckpoints' paths moved to ``ckpt_dir``, where it was loaded from.

    For Lightning 2.6 (checked with 2.6.6), whose ``ModelCheckpoint.load_state_dict`` drops the best
    score and kept files when the saved ``dirpath`` differs from its own: a run directory moved or
    copied elsewhere forgot its best score, and the first validation after the resume replaced
    ``best.ckpt`` however worse. nmt keeps every checkpoint beside ``last.ckpt``, so a saved
    ``dirpath`` other than the directory it is loaded from can only mean the run moved."""
    new = os.path.realpath(ckpt_dir)
    for state in (checkpoint.get("callbacks") or {}).values():
        old = state.get("dirpath") if isinstance(state, dict) else None
        if not isinstance(old, str) or old == new:
            continue

        def moved(path, old=old):
            return new + path[len(old):] if isinstance(path, str) and path.startswith(old + os.sep) else path

        state["dirpath"] = new
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if key in state:
                state[key] = moved(state[key])
        if isinstance(state.get("best_k_models"), dict):
            state["best_k_models"] = {moved(path): score for path, score in state["best_k_models"].items()}
    return checkpoint


class LastCheckpoint(Checkpoint):
    """Keeps ``last.ckpt`` at the step training reached, however the run ends.

    For Lightning 2.6 (checked with 2.6.6), whose ``save_last`` rewrites it only when the monitored
    score improved, so a kill after a few validations without progress went back to the last
    improvement. It reads the fit loop's batch progress, an internal. Saved after every
    validation inside an epoch, at the end of every finished epoch, at a stop inside an epoch
    (max_steps, max_time, early stopping: Lightning still calls ``on_train_epoch_end`` then) and at a
    SIGTERM or Ctrl-C (:class:`InterruptAsSigterm`), so a run stopped before its first validation
    still leaves weights to translate with and to resume from. Saved at an epoch's end, the
    checkpoint resumes at the start of the next epoch (:class:`_EpochEndResumingFitLoop`); saved
    inside one, it resumes at the next batch of that epoch's order (``BucketedDataModule.state_dict``).
    A ``Checkpoint``, so Lightning runs it after the best-score ModelCheckpoint listed before it,
    and the saved state holds the best score so far.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.saved_step: int | None = None  # the global step of the last save in this process
        self.inside_epoch = False  # the save under way is of a stop inside an epoch, from on_train_epoch_end

    def save(self, trainer, inside_epoch: bool = False) -> None:
        self.inside_epoch = inside_epoch
        try:  # full, to resume from; said, so Lightning logs nothing
            trainer.save_checkpoint(self.path, weights_only=False)
        finally:
            self.inside_epoch = False
        self.saved_step = trainer.global_step
        for logger in trainer.loggers:
            logger.after_save_checkpoint(self)

    @staticmethod
    def epoch_finished(trainer) -> bool:
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed >= trainer.num_training_batches

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if not self.epoch_finished(trainer):  # at the epoch's last batch, on_train_epoch_end saves instead
            self.save(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        # A stop inside the epoch (max_steps, max_time, early stopping) saves the step it reached,
        # unless a validation at that very step has just saved it.
        if self.epoch_finished(trainer):
            self.save(trainer)
        elif self.saved_step != trainer.global_step:
            self.save(trainer, inside_epoch=True)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        # Lightning counts the epoch processed before on_train_epoch_end, even at a stop inside it: a
        # resume then took the epoch for finished and skipped the rest of its batches. Saved as a
        # validation inside the epoch saves it, the resume goes on with the epoch's next batch.
        if self.inside_epoch:
            for progress in checkpoint["loops"]["fit_loop"]["epoch_progress"].values():
                if progress["processed"] > progress["completed"]:
                    progress["processed"] -= 1

    def on_exception(self, trainer, pl_module, exception):
        # SIGTERM (a scheduler's preemption, a kill): Lightning raises it after the current batch, at a
        # step boundary (_StepBoundarySignalConnector), so the state is whole. Any other exception may
        # leave it broken (a NaN loss): not saved.
        if (isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING
                and self.saved_step != trainer.global_step and trainer.global_step > 0):
            self.save(trainer)


class InterruptAsSigterm:
    """Within the block, Ctrl-C (SIGINT) stops ``trainer.fit`` as SIGTERM does: after the current batch
    (with gradient accumulation, after the next optimizer step: :class:`_StepBoundarySignalConnector`),
    with ``last.ckpt`` saved at the step reached (:class:`LastCheckpoint`); ``received`` says it came.

    For Lightning 2.6 (checked with 2.6.6), which turns a KeyboardInterrupt, raised wherever it lands
    (inside a backward pass or an optimizer step), into exit 1 without a checkpoint, while
    ``metrics.csv`` kept the steps past the last one, logged again after the resume. Lightning's loops
    check the SIGTERM flag of its signal connector (an internal) after each batch; this sets it. Before
    fit has installed its handlers, after it has restored them, and at a second Ctrl-C, the
    KeyboardInterrupt comes at once, as Python's own handler raises it."""

    def __init__(self, trainer):
        self.trainer, self.received, self.previous = trainer, False, None

    def __enter__(self) -> "InterruptAsSigterm":
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):  # nobody else's handler
            self.previous = signal.signal(signal.SIGINT, self._interrupt)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _interrupt(self, signum, frame) -> None:
        connector = self.trainer._signal_connector
        if self.received or not connector._original_handlers:  # a second Ctrl-C, or fit is not running
            raise KeyboardInterrupt
        self.received = connector.received_sigterm = True


class _StepBoundarySignalConnector(_SignalConnector):
    """Lightning's signal connector, but a SIGTERM (or Ctrl-C, :class:`InterruptAsSigterm`) stops training
    at an optimizer step's boundary, and every process of a distributed run stops at the same one.

    For Lightning 2.6 (checked with 2.6.6), whose loops stop at the first check of
    ``trainer.received_sigterm`` (this connector's flag: after every batch, inside a validation, at an
    epoch's end):

    - with ``accumulate_grad_batches=3``, a stop after batch 5 saved ``last.ckpt`` at step 1 with five
      batches done, the resume began at batch 5, the gradients of batches 3 and 4 were lost and the
      weights differed from an uninterrupted run's. The flag reads False while the batch just trained
      left gradients to accumulate (at most N-1 batches more: an epoch's last batch always steps);
    - in a distributed run each process read its own flag, set whenever the signal reached it, and the
      signal handler itself broadcast from rank 0, a collective call paired with whatever collective the
      other processes were in: a SIGTERM to the run (or to one process of it) left it hanging for ever,
      some processes stopped and the others waiting for them (``test_distributed.py``). Here the handler
      only records the signal; the processes agree on it at the start of each training batch (an
      all-reduce, :func:`_agree_on_sigterm`, in place of Lightning's broadcast from rank 0 there), and
      every check reads what they agreed.

    Replaces the trainer's ``_signal_connector`` and reads the epoch loop's ``_should_accumulate``, both
    internals."""

    _received = False  # the signal reached this process
    _agreed = False  # a distributed run's processes agreed that one of them received it

    @property
    def received_sigterm(self) -> bool:
        stop = self._agreed if _distributed(self.trainer) else self._received
        return stop and not self._accumulating()

    @received_sigterm.setter
    def received_sigterm(self, received: bool) -> None:
        self._received = received

    def _sigterm_notifier_fn(self, signum, frame) -> None:
        """Lightning's, without its broadcast: passes the signal on to the processes this one launched."""
        if not self._received:
            launcher = self.trainer.strategy.launcher
            if launcher is not None:
                launcher.kill(signum)
        self._received = True

    def agree(self) -> bool:
        """Whether any process of the run received the signal; every process must call it at once."""
        import torch.distributed as dist

        flag = torch.tensor([int(self._received)], device=self.trainer.strategy.root_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self._agreed = bool(flag.item())
        return self._agreed

    def _accumulating(self) -> bool:
        trainer = self.trainer
        return trainer.state.fn == TrainerFn.FITTING and trainer.fit_loop.epoch_loop._should_accumulate()


def _distributed(trainer) -> bool:
    import torch.distributed as dist

    return trainer.world_size > 1 and dist.is_available() and dist.is_initialized()


def _agree_on_sigterm(epoch_loop) -> None:
    """In place of the training epoch loop's ``_broadcast_sigterm_tensor``, which Lightning calls at the start
    of each training batch in a distributed run: all processes stop there together, or none does."""
    if epoch_loop.trainer._signal_connector.agree() and epoch_loop.trainer.received_sigterm:
        raise SIGTERMException()


def stop_at_step_boundaries(trainer) -> None:
    """Give ``trainer`` the :class:`_StepBoundarySignalConnector` (before ``fit`` installs its handlers)."""
    trainer._signal_connector = _StepBoundarySignalConnector(trainer)
    epoch_loop = trainer.fit_loop.epoch_loop
    epoch_loop._broadcast_sigterm_tensor = types.MethodType(_agree_on_sigterm, epoch_loop)


class _EpochEndResumingFitLoop(_FitLoop):
    """Lightning's fit loop, but a checkpoint saved at an epoch's end resumes at the next epoch's start
    whether or not ``max_steps`` is set.

    For Lightning 2.6 (checked with 2.6.6), whose ``_FitLoop.restarting`` setter restarts the loop
    whenever ``max_steps`` is set, even from a finished epoch: the resume then replayed that epoch as
    one with all its batches done, trained nothing in it, counted it once more and saved that
    (``LastCheckpoint.on_train_epoch_end``), so each later resume ran one epoch short of
    ``max_epochs``. A checkpoint saved inside an epoch restarts it, as before."""

    @_Loop.restarting.setter
    def restarting(self, restarting: bool) -> None:
        progress = self.epoch_progress.current
        unfinished = progress.ready != progress.processed or progress.started != progress.processed
        _Loop.restarting.fset(self, restarting and unfinished)


def resume_finished_epochs(trainer) -> None:
    """Give ``trainer`` the :class:`_EpochEndResumingFitLoop`, with its own training epoch loop."""
    loop = _EpochEndResumingFitLoop(trainer, min_epochs=trainer.fit_loop.min_epochs,
                                    max_epochs=trainer.fit_loop.max_epochs)
    loop.epoch_loop = trainer.fit_loop.epoch_loop
    trainer.fit_loop = loop


class BestCheckpoints(ModelCheckpoint):
    """Lightning's ModelCheckpoint, under a name of its own: the N best ``best-<step>.ckpt`` of
    ``checkpoint.keep`` beside the ``best.ckpt`` that a plain ModelCheckpoint on the same score keeps.

    For Lightning 2.6 (checked with 2.6.6), which stores a callback's state in a checkpoint under its
    ``state_key``, the class name with the monitor and mode: two ModelCheckpoints on one score share
    it, and the Trainer refuses them ("Found more than one stateful callback"). A subclass has its
    own key, so each resumes with its own list of kept files and scores."""


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, but a resumed run appends to ``metrics.csv`` instead of deleting it.

    For Lightning 2.6 (checked with 2.6.6), which removes an existing metrics file when the writer
    starts (``ExperimentWriter._check_log_dir_exists``), so a resume lost the curve of everything
    before it. The existing header seeds the known columns: a new column rewrites the file with
    the old rows kept, as Lightning does within one process.
    """

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))


class CheckpointAlignedCSVLogger(CSVLogger):
    """Writes ``metrics.csv`` whenever a checkpoint is saved: a killed run keeps the log of what it kept.

    For Lightning 2.6 (checked with 2.6.6), which flushes it every 100 steps otherwise, so a kill
    lost the metrics of the last checkpoints. A resumed run appends to the same file
    (:class:`AppendingExperimentWriter`, set through the logger's private ``_experiment``).
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        super().after_save_checkpoint(checkpoint_callback)
        self.save()


#: What Lightning prints that is noise for an nmt user: an advertisement, a deprecation inside Lightning
#: itself, the TPU line on every machine, and a logging-interval notice for short epochs (nmt logs
#: throughput and validation scores on its own schedule). News (the GPU line, why fit stopped) stays.
NOISE = ("litlogger", "TPU available", "isinstance(treespec, LeafSpec)", "is smaller than the logging interval",
         "was configured so",  # `Trainer(val_check_interval=1.0)` was configured so validation will run ...
         # "It is recommended to use `self.log(..., sync_dist=True)` ...", once per metric and validation of a
         # distributed run: the tasks gather the dev set's outputs themselves, so every rank logs the same totals
         "when logging on epoch level in distributed setting")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in NOISE)


def quiet_lightning() -> None:
    """Silence :data:`NOISE` (Lightning 2.6, checked with 2.6.6: its rank-zero loggers and warnings)."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    for noise in NOISE:
        warnings.filterwarnings("ignore", message=f".*{re.escape(noise)}")
