"""The one place that reads the Hydra config: build data, model, method and trainer,
train, test the best checkpoint, and write the run directory."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lokal.io import write_text
from lokal.tasks import make_task, task_of
from lokal.training.build import build
from lokal.training.rundir import resume_checkpoint
from lokal.training.trainer import make_trainer, own_process_group

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Fine-tune as configured; returns the metrics also written to `metrics.json`.

    With `data.folds=k` (k >= 2): one run per fold and their mean (`cross_validate`). A run
    folder that finished before (it has metrics.json) is not trained again: its metrics are
    returned, so a sweep started again skips its finished runs."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from lokal.training.config_checks import check_ranges
    from lokal.training.rundir import claim_run_folder, finished_metrics, is_finished, run_lock

    run_dir = Path(cfg.paths.run_dir)
    check_ranges(cfg)
    claim_run_folder(run_dir, cfg, is_main=rank_zero_only.rank == 0)
    if is_finished(run_dir):
        log.warning("%s finished before: returning its metrics.json (a new folder trains anew)", run_dir)
        return finished_metrics(run_dir)
    with run_lock(run_dir, is_main=rank_zero_only.rank == 0), own_process_group():
        if cfg.data.get("folds"):  # 0 / absent: one train/val/test split
            from lokal.training.crossval import cross_validate

            return cross_validate(cfg, train_run)
        return train_run(cfg)


def train_run(cfg: DictConfig) -> dict:
    """One run of any task (lokal.tasks): measure the bars to beat, train, score the best
    checkpoint, write everything to `paths.run_dir` (metrics.json last)."""
    from hydra.utils import instantiate

    from lokal.evaluation import evaluation_settings
    from lokal.training.timeline import Timeline

    timeline = Timeline()
    timeline.mark("start")
    prepare_process(cfg.seed)
    run_dir = Path(cfg.paths.run_dir)
    method = instantiate(cfg.method)
    settings = evaluation_settings(cfg)  # before training: a misspelled evaluation key fails now
    datamodule, model = build(cfg, method)
    timeline.mark("data_and_model")
    task = make_task(task_of(datamodule), settings)
    base = forgetting_base(model, settings)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module = task.module(model, instantiate(cfg.optimizer), scheduler, instantiate(cfg.loss), method, datamodule)
    trainer = make_trainer(cfg, model, timeline)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    before = task.before_training(module, datamodule, trainer)
    timeline.mark("baselines")

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_checkpoint(run_dir))
    train_time = round(time.perf_counter() - start, 2)
    metrics = task.evaluate(trainer, module, datamodule) | before | {"train_time_s": train_time}
    metrics |= measure_forgetting(base, module.model, settings)
    timeline.mark("scoring")
    metrics |= timeline.metrics()
    if trainer.is_global_zero:
        metrics = task.write_outputs(trainer, module, datamodule, metrics, run_dir)
    return metrics


def prepare_process(seed: int) -> None:
    """One console line per message, library notes silenced, glibc's allocator kept from
    returning buffers every step, every RNG seeded."""
    import lightning as L

    from lokal.training.console import quiet_libraries
    from lokal.training.system import tune_malloc

    if logging.getLogger().handlers:  # Hydra already logs to the console and train.log:
        logging.getLogger("lightning").handlers.clear()  # drop lightning's own copy of each line
    tune_malloc()
    quiet_libraries()
    L.seed_everything(seed, workers=True, verbose=False)


def forgetting_base(model, settings):
    """The base the forgetting meter compares against, taken before training (None for PEFT
    models without BatchNorm: their adapters disabled are the base)."""
    if not settings.forgetting:
        return None
    from lokal.evaluation.forgetting import base_copy, prepare_reference

    prepare_reference(model, settings.forgetting_reference)
    return base_copy(model)


def measure_forgetting(base, tuned, settings) -> dict:
    """forgetting/* metrics (linear CKA on a general reference set; perplexity for causal LMs)
    with the best checkpoint loaded, when evaluation.forgetting is on."""
    if not settings.forgetting:
        return {}
    from lokal.evaluation.forgetting import forgetting_report, summary_line

    report = forgetting_report(base, tuned, settings.forgetting_reference)
    log.info(summary_line(report))
    return report
