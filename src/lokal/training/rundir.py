"""Run folders: finished or not, the checkpoint to continue from, who is using it, and finding an
unfinished one again. No torch import: train.py registers the resolver before Hydra starts.

- `find_unfinished_run` (the `lokal_run_dir` resolver in `hydra.run.dir`): the same command
  started again after a crash finds its own unfinished run folder instead of making a new one;
- `run_lock`: marks a folder as in use, so a second copy of a command never resumes a live run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lokal.paths import FINISHED

log = logging.getLogger(__name__)

LOCK = "run.lock"
RECORD = Path(".lokal")  # the config a folder's run started with, and a copy of Hydra's own record of it
HYDRA_RECORD = Path(".hydra")
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / FINISHED).is_file()


def finished_metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / FINISHED).read_text())


def resume_checkpoint(run_dir: Path) -> str | None:
    """The checkpoint an unfinished run continues from, if it saved one."""
    last = Path(run_dir) / LAST_CHECKPOINT
    return str(last) if last.is_file() else None


# -- one folder, one config ---------------------------------------------------------------------
def claim_run_folder(run_dir: Path, cfg, is_main: bool = True) -> None:
    """Refuse a folder that holds a run of another config (naming the keys that differ), putting
    back the `.hydra/` files Hydra already overwrote; else record this config as the folder's."""
    from omegaconf import OmegaConf

    from lokal.errors import LokalError
    from lokal.io import write_text
    from lokal.training.config_checks import check_same_config

    run_dir = Path(run_dir)
    saved = run_dir / RECORD / "config.yaml"
    try:
        check_same_config(saved if saved.is_file() else run_dir / "config.yaml", cfg)
    except LokalError:
        _copy_yaml(run_dir / RECORD / "hydra", run_dir / HYDRA_RECORD)
        raise
    if is_main and not saved.is_file():
        write_text(saved, OmegaConf.to_yaml(cfg, resolve=True))
        _copy_yaml(run_dir / HYDRA_RECORD, run_dir / RECORD / "hydra")


def _copy_yaml(source: Path, target: Path) -> None:
    from lokal.io import write_text

    for file in sorted(source.glob("*.yaml")):
        write_text(target / file.name, file.read_text(encoding="utf-8"))


def is_stub(run_dir: Path) -> bool:
    """A folder a failed start left with only Hydra's files in it (no config, checkpoint or result)."""
    run_dir = Path(run_dir)
    stub_files = {HYDRA_RECORD.name, RECORD.name, "train.log", LOCK}
    return run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= stub_files


# -- finding the run folder again ------------------------------------------------------------
def find_unfinished_run(new_dir: str, resume: bool = True) -> str:
    """`new_dir`, unless a folder beside it holds an unfinished run of the same command: then
    that folder. Hydra calls this (the `lokal_run_dir` resolver) when it picks `hydra.run.dir`."""
    if not resume:
        return new_dir
    from hydra.core.hydra_config import HydraConfig

    found = unfinished_run(Path(new_dir).parent, list(HydraConfig.get().overrides.task))
    if found is None:
        return new_dir
    log.warning("continuing the unfinished run in %s (same overrides; resume=false starts anew)", found)
    return str(found)


def unfinished_run(parent: Path, overrides: list[str]) -> Path | None:
    """The newest folder in `parent` started with these overrides that saved a checkpoint, has
    no metrics.json and no live lock."""
    for saved in sorted(parent.glob("*/.hydra/overrides.yaml"), key=os.path.getmtime, reverse=True):
        run_dir = saved.parent.parent
        if (resume_checkpoint(run_dir) and not is_finished(run_dir) and not lock_is_live(run_dir)
                and same_overrides(saved, overrides)):
            return run_dir
    return None


def same_overrides(saved: Path, overrides: list[str]) -> bool:
    from omegaconf import OmegaConf

    try:
        return sorted(OmegaConf.load(saved)) == sorted(overrides)
    except Exception:  # an unreadable folder is simply not ours
        return False


def register_resolvers() -> None:
    """Called by the CLI before Hydra starts (cheap: no torch import)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("lokal_run_dir"):
        OmegaConf.register_new_resolver("lokal_run_dir", find_unfinished_run)


# -- the lock --------------------------------------------------------------------------------
def lock_owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def lock_is_live(run_dir: Path) -> bool:
    """Is another process training in this folder? A lock from this Slurm job (requeued) or from
    a process on this host that no longer exists is stale; one from another host counts as live."""
    try:
        owner = json.loads((Path(run_dir) / LOCK).read_text())
    except (OSError, ValueError):
        return False
    job = os.environ.get("SLURM_JOB_ID")
    if job and owner.get("slurm_job_id") == job:
        return False
    if owner.get("host") != socket.gethostname():
        return True
    return pid_alive(int(owner.get("pid", 0)))


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def run_lock(run_dir: Path, is_main: bool = True) -> Iterator[None]:
    """Hold `run.lock` in `run_dir` while training (the main process only); removed at the end,
    left behind by a killed process, where `lock_is_live` recognises it as stale."""
    from lokal.errors import LokalError
    from lokal.io import write_json

    if not is_main:
        yield
        return
    if lock_is_live(run_dir):
        owner = json.loads((Path(run_dir) / LOCK).read_text())
        raise LokalError(f"{run_dir} is in use by process {owner.get('pid')} on {owner.get('host')}: wait for it, "
                         f"or if it is gone delete {Path(run_dir) / LOCK}")
    lock = write_json(Path(run_dir) / LOCK, lock_owner())
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
