"""Weights & Biases, during a run: what a finished run adds to its W&B run (config, summary
metrics, plots, the confusion matrix as a W&B plot, a table of test predictions, the adapter or
weights as a model artifact), and where a run folder keeps its W&B runs.

W&B stays optional: nothing here is imported unless `logger=wandb` is used, and wandb itself is
imported inside the functions.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.csv"
TABLE_ROWS = 10_000  # W&B tables past this load slowly in the browser; the full file stays in the run dir
THUMBNAILS = 200  # image rows that get a thumbnail (log_texts=true): enough to eyeball errors
THUMBNAIL_SIZE = 96
RUN_FOLDER = re.compile(r"(?:offline-)?run-\d{8}_\d{6}-(?P<id>[a-z0-9]+)$")


# -- logging a finished run ---------------------------------------------------------------------
def log_run_to_wandb(loggers: Iterable, run_dir: str | Path, metrics: dict, class_names: list[str] | None = None,
                     predictions: pd.DataFrame | None = None, records: pd.DataFrame | None = None,
                     log_texts: bool = False) -> bool:
    """Add a finished run to the W&B run of its `WandbLogger` (if `loggers` has one), then close it.

    Logs the resolved config, `metrics` as the summary, every PNG in RUN_DIR/plots/, the confusion
    matrix as a W&B plot and a table of test predictions (from `predictions`, else
    RUN_DIR/predictions.csv; `class_names` default to its prob/<class> columns), and `adapter/`
    or `weights.safetensors` as a "model" artifact.
    The table holds ids, labels and probabilities; the texts (or image thumbnails) and metadata
    columns of `records` join it only with `log_texts=True`: they may be private.
    Closing the run matters: the next run in the same process (a k-fold fold, the next job of a
    sweep) would otherwise log into this one. Returns whether there was a W&B run to log to."""
    run = wandb_experiment(loggers)
    if run is None:
        return False
    run_dir = Path(run_dir)
    if predictions is None and (run_dir / PREDICTIONS).is_file():
        predictions = pd.read_csv(run_dir / PREDICTIONS)
    try:
        log_results(run, run_dir, metrics, class_names, predictions, records if log_texts else None)
    finally:
        run.finish()
    return True


def log_results(run, run_dir: Path, metrics: dict, class_names: list[str] | None, predictions: pd.DataFrame | None,
                records: pd.DataFrame | None) -> None:
    run.name = run.name or run_dir.name  # offline runs get a name only when synced: the folder's
    run.config.update(run_config(run_dir), allow_val_change=True)
    run.summary.update({k: v for k, v in metrics.items() if isinstance(v, int | float | str)})
    media = plot_images(run_dir)
    if predictions is not None and len(predictions):
        names = [str(c) for c in class_names] if class_names else [c[5:] for c in predictions if c.startswith("prob/")]
        media["test/confusion_matrix"] = confusion_plot(predictions, names)
        media["test/predictions"] = predictions_table(predictions, records)
    if media:
        run.log(media)
    artifact = model_artifact(run_dir, run.id, metrics)
    if artifact is not None:
        run.log_artifact(artifact)


def wandb_experiment(loggers: Iterable):
    """The wandb Run to log to: the first WandbLogger's in `loggers` (a trainer's), or a wandb Run
    given as is; None when there is neither."""
    for item in loggers:
        if type(item).__module__.split(".")[0] == "wandb":  # a Run (wandb.init) itself
            return item
        from lightning.pytorch.loggers import WandbLogger  # loaded already wherever a Trainer ran

        if isinstance(item, WandbLogger):
            return item.experiment
    return None


def run_config(run_dir: Path) -> dict:
    """The run's resolved config (config.yaml) as nested dicts: W&B's run table filters on it."""
    from omegaconf import OmegaConf

    path = run_dir / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}


def plot_images(run_dir: Path) -> dict:
    """`plots/<name>` -> wandb.Image for every PNG lokal wrote (RUN_DIR/plots/*.png)."""
    import wandb

    return {f"plots/{png.stem}": wandb.Image(str(png)) for png in sorted((run_dir / "plots").glob("*.png"))}


def confusion_plot(predictions: pd.DataFrame, class_names: list[str]):
    """The interactive W&B confusion matrix (wandb.plot), from the true and predicted class names."""
    import wandb

    ids = {name: i for i, name in enumerate(class_names)}
    y_true = predictions["label"].astype(str).map(ids).tolist()
    preds = predictions["predicted"].astype(str).map(ids).tolist()
    return wandb.plot.confusion_matrix(y_true=y_true, preds=preds, class_names=class_names,
                                       title="test confusion matrix")


def predictions_table(predictions: pd.DataFrame, records: pd.DataFrame | None = None):
    """wandb.Table of the first TABLE_ROWS test predictions: id, label, predicted, confidence,
    correct, prob/<class>; with `records` (log_texts=true) also each example's text or image
    thumbnail, and the group and metadata columns."""
    import wandb

    rows = predictions.head(TABLE_ROWS)
    if len(predictions) > TABLE_ROWS:
        log.info("W&B predictions table: the first %d of %d rows (all are in %s)", TABLE_ROWS, len(predictions),
                 PREDICTIONS)
    if records is None:
        rows = rows[[c for c in rows if c in ("id", "label", "predicted", "confidence", "correct")
                     or c.startswith("prob/")]]
    else:
        rows = rows.drop(columns=["split"], errors="ignore").join(samples(rows, records))
    rows = rows.astype(object).where(rows.notna(), None)  # a missing text is None, not a float NaN
    return wandb.Table(columns=list(rows.columns), data=rows.to_numpy().tolist())  # dataframe= would str() images


def samples(predictions: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """Per prediction row (same index), the example itself from `records` (datamodule.records(),
    matched on id within the test split): a `text` column, or an `image` thumbnail column."""
    test = records[records["split"] == "test"].drop_duplicates("id")
    test.index = test["id"].astype(str)
    rows = test.reindex(predictions["id"].astype(str)).set_axis(predictions.index)
    if "text" in rows:
        return rows[["text"]]
    if "path" in rows:
        return pd.DataFrame({"image": [thumbnail(p) if i < THUMBNAILS else None for i, p in enumerate(rows["path"])]},
                            index=rows.index)
    return rows[[]]


def thumbnail(path) -> object:
    """A small wandb.Image of an image file (None if it cannot be read: the table still logs)."""
    import wandb
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            return wandb.Image(image.convert("RGB"))
    except (OSError, ValueError, TypeError):
        return None


def model_artifact(run_dir: Path, run_id: str, metrics: dict):
    """A "model" artifact of what the run trained (adapter/ or weights.safetensors) with its
    config.yaml and metrics.json, so a downloaded artifact is a run directory `lokal predict`
    can load. Files are referenced, not copied ("immutable"): a finished run's files do not change,
    and W&B would otherwise keep a second copy of every model in ~/.local/share/wandb until synced."""
    import wandb

    from lokal.training.weights import ADAPTER_DIR, WEIGHTS_FILE

    adapter, weights = run_dir / ADAPTER_DIR, run_dir / WEIGHTS_FILE
    if not adapter.is_dir() and not weights.is_file():
        return None
    kind = "adapter" if adapter.is_dir() else "weights"
    summary = {k: v for k, v in metrics.items() if isinstance(v, int | float)
               and (k.startswith(("test/", "val/")) or k.endswith("_params"))}
    artifact = wandb.Artifact(f"{kind}-{run_id}", type="model", metadata=summary,
                              description=f"lokal run {run_dir.name}: the trained {kind}, config.yaml, metrics.json")
    if adapter.is_dir():
        artifact.add_dir(str(adapter), name=ADAPTER_DIR, policy="immutable")
    else:
        artifact.add_file(str(weights), policy="immutable")
    for name in ("config.yaml", "metrics.json"):
        if (run_dir / name).is_file():
            artifact.add_file(str(run_dir / name), policy="immutable")
    return artifact


# -- reading an offline run back ------------------------------------------------------------------


def wandb_runs(run_dir: str | Path) -> list[Path]:
    """The W&B run folders (RUN_DIR/wandb/offline-run-*-ID, or run-*-ID once online), oldest first."""
    folder = Path(run_dir) / "wandb"
    return sorted(p for p in folder.glob("*run-*") if p.is_dir() and RUN_FOLDER.match(p.name))


def wandb_run_id(folder: Path) -> str:
    return RUN_FOLDER.match(folder.name)["id"]
