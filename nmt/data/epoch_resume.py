"""Where training got in an epoch, saved in every checkpoint, so a run resumed mid-epoch trains the rest of that
epoch's batches, each once, instead of starting the epoch over. Shared by the translation data module
(:class:`~nmt.data.batching.BucketedDataModule`) and the series one (:class:`~nmt.data.series.WindowDataModule`),
whose samplers both draw an epoch's order from the seed and the epoch and offer ``resume_at(epoch, batches_done)``."""
from __future__ import annotations


class ResumableEpochs:
    """A LightningDataModule mixin: Lightning saves ``state_dict`` in each checkpoint and hands it to
    ``load_state_dict`` on resume, before the training loader is made; :meth:`follow` gives that loader's
    sampler the place to go on from."""

    _train_sampler = None  # the sampler of the current training loader
    _resume: dict = {}

    def follow(self, sampler):
        """``sampler`` as this module's training sampler, told where a resumed epoch goes on."""
        if self._resume:
            sampler.resume_at(self._resume["epoch"], self._resume["batches_done"])
            self._resume = {}
        self._train_sampler = sampler
        return sampler

    def state_dict(self) -> dict:
        if self._train_sampler is None or self.trainer is None:
            return {}
        # Batches whose training step ran in this epoch (the loader has already fetched ahead, so
        # counting what it yielded would skip a batch on resume).
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": self._train_sampler.epoch, "batches_done": int(done)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume = dict(state_dict)
