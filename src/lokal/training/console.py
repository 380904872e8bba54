"""A quiet console: lokal's own lines, not the libraries' advice to someone else.

Only known, harmless messages are silenced, each by its text and the module that raises it, so a
new warning, or a known text from elsewhere, still shows. The
progress bar shows the training loss and the metric that picks the checkpoint, which fit one
80-column line (every logged metric went into a tall wrapped column)."""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch.callbacks import RichProgressBar

# (message regex, category, module regex): the library's note, where it is raised, and why it does not
# concern a lokal user. All three must match, so the same text from anywhere else still shows.
HARMLESS_WARNINGS = (
    (r".*`is_gradient_checkpointing` is deprecated", FutureWarning,
     r"transformers\.modeling_utils"),  # transformers' own alias, called inside PEFT
    (r".*isinstance\(treespec, LeafSpec\)", Warning, r"lightning\.pytorch\.utilities\._pytree"),  # torch 2.14
    (r".*The `srun` command is available on your system", Warning,
     r"lightning\.fabric\.plugins\.environments\.slurm"),  # lokal launches Slurm jobs itself
    (r".*module\(s\) in eval mode at the start of training", Warning,
     r"lightning\.pytorch\.loops\.fit_loop"),  # the frozen-prefix cache keeps its prefix in eval mode on purpose
    (r".*is smaller than the logging interval", Warning,
     r"lightning\.pytorch\.loops\.fit_loop"),  # small data sets: logged at the epoch's end
    (r".*does not have many workers which may be a bottleneck", Warning,
     r"lightning\.pytorch\.trainer\.connectors\.data_connector"),  # num_workers=0 is right on 2 cores
)
# loggers whose INFO lines are adverts or restate the config (GPU available: False ...)
CHATTY_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                  "lightning.pytorch.accelerators.cuda")


def quiet_libraries() -> None:
    for message, category, module in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class CompactProgressBar(RichProgressBar):
    """Lightning's Rich bar without the speed column, showing the training loss and the
    checkpoint's metric only."""

    def configure_columns(self, trainer) -> list:
        from lightning.pytorch.callbacks.progress.rich_progress import (
            BatchesProcessedColumn,
            CustomBarColumn,
            CustomTimeColumn,
        )
        from rich.progress import TextColumn

        theme = self.theme
        return [TextColumn("[progress.description]{task.description}"),
                CustomBarColumn(bar_width=10, complete_style=theme.progress_bar,
                                finished_style=theme.progress_bar_finished, pulse_style=theme.progress_bar_pulse),
                BatchesProcessedColumn(style=theme.batch_progress), CustomTimeColumn(style=theme.time)]

    def get_metrics(self, trainer, pl_module) -> dict:
        shown = trainer.progress_bar_metrics
        monitor = getattr(trainer.checkpoint_callback, "monitor", None) or "val/loss"
        return ({"loss": shown["train/loss"]} if "train/loss" in shown else {}) | (
            {monitor: shown[monitor]} if monitor in shown else {})
