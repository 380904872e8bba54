"""Where a run's wall time goes, from the process's launch to its last output: users wait for
the whole run, not for one step. `metrics.json` gets each phase as `time/<phase>_s` and the
wall-clock time of the first optimizer step as `first_step_at` (benchmarks/end_to_end.py)."""

from __future__ import annotations

import logging
import time

import lightning as L

log = logging.getLogger(__name__)

# The phases in order, each from the previous mark to its own: start (interpreter, imports, the
# config), data_and_model (read, clean, split, tokenise; weights; the method), baselines (the bars
# to beat), to_first_step (Lightning's set-up, the sanity check, the first batch), training (first
# to last optimizer step, with the epochs' validation), scoring (the best checkpoint on val and test).
PHASES = ("start", "data_and_model", "baselines", "to_first_step", "training", "scoring")
_previous_end: float | None = None  # k-fold: the next fold's run starts where this one ended


def process_start() -> float:
    """When this process was launched (wall clock): imports and config composition count too."""
    import psutil

    return psutil.Process().create_time()


class Timeline(L.Callback):
    """Marks the phases of one run: `mark(phase)` where a phase ends in lokal.run; Lightning's
    hooks mark the first and the last optimizer step."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {"launch": _previous_end or process_start()}

    def mark(self, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}: one of {PHASES}")
        self.marks[phase] = time.time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.marks.setdefault("to_first_step", time.time())
        self.marks["training"] = time.time()

    def metrics(self) -> dict[str, float]:
        """Seconds per phase (phases not reached are left out), the time to the first step from
        launch, and `first_step_at`; logged as one line."""
        global _previous_end
        _previous_end = time.time()
        out, before = {}, self.marks["launch"]
        for phase in PHASES:
            if phase in self.marks:
                out[f"time/{phase}_s"] = round(self.marks[phase] - before, 2)
                before = self.marks[phase]
        if "to_first_step" in self.marks:
            out["time/launch_to_first_step_s"] = round(self.marks["to_first_step"] - self.marks["launch"], 2)
            out["first_step_at"] = self.marks["to_first_step"]
        log.info("where the time went: %s", ", ".join(f"{k[5:-2]} {v:.1f} s" for k, v in out.items()
                                                        if k.startswith("time/")))
        return out


def is_timing(key: str) -> bool:
    """Metrics that measure the machine, not the model: they differ between two identical runs."""
    return key in ("train_time_s", "first_step_at", "peak_memory_mb", "peak_gpu_memory_mb") or key.startswith("time/")
