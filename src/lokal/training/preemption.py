"""Preemption and time limits on Slurm: checkpoint, requeue, continue.

Slurm warns a job with SIGUSR1 before its time limit or a preemption (`#SBATCH --signal=USR1@90`;
submitit asks for it itself). Lightning's own handler saves a checkpoint inside the signal handler,
which can land in the middle of an optimizer step. `Requeue` only raises a flag there and acts at
the next batch boundary, so the saved state is one an uninterrupted run also passed through.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L

from lokal.training.rundir import LAST_CHECKPOINT

log = logging.getLogger(__name__)


class Requeue(L.Callback):
    """On `signal_name`: save last.ckpt at the next batch boundary, then requeue the job and exit.

    Under submitit (hydra/launcher=slurm) submitit's own handler requeues the job with the same
    arguments; in a plain sbatch job `scontrol requeue`; outside Slurm the run just stops and the
    same command continues it. Either way the job finds its run folder again (lokal.training.rundir) and
    continues from the saved step."""

    def __init__(self, signal_name: str = "SIGUSR1") -> None:
        self.signum = signal.Signals[signal_name]
        self.requested = False
        self._previous = None

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        import threading

        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = signal.signal(self.signum, self._request)

    def _request(self, signum, frame) -> None:
        log.warning("%s received: saving a checkpoint at the end of this batch, then requeueing",
                    signal.Signals(signum).name)
        self.requested = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        from lokal.training.resume import is_epoch_end

        if is_epoch_end(trainer, batch_idx) or not self._requested_anywhere(trainer):
            return  # at an epoch's end: after the next batch (see lokal.training.resume.LastCheckpoint)
        path = Path(trainer.default_root_dir) / LAST_CHECKPOINT
        trainer.save_checkpoint(path)  # every rank takes part (sharded strategies need them all)
        if trainer.is_global_zero:
            log.warning("checkpoint saved at step %d: %s", trainer.global_step, path)
            self._requeue()
        sys.exit(EXIT_REQUEUED)

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        self.teardown(trainer, pl_module, "fit")

    def teardown(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def _requested_anywhere(self, trainer: L.Trainer) -> bool:
        """Slurm may signal one rank only: all ranks stop at the same step if any was signalled."""
        if trainer.world_size == 1:
            return self.requested
        return trainer.strategy.reduce_boolean_decision(self.requested, all=False)

    def _requeue(self) -> None:
        previous = self._previous
        if callable(previous) and type(getattr(previous, "__self__", None)).__module__.startswith("submitit"):
            previous(self.signum, None)  # submitit requeues with the same arguments and exits
        elif job := slurm_job_id():
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if result.returncode:
                log.error("scontrol requeue %s failed (%s): start the job again to continue", job,
                          result.stderr.strip())
            else:
                log.warning("job %s requeued: it continues from the checkpoint when it starts again", job)
        else:
            log.warning("not under Slurm: run the same command again to continue from the checkpoint")


EXIT_REQUEUED = 3  # distinct from errors (1) and bad input (2)


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` takes: an array task's own id (JOBID_TASKID) for job arrays."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")
