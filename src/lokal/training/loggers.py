"""Lightning's CSVLogger, except that a resumed run keeps its history.

Lightning deletes an existing metrics.csv when its logger starts; a run that resumes in
its own folder would lose the first part of its learning curve. Here the old rows stay,
up to the first step the resumed run logs (rows a killed run wrote after its last
checkpoint are replaced, not duplicated).
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class HistoryKeepingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        self._history: list[dict] | None = None
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self._history = list(csv.DictReader(file))

    def save(self) -> None:
        if self._history is not None and self.metrics:
            first_new_step = min(int(m["step"]) for m in self.metrics)
            kept = [row for row in self._history if int(row["step"]) < first_new_step]
            self.metrics_keys = sorted({k for row in kept for k in row} | {k for m in self.metrics for k in m})
            with self._fs.open(self.metrics_file_path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
            self._history = None
        super().save()


class CSVLogger(LightningCSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> HistoryKeepingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = HistoryKeepingWriter(log_dir=self.log_dir)
        return self._experiment
