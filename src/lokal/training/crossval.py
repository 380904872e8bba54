"""k-fold cross-validation around the single-run path in lokal.run: fold i is a complete run
in RUN_DIR/fold_i; cv.json and metrics.json summarise the folds."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from lokal.errors import LokalError
from lokal.io import write_json
from lokal.paths import FINISHED, FOLD_DIR

log = logging.getLogger(__name__)


def cross_validate(cfg: DictConfig, train_run: Callable[[DictConfig], dict]) -> dict:
    """k-fold cross-validation: fold i is a complete run in `run_dir/fold_i` (its own config,
    checkpoints and metrics.json), so a killed run started again skips the finished folds and
    resumes the current one from its last checkpoint. Writes `cv.json` (every fold, mean, std)
    and `metrics.json` (the means, plus `<metric>_std`), and returns the latter. `train_run`
    trains one fold's config (lokal.run.train_run)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    folds = check_folds(cfg.data.folds)
    results = [run_fold(fold_config(cfg, i), train_run) for i in range(folds)]
    summary = summarise_folds(results)
    metrics = mean_metrics(results) | {f"{k}_std": v for k, v in summary["std"].items()}
    if rank_zero_only.rank == 0:
        run_dir = Path(cfg.paths.run_dir)
        write_json(run_dir / "cv.json", summary)
        write_json(run_dir / FINISHED, metrics)
        print_folds(summary, run_dir)
    return metrics


def check_folds(folds) -> int:
    """The fold count, checked here too: the loop needs it before any data module loads."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise LokalError(f"data.folds={folds}: k-fold cross-validation needs 2 or more folds (e.g. data.folds=5); "
                         "data.folds=0 trains one train/val/test split")
    return folds


def fold_config(cfg: DictConfig, fold: int) -> DictConfig:
    """The run's config for one fold: `data.fold` set, and a directory of its own below the run's
    (checkpoints, logs and metrics follow `paths.run_dir`)."""
    import copy

    from omegaconf import open_dict

    fold_cfg = copy.deepcopy(cfg)
    with open_dict(fold_cfg):
        fold_cfg.data.fold = fold
        fold_cfg.paths.run_dir = str(Path(cfg.paths.run_dir) / FOLD_DIR.format(fold))
    return fold_cfg


def run_fold(cfg: DictConfig, train_run: Callable[[DictConfig], dict]) -> dict:
    """Train one fold, or read its metrics if it finished before (metrics.json is written last)."""
    from lokal.training.rundir import finished_metrics, is_finished

    run_dir = Path(cfg.paths.run_dir)
    if is_finished(run_dir):
        log.info("fold %d finished before: using %s/metrics.json", cfg.data.fold, run_dir)
        return finished_metrics(run_dir)
    log.info("fold %d of %d in %s", cfg.data.fold, cfg.data.folds, cfg.paths.run_dir)
    return train_run(cfg)


def summarise_folds(results: list[dict]) -> dict:
    """Every fold's val/ and test/ metrics with their mean and sample std (ddof=1: the k
    folds are a sample of the splits the data allows, not all of them)."""
    import numpy as np

    keys = sorted(k for k in results[0] if k.startswith(("val/", "test/")) and all(k in r for r in results))
    values = {k: np.array([r[k] for r in results], dtype=float) for k in keys}
    return {"folds": len(results), "fold_dirs": [FOLD_DIR.format(i) for i in range(len(results))],
            "per_fold": [{k: r[k] for k in keys} for r in results],
            "mean": {k: float(v.mean()) for k, v in values.items()},
            "std": {k: float(v.std(ddof=1)) for k, v in values.items()}}


def mean_metrics(results: list[dict]) -> dict:
    """The mean over folds of every number all folds report; equal values (parameter counts) stay as they are."""
    import numpy as np

    numeric = [k for k, v in results[0].items()
               if isinstance(v, int | float) and all(isinstance(r.get(k), int | float) for r in results)]
    values = {k: [r[k] for r in results] for k in numeric}
    return {k: v[0] if len(set(v)) == 1 else float(np.mean(v)) for k, v in values.items()} | {"folds": len(results)}


def print_folds(summary: dict, run_dir: Path) -> None:
    print(f"\n{summary['folds']}-fold cross-validation ({run_dir}): mean +/- std (fold values)")
    for key, mean in summary["mean"].items():
        values = ", ".join(f"{fold[key]:.4f}" for fold in summary["per_fold"])
        print(f"{key}: {mean:.4f} +/- {summary['std'][key]:.4f} ({values})")
