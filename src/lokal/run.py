"""The one place that reads the Hydra config: build data, model, method and trainer,
train, test the best checkpoint, and write the run directory."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lokal import LokalError
from lokal.io import write_text
from lokal.rundir import resume_checkpoint
from lokal.tasks import make_task, task_of

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Fine-tune as configured; returns the metrics also written to `metrics.json`.

    With `data.folds=k` (k >= 2): one run per fold and their mean (`cross_validate`). A run
    folder that finished before (it has metrics.json) is not trained again: its metrics are
    returned, so a sweep started again skips its finished runs."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from lokal.config_checks import check_ranges
    from lokal.rundir import claim_run_folder, finished_metrics, is_finished, run_lock

    run_dir = Path(cfg.paths.run_dir)
    check_ranges(cfg)
    claim_run_folder(run_dir, cfg, is_main=rank_zero_only.rank == 0)
    if is_finished(run_dir):
        log.warning("%s finished before: returning its metrics.json (a new folder trains anew)", run_dir)
        return finished_metrics(run_dir)
    with run_lock(run_dir, is_main=rank_zero_only.rank == 0), own_process_group():
        if cfg.data.get("folds"):  # 0 / absent: one train/val/test split
            from lokal.crossval import cross_validate

            return cross_validate(cfg)
        return train_run(cfg)


def train_run(cfg: DictConfig) -> dict:
    """One run of any task (lokal.tasks): measure the bars to beat, train, score the best
    checkpoint, write everything to `paths.run_dir` (metrics.json last)."""
    import lightning as L
    from hydra.utils import instantiate

    from lokal.evaluation import evaluation_settings
    from lokal.system import tune_malloc
    if logging.getLogger().handlers:  # Hydra already logs to the console and train.log:
        logging.getLogger("lightning").handlers.clear()  # drop lightning's own copy of each line
    run_dir = Path(cfg.paths.run_dir)
    tune_malloc()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    method = instantiate(cfg.method)
    settings = evaluation_settings(cfg)  # before training: a misspelled evaluation key fails now
    datamodule, model = build(cfg, method)
    task = make_task(task_of(datamodule), settings)
    base = forgetting_base(model, settings)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module = task.module(model, instantiate(cfg.optimizer), scheduler, instantiate(cfg.loss), method, datamodule)
    trainer = make_trainer(cfg)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    before = task.before_training(module, datamodule, trainer)

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_checkpoint(run_dir))
    train_time = round(time.perf_counter() - start, 2)
    metrics = task.evaluate(trainer, module, datamodule) | before | {"train_time_s": train_time}
    metrics |= measure_forgetting(base, module.model, settings)
    if trainer.is_global_zero:
        metrics = task.write_outputs(trainer, module, datamodule, metrics, run_dir)
    return metrics


def forgetting_base(model, settings):
    """The base the forgetting meter compares against, taken before training (None for PEFT
    models without BatchNorm: their adapters disabled are the base)."""
    if not settings.forgetting:
        return None
    from lokal.forgetting import base_copy, check_supported

    check_supported(model)
    return base_copy(model)


def measure_forgetting(base, tuned, settings) -> dict:
    """forgetting/* metrics (linear CKA on a general reference set; perplexity for causal LMs)
    with the best checkpoint loaded, when evaluation.forgetting is on."""
    if not settings.forgetting:
        return {}
    from lokal.forgetting import forgetting_report, summary_line

    report = forgetting_report(base, tuned, settings.forgetting_reference)
    log.info(summary_line(report))
    return report


def make_trainer(cfg: DictConfig):
    """The configured Trainer, plus what resuming needs: checkpoints written atomically, Slurm's
    SIGUSR1 left to lokal.preemption.Requeue (Lightning's own auto-requeue saves mid-step), and a
    resumed run logging to its W&B run of before."""
    from hydra.utils import instantiate

    run_dir = Path(cfg.paths.run_dir)
    resuming = resume_checkpoint(run_dir) is not None
    relaunch_as_single_run()
    return instantiate(
        cfg.trainer,
        logger=[instantiate(c, **wandb_resume(c, run_dir) if resuming else {}) for c in cfg.logger.values()],
        callbacks=[instantiate(c) for c in cfg.callbacks.values()],
        plugins=trainer_plugins(cfg.trainer),
    )


HYDRA_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def relaunch_as_single_run() -> None:
    """Lightning starts DDP processes 1..n-1 by running this script again with its sys.argv plus
    `hydra.run.dir=<hydra.run.dir>`. Point that at this run's actual folder (the pattern would
    name a new one), and in a multirun job replace the argv, which would start the whole sweep
    again in every process, by this job's own overrides (keeping the flags naming the config)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    argv, flags = sys.argv[1:], []
    for i, arg in enumerate(argv):
        if arg.startswith(HYDRA_FLAGS):
            flags += [arg] if "=" in arg else argv[i:i + 2]
    sys.argv[1:] = flags + list(hydra_cfg.overrides.task)


@contextmanager
def own_process_group() -> Iterator[None]:
    """Lightning's DDP launcher leaves its process group and its variables (LOCAL_RANK,
    MASTER_PORT...) in the launching process; the next run of a multirun, trained in the same
    process, would join the finished run's group. Both are put back as they were after each run."""
    before = {key: os.environ.get(key) for key in LAUNCH_ENV}
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def trainer_plugins(trainer_cfg: DictConfig) -> list:
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from lokal.resume import AtomicCheckpointIO

    strategy = str(trainer_cfg.get("strategy", ""))
    plugins = [] if ("fsdp" in strategy or "deepspeed" in strategy) else [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def wandb_resume(logger_cfg: DictConfig, run_dir: Path) -> dict:
    """Keep the W&B run id of the interrupted run (its folder name under run_dir/wandb/ ends with it)."""
    if not str(logger_cfg.get("_target_", "")).endswith("WandbLogger") or logger_cfg.get("id"):
        return {}
    runs = sorted((run_dir / "wandb").glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
    return {"id": runs[-1].name.rsplit("-", 1)[-1], "resume": "allow"} if runs else {}


def build(cfg: DictConfig, method=None):
    """Data, then the model sized to its classes, then `method` (if given) applied once."""
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    check_task(cfg.model, datamodule)
    check_modality(cfg.model, datamodule)
    model = instantiate(cfg.model, **make_task(task_of(datamodule)).model_arguments(datamodule))
    datamodule.use_model(model)
    return datamodule, method.apply(model) if method is not None else model


EXAMPLE_MODELS = {"text": "model=minilm", "image": "model=efficientnet_lite0",
                  "audio": "model=whisper_tiny (transcripts) or model=whisper_tiny_classifier (labels)"}


def check_task(model_cfg: DictConfig, datamodule) -> None:
    """Instruction data needs a language model, labelled data a classifier: checked from the
    model's class, before its weights load."""
    from hydra.utils import get_class

    model_task, data_task = task_of(get_class(model_cfg._target_)), task_of(datamodule)
    if model_task != data_task:
        raise LokalError(f"data={data_choice(datamodule)} needs {make_task(data_task).models}; "
                         f"model {model_cfg.name} is a {model_task} model")


def check_modality(model_cfg: DictConfig, datamodule) -> None:
    """Text models read text, image models images, audio models audio: checked from the model's
    class, before its weights load."""
    from hydra.utils import get_class

    reads = get_class(model_cfg._target_).modality
    if reads != datamodule.modality:
        raise LokalError(f"model {model_cfg.name} reads {reads} but data={data_choice(datamodule)} gives "
                         f"{datamodule.modality}: pick {'an' if datamodule.modality[0] in 'aeiou' else 'a'} "
                         f"{datamodule.modality} model, e.g. "
                         f"{EXAMPLE_MODELS.get(datamodule.modality, '')}")


def data_choice(datamodule) -> str:
    """The data config's name when Hydra runs (e.g. indo_instruct), else the data module's class."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return HydraConfig.get().runtime.choices.get("data", type(datamodule).__name__)
    return type(datamodule).__name__


def load_run(run_dir: str | Path):
    """Rebuild a finished run (its data splits and its trained model) from its directory.

    The base model comes fresh from its source; only what the run trained is read from
    `adapter/` or `weights.safetensors`. Returns (datamodule, model) with the model in eval mode.
    """
    from hydra.utils import instantiate

    from lokal.crossval import FOLD_DIR
    from lokal.weights import ADAPTER_DIR, load_weights

    run_dir = Path(run_dir)
    first_fold = run_dir / FOLD_DIR.format(0)
    if first_fold.is_dir() and not (run_dir / "config.yaml").is_file():
        raise LokalError(f"{run_dir} is a k-fold run with one model per fold: load one, e.g. {first_fold}")
    if not (run_dir / "config.yaml").is_file():
        raise LokalError(f"{run_dir} is not a lokal run directory (no config.yaml)")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    is_adapter = (run_dir / ADAPTER_DIR).is_dir()
    datamodule, model = build(cfg, None if is_adapter else instantiate(cfg.method))
    return datamodule, load_weights(model, run_dir).eval()
