"""A killed run continues exactly where it stopped.

Lightning's checkpoint already holds the model, optimizer, scheduler, loop counters and every
callback's state (the method's unfreezing schedule included). What it lacks, added here:
- `ExactResume`: every training batch runs under RNG seeds that depend only on (seed, epoch,
  batch, rank), and the training loader (lokal.data.resumable) is told how far the epoch got, so
  a resumed run draws the same batches, augmentations and dropout masks as an uninterrupted one;
- `AtomicCheckpointIO`: a checkpoint is written beside its target and renamed over it, so a kill
  while saving leaves the previous `last.ckpt`, never a truncated one.
Finding the run folder again is lokal.training.rundir's job.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from lokal.data.resumable import ResumableLoader, mix_seed, seed_all


class ExactResume(L.Callback):
    """Seeds each training batch from (seed, epoch, batch, rank) and records the position in the
    epoch in the training loader's state (saved by Lightning with every checkpoint)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        """Lightning builds the training loader before it reads the loop state from the checkpoint
        (when a scheduler asks for `estimated_stepping_batches`), so the loader's saved position
        would be ignored: apply it now and start the epoch's iterator again from there."""
        fit_loop = trainer.fit_loop
        if fit_loop.restarting and fit_loop._combined_loader_states_to_load and fit_loop._data_fetcher is not None:
            fit_loop._load_combined_loader_states()
            iter(fit_loop._data_fetcher)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        seed_all(mix_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank, 2))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        epoch, done = trainer.current_epoch, batch_idx + 1
        if is_epoch_end(trainer, batch_idx):  # a checkpoint saved now resumes at the next epoch
            epoch, done = epoch + 1, 0
        for loader in training_loaders(trainer):
            loader.epoch, loader.batches_done = epoch, done


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt` every `every_n_train_steps` steps, except after an epoch's last batch: Lightning
    resumes such a checkpoint as a finished epoch and skips that epoch's validation, so the
    resumed run would pick its best checkpoint from fewer validations than an uninterrupted one."""

    def __init__(self, dirpath: str, every_n_train_steps: int = 50) -> None:
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not is_epoch_end(trainer, batch_idx):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def is_epoch_end(trainer: L.Trainer, batch_idx: int) -> bool:
    return batch_idx + 1 >= trainer.num_training_batches


def training_loaders(trainer: L.Trainer) -> list[ResumableLoader]:
    combined = trainer.fit_loop._combined_loader
    return [dl for dl in (combined.flattened if combined else []) if isinstance(dl, ResumableLoader)]


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary sibling, then rename: the old checkpoint survives a kill."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
