"""The Lightning Trainer as lokal runs it: checkpoints written atomically, Slurm's SIGUSR1 left to
lokal.training.preemption, a resumed run logging to its W&B run of before, one run folder per
run under DDP and inside a multirun."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from lokal.training.rundir import resume_checkpoint


def make_trainer(cfg: DictConfig, model, *extra_callbacks):
    """The configured Trainer, plus what resuming needs: checkpoints written atomically, Slurm's
    SIGUSR1 left to lokal.training.preemption.Requeue (Lightning's own auto-requeue saves mid-step), and a
    resumed run logging to its W&B run of before. `trainer.precision=auto` becomes the measured
    choice for `model` (lokal.training.precision). `extra_callbacks`: lokal's own (the run's Timeline)."""
    from hydra.utils import instantiate

    from lokal.training.precision import precision_plugins, resolve_precision

    resolve_precision(cfg.trainer, model)
    precision = precision_plugins(cfg.trainer)  # bf16 on a CPU: training steps only

    run_dir = Path(cfg.paths.run_dir)
    resuming = resume_checkpoint(run_dir) is not None
    relaunch_as_single_run()
    return instantiate(
        cfg.trainer,
        logger=[instantiate(c, **wandb_resume(c, run_dir) if resuming else {}) for c in cfg.logger.values()],
        callbacks=with_progress_bar([*(instantiate(c) for c in cfg.callbacks.values()), *extra_callbacks], cfg.trainer),
        plugins=trainer_plugins(cfg.trainer) + precision,
        **({"precision": None} if precision else {}),  # the plugin is the precision
    )


def with_progress_bar(callbacks: list, trainer_cfg: DictConfig) -> list:
    """lokal's compact bar, unless the bar is off or the config names its own."""
    from lightning.pytorch.callbacks import ProgressBar

    from lokal.training.console import CompactProgressBar

    if not trainer_cfg.get("enable_progress_bar", True) or any(isinstance(c, ProgressBar) for c in callbacks):
        return callbacks
    return [*callbacks, CompactProgressBar()]


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

    from lokal.training.resume import AtomicCheckpointIO

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
