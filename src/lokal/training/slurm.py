"""Sweeps on Slurm: hydra-submitit-launcher's SlurmLauncher, checked before anything is submitted.

`python train.py -m hydra/launcher=slurm method=lora,bitfit` (src/lokal/conf/hydra/launcher/slurm.yaml) runs
each run as one task of a Slurm job array. What lokal adds to the plugin:

- before the sweep folder exists or a job is submitted, Slurm itself is asked: `sbatch`, `srun` and
  `sinfo` on PATH, the partition exists (or the cluster has a default one), the numbers make sense;
  each problem is one `LokalError` saying how to fix it;
- a submission sbatch refuses anyway (an unknown account, more memory than a node has) leaves no
  sweep folder behind;
- submitit warns with the signal lokal's Requeue callback listens for (SIGUSR1, as the sbatch
  templates in slurm/ do), so a preempted or timed-out run saves last.ckpt at a batch boundary and
  is requeued into the same run folder;
- a run stopped by bad input reports its message, and a failed run does not hide the others.

Hydra imports this module at every start (plugin scan): submitit is imported inside.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import DictConfig, OmegaConf

from lokal.errors import LokalError

log = logging.getLogger(__name__)

NO_SLURM = "install Slurm or use the local launcher: drop hydra/launcher=slurm"
SWEEP_FILES = {"multirun.yaml", ".submitit"}  # all a sweep folder holds before its first run starts
POSITIVE = ("timeout_min", "nodes", "tasks_per_node", "array_parallelism")  # required, >= 1
OPTIONAL_POSITIVE = ("cpus_per_task", "mem_gb")  # null, or >= 1
NAMES = ("partition", "account", "qos", "name")  # null, or a non-empty name


class SlurmLauncher(SubmititSlurmLauncher):
    """hydra-submitit-launcher's SlurmLauncher that checks the cluster first (lokal.training.slurm)."""

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        try:
            check_cluster(self.params)
        except LokalError as err:
            stop(err)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.sweep_dir_existed = self.sweep_dir.exists()  # a resumed sweep's folder is never removed
        self.params["setup"] = [*(self.params.get("setup") or []), *signal_setup(config)]

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        executor = self.executor()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            self.sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))
        log.info("Slurm sweep: %d runs in %s", len(job_overrides), self.sweep_dir)
        job_params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        try:
            jobs = executor.map_array(self, *zip(*job_params, strict=True))
        except Exception as err:  # sbatch refused: what it said is the message
            self.discard_sweep_dir()
            stop(LokalError(f"sbatch refused the sweep: {err}. Fix hydra.launcher.* (src/lokal/conf/hydra/launcher/"
                            f"slurm.yaml); nothing was submitted"))
        log.info("submitted Slurm jobs %s (squeue --me; logs in %s)", ", ".join(j.job_id for j in jobs),
                 self.params["submitit_folder"].replace("%j", "<job id>"))
        return wait_for(jobs)

    def __call__(self, *args: Any) -> JobReturn:
        """In the job: a run stopped by bad input raises its LokalError, so submitit reports it to
        the sweep (Hydra would return it inside a JobReturn, and its cause would not survive pickling)."""
        from hydra.core.utils import JobStatus

        from lokal.errors import find_lokal_error

        try:
            result = super().__call__(*args)
        except SystemExit as exit:
            if exit.code != 2:  # e.g. submitit's own exit after requeueing: the job runs again
                raise
            raise find_lokal_error(exit.__context__) or LokalError("the run stopped on bad input: its log says "
                                                                   "why") from None
        error = find_lokal_error(result._return_value) if result.status == JobStatus.FAILED else None
        if error is not None:
            raise error from None
        return result

    def executor(self):
        """submitit's Slurm executor with this config (as the plugin builds it)."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        params = dict(self.params)
        executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                         slurm_max_num_timeout=params.pop("max_num_timeout"))
        shared = set(OmegaConf.structured(BaseQueueConf).keys())  # the rest is Slurm's (slurm_ prefix)
        executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
        return executor

    def discard_sweep_dir(self) -> None:
        """Remove the sweep folder this launch made, if no run has written to it."""
        if not self.sweep_dir_existed and self.sweep_dir.is_dir():
            if {p.name for p in self.sweep_dir.iterdir()} <= SWEEP_FILES:
                shutil.rmtree(self.sweep_dir)
                log.info("removed %s: nothing ran", self.sweep_dir)


def wait_for(jobs: list) -> list[JobReturn]:
    """Every job's result; failures are reported together once all have ended."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    logging.getLogger("submitit").addFilter(OnceOnly("Bypassing sacct error"))
    results, failed = [], []
    for job in jobs:
        try:
            results.append(job.results()[0])
        except (FailedJobError, UncompletedJobError) as err:
            failed.append(f"job {job.job_id}: {error_line(str(err))} (log: {job.paths.stderr})")
    if failed:
        stop(LokalError(f"{len(failed)} of {len(jobs)} Slurm runs failed:\n  " + "\n  ".join(failed)), code=1)
    return results


class OnceOnly(logging.Filter):
    """submitit polls `sacct`, which fails where Slurm keeps no accounting (the local test
    cluster): without it a job killed outright is never noticed, but saying so once is enough."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.seen = text, False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.text not in record.getMessage():
            return True
        seen, self.seen = self.seen, True
        return not seen


def error_line(text: str) -> str:
    """The last line of the traceback submitit puts between two dashed lines: the error itself."""
    parts = text.split("-" * 22)
    lines = [line.strip() for line in (parts[1] if len(parts) >= 3 else text).splitlines() if line.strip()]
    return lines[-1].removeprefix("lokal.LokalError: ") if lines else text


def stop(error: LokalError, code: int = 2):
    """As the CLI does for the user's errors: the message, no traceback."""
    print(f"\nlokal: {error}", file=sys.stderr)
    raise SystemExit(code) from None


# -- checks before anything is submitted -----------------------------------------------------
def check_cluster(params: dict) -> None:
    """Raise a LokalError for what would make the sweep fail at or after submission."""
    for tool in ("sbatch", "srun", "sinfo"):
        if shutil.which(tool) is None:
            raise LokalError(f"`{tool}` not found on PATH: {NO_SLURM} (locally: sudo bash slurm/setup_local.sh)")
    check_fields(params)
    check_partition(params.get("partition"), *partitions())


def check_fields(params: dict) -> None:
    for key in POSITIVE:
        if not isinstance(params.get(key), int) or params[key] < 1:
            raise LokalError(f"hydra.launcher.{key} is {params.get(key)!r}: it is required and must be a whole "
                             f"number >= 1 (src/lokal/conf/hydra/launcher/slurm.yaml)")
    for key in OPTIONAL_POSITIVE:
        if params.get(key) is not None and params[key] <= 0:
            raise LokalError(f"hydra.launcher.{key} is {params[key]!r}: set a number > 0, or null")
    if params.get("gpus_per_node") is not None and params["gpus_per_node"] < 0:
        raise LokalError(f"hydra.launcher.gpus_per_node is {params['gpus_per_node']!r}: set 0 or more, or null")
    for key in NAMES:
        if params.get(key) is not None and not str(params[key]).strip():
            raise LokalError(f"hydra.launcher.{key} is empty: set a name, or null for the cluster's default")


def partitions() -> tuple[list[str], str | None]:
    """The cluster's partitions and its default one (`sinfo` marks it with *)."""
    result = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60)
    if result.returncode:
        raise LokalError(f"`sinfo` failed ({result.stderr.strip()}): is Slurm running? (locally: sudo bash "
                         f"slurm/setup_local.sh); or {NO_SLURM}")
    names = list(dict.fromkeys(result.stdout.split()))
    default = next((n.rstrip("*") for n in names if n.endswith("*")), None)
    return [n.rstrip("*") for n in names], default


def check_partition(partition: str | None, names: list[str], default: str | None) -> None:
    listed = ", ".join(names) or "none"
    if partition is None:
        if default is None:
            raise LokalError(f"hydra.launcher.partition is not set and this cluster has no default partition: "
                             f"set hydra.launcher.partition=NAME (partitions: {listed})")
        return
    unknown = [p for p in str(partition).split(",") if p.strip() not in names]  # sbatch takes a list
    if unknown:
        raise LokalError(f"partition {', '.join(unknown)!s} does not exist on this cluster: set "
                         f"hydra.launcher.partition to one of: {listed} (`sinfo` lists them)")


# -- preemption -------------------------------------------------------------------------------
def signal_setup(config: DictConfig) -> list[str]:
    """submitit warns with SIGUSR2 unless told otherwise; lokal's Requeue callback listens for
    callbacks.preemption.signal_name (SIGUSR1, like slurm/*.sbatch). Both sides are told: the
    `--signal=` line this process writes, and the job's submitit (its handler, via the variable)."""
    from submitit.core.job_environment import JobEnvironment

    name = str(OmegaConf.select(config, "callbacks.preemption.signal_name", default=None) or "SIGUSR1")
    short = name.removeprefix("SIG")
    JobEnvironment.USR_SIG = short  # the class read SUBMITIT_PREEMPT_SIGNAL when submitit was imported
    return [f"export SUBMITIT_PREEMPT_SIGNAL={short}"]
