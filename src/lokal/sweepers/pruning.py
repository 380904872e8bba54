"""PruneTrial: the Lightning callback that lets an Optuna pruner stop a bad trial during training.

The sweeper (lokal.sweepers.optuna) adds it to each trial as `++callbacks.prune_trial`; every
`callbacks` entry is instantiated by run.make_trainer, so run.py knows nothing about Optuna.
Kept apart from the sweeper: Lightning is heavy, and Hydra imports the sweeper at every start.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from lokal.errors import LokalError
from lokal.sweepers.optuna import PRUNED_FILE

log = logging.getLogger(__name__)


class PruneTrial(Callback):
    """Asynchronous pruning of an Optuna trial (Akiba et al. 2019; median rule: Golovin et al. 2017).

    After each validation the monitored metric is reported to trial `trial` of the study at the
    current training step; when the study's pruner (set by the sweeper, stored in the study) says
    so, `pruned.json` is written in the run folder and `optuna.TrialPruned` stops the run.

    Args:
        storage: the study's Optuna storage URL.
        study_name: the study's name.
        trial: the trial's number in the study.
        monitor: a metric logged during validation, e.g. val/accuracy.
    """

    def __init__(self, storage: str, study_name: str, trial: int, monitor: str = "val/accuracy") -> None:
        self.storage, self.study_name, self.trial, self.monitor = storage, study_name, trial, monitor
        self._handle = None  # the optuna Trial, opened at the first report

    def on_validation_end(self, trainer, pl_module) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        # only while fitting: not the sanity check (untrained model), not the final validate() of the best checkpoint
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        prune = self.report(trainer) if trainer.is_global_zero else False
        if trainer.strategy.broadcast(prune):  # every rank stops together (DDP)
            import optuna

            raise optuna.TrialPruned(f"trial {self.trial} pruned at step {trainer.global_step}")

    def report(self, trainer) -> bool:
        """Report the metric at this step; True (and pruned.json written) if the pruner stops the trial."""
        from lokal.io import write_json

        value, step = self.value(trainer), trainer.global_step
        trial = self.open_trial()
        trial.report(value, step)
        if not trial.should_prune():
            return False
        log.info("trial %d pruned at step %d: %s=%.4g", self.trial, step, self.monitor, value)
        write_json(Path(trainer.default_root_dir) / PRUNED_FILE,
                   {"study": self.study_name, "trial": self.trial, "step": step, "monitor": self.monitor,
                    "value": value})
        return True

    def value(self, trainer) -> float:
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            raise LokalError(f"pruning watches {self.monitor}, but validation logged {sorted(metrics)}: set "
                             "hydra.sweeper.monitor to one of them")
        return float(metrics[self.monitor])

    def open_trial(self):
        """The trial in its study, with the pruner the sweeper stored there."""
        if self._handle is None:
            import optuna

            from lokal.sweepers.optuna import make_pruner

            study = optuna.load_study(study_name=self.study_name, storage=self.storage)
            study.pruner = make_pruner(study.user_attrs.get("pruner"))
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, self.trial)
            self._handle = optuna.trial.Trial(study, trial_id)
        return self._handle
