"""Weights & Biases: what a finished run adds to its W&B run (config, summary metrics, plots, the
confusion matrix as a W&B plot, a table of test predictions, the adapter or weights as a model
artifact), reading an offline run back without a network, and the W&B Report of a sweep.

W&B stays optional: nothing here is imported unless `logger=wandb` is used or `lokal report`
runs, and wandb itself is imported inside the functions.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from lokal import LokalError

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

    from lokal.weights import ADAPTER_DIR, WEIGHTS_FILE

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
BLOCK = 32 * 1024  # the .wandb file is a LevelDB-style log: 32 KiB blocks of (crc, length, type) records
FILE_HEADER = struct.Struct("<4sHB")  # b":W&B", 0xBEE1, version 0
RECORD_HEADER = struct.Struct("<IHB")  # crc32, data length, type: 1 full, 2 first, 3 middle, 4 last


def wandb_runs(run_dir: str | Path) -> list[Path]:
    """The W&B run folders (RUN_DIR/wandb/offline-run-*-ID, or run-*-ID once online), oldest first."""
    folder = Path(run_dir) / "wandb"
    return sorted(p for p in folder.glob("*run-*") if p.is_dir() and RUN_FOLDER.match(p.name))


def wandb_run_id(folder: Path) -> str:
    return RUN_FOLDER.match(folder.name)["id"]


def wandb_records(path: str | Path) -> Iterator:
    """Every record (wandb.proto Record) of a run's `run-ID.wandb` file, in order.

    wandb 0.31 has no Python reader for offline runs any more (it is in wandb-core, in Go); the
    format is the one `wandb sync` uploads: LevelDB log blocks of serialized protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, magic, _ = FILE_HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1:
        raise LokalError(f"{path} is not a W&B run file (header {data[:7]!r})")
    pos, pending = FILE_HEADER.size, b""
    while pos + RECORD_HEADER.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD_HEADER.size:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = RECORD_HEADER.unpack_from(data, pos)
        if kind == 0:  # zero padding up to the end of the block
            pos += left
            continue
        if pos + RECORD_HEADER.size + length > len(data):  # a record still being written
            return
        chunk = data[pos + RECORD_HEADER.size: pos + RECORD_HEADER.size + length]
        pos += RECORD_HEADER.size + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def read_offline_run(run_dir: str | Path, wait_s: float = 10.0) -> dict:
    """What the latest W&B run of RUN_DIR holds, without a network: its `id`, `config`,
    `summary` (the last values), `history` (one dict per logged step), `artifacts` (name, type,
    metadata, files) and `files` (media saved under files/).

    wandb-core writes the file in the background: `run.finish()` can return before it has, so
    this waits up to `wait_s` for the run's closing (exit) record; a run still going, or killed,
    is read as far as it got."""
    runs = wandb_runs(run_dir)
    if not runs:
        raise LokalError(f"{run_dir} has no W&B run (no wandb/offline-run-* folder): train with logger=wandb")
    folder = runs[-1]
    out = {"id": wandb_run_id(folder), "dir": str(folder), "config": {}, "summary": {}, "history": [],
           "artifacts": [], "files": []}
    for record in closed_records(folder / f"run-{out['id']}.wandb", wait_s):
        kind = record.WhichOneof("record_type")
        if kind in ("config", "summary"):
            apply_items(out[kind], getattr(record, kind).update)
        elif kind == "history":
            out["history"].append(apply_items({}, record.history.item))
        elif kind == "artifact":
            out["artifacts"].append(artifact_entry(record.artifact))
        elif kind == "files":
            out["files"] += [f.path for f in record.files.files]
    return out


def closed_records(path: Path, wait_s: float) -> list:
    """The file's records once its exit record is in (or `wait_s` has passed)."""
    deadline = time.monotonic() + wait_s
    while True:
        records = list(wandb_records(path)) if path.is_file() else []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def apply_items(target: dict, items) -> dict:
    """Set each item's JSON value at its key (nested keys: nested dicts, e.g. an image's fields)."""
    for item in items:
        keys = list(item.nested_key) or [item.key]
        node = target
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = json.loads(item.value_json)
    return target


def artifact_entry(artifact) -> dict:
    return {"name": artifact.name, "type": artifact.type,
            "metadata": json.loads(artifact.metadata) if artifact.metadata else {},
            "files": {c.path: c.local_path for c in artifact.manifest.contents}}


# -- the W&B Report of a sweep ------------------------------------------------------------------
def publish_report(sweep_dir: str | Path, html_path: str | Path, entity: str | None = None,
                   project: str | None = None, title: str | None = None) -> str:
    """Build the sweep's W&B Report and save it online; returns its URL. Project and entity
    default to the runs' `logger.wandb` settings, then to "lokal" and the API key's entity."""
    from lokal.sweep_report import collect_runs, markdown_table

    reason = wandb_unavailable()
    if reason:
        raise LokalError(f"the HTML report is at {html_path}; for the W&B Report: {reason}")
    runs = collect_runs(sweep_dir)
    project = project or logged_setting(runs, "project") or "lokal"
    entity = entity or logged_setting(runs, "entity") or default_entity()
    pending = unsynced(runs)
    if pending:  # the report's run set fills in as they arrive
        print(f"{len(pending)} runs were logged offline and are not on W&B yet: wandb sync {' '.join(pending)}")
    report = build_report(runs, project, entity, title or f"lokal sweep: {Path(sweep_dir).name}",
                          description=markdown_table(runs))
    try:
        return save_report(report)
    except Exception as err:  # network, permissions, a missing project: all end the same way for the user
        raise LokalError(f"could not save the W&B Report ({err}); the HTML report is at {html_path}") from err


def logged_setting(runs: list[dict], key: str) -> str | None:
    """A `logger.wandb` setting (project, entity) the runs were trained with, if they agree on one."""
    values = {((r["config"].get("logger") or {}).get("wandb") or {}).get(key) for r in runs} - {None}
    return values.pop() if len(values) == 1 else None


def default_entity() -> str:
    import wandb

    return wandb.Api().default_entity


def build_report(runs: list[dict], project: str, entity: str, title: str = "lokal sweep",
                 description: str = "", metric: str = "test/accuracy"):
    """A W&B Report (wandb_workspaces.reports.v2) of a sweep's runs: a run set filtered to their
    W&B run ids, then val/accuracy over steps, `metric` against trainable parameters, the test
    metrics side by side, the confusion matrices, and the run table with those columns pinned;
    `description` (Markdown, e.g. the run table as it was) above them. No network: `save_report` uploads.

    `runs`: one dict per run with `wandb_ids` and `metrics` (lokal.sweep_report.collect_runs)."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    ids = [i for r in runs for i in r["wandb_ids"]]
    if not ids:
        raise LokalError("no run of this sweep logged to W&B: train with logger=wandb")
    tests = sorted({k for r in runs for k in r["metrics"] if k.startswith("test/") and k.count("/") == 1})
    runset = wr.Runset(entity=entity, project=project, name="sweep", filters=[expr.Metric("ID").isin(ids)],
                       pinned_columns=["run:displayName"] + [f"summary:{k}" for k in (*tests, "trainable_params")])
    panels = [
        wr.LinePlot(title="val/accuracy", x="trainer/global_step", y=["val/accuracy"]),
        wr.ScatterPlot(title=f"{metric} vs trainable parameters", x=wr.SummaryMetric("trainable_params"),
                       y=wr.SummaryMetric(metric), log_x=True),
        wr.BarPlot(title="test metrics", metrics=[wr.SummaryMetric(k) for k in tests] or [metric]),
        wr.MediaBrowser(title="confusion matrices", media_keys=["plots/confusion_matrix"], num_columns=3),
    ]
    blocks = [wr.MarkdownBlock(text=description), wr.PanelGrid(runsets=[runset], panels=panels)]
    return wr.Report(project=project, entity=entity, title=title, description=f"{len(ids)} lokal runs",
                     blocks=blocks)


def wandb_unavailable() -> str | None:
    """Why a W&B Report cannot be saved from here, and what to do (offline mode, no API key), or None."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return f"WANDB_MODE={mode} keeps W&B offline: unset it (or set WANDB_MODE=online) and retry"
    import wandb

    try:
        wandb.Api()
    except wandb.errors.UsageError:
        return "no W&B API key: run `wandb login` and retry"
    return None


def save_report(report) -> str:
    """Upload the report (needs a network and an API key); returns its URL."""
    report.save()
    return report.url


def unsynced(runs: list[dict]) -> list[str]:
    """The offline W&B run folders `wandb sync` has not uploaded yet (it leaves run-ID.wandb.synced)."""
    folders = [Path(f) for r in runs for f in r["wandb_dirs"]]
    return [str(f) for f in folders
            if f.name.startswith("offline-") and not (f / f"run-{wandb_run_id(f)}.wandb.synced").exists()]
