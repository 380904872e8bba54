"""Weights & Biases after the runs: reading an offline run back without a network, and the W&B
Report of a sweep (`lokal report --wandb`). What a run logs itself: lokal.training.wandb.

W&B stays optional: nothing here is imported unless `logger=wandb` is used or `lokal report`
runs, and wandb itself is imported inside the functions.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from lokal.errors import LokalError
from lokal.training.wandb import wandb_run_id, wandb_runs

log = logging.getLogger(__name__)


BLOCK = 32 * 1024  # the .wandb file is a LevelDB-style log: 32 KiB blocks of (crc, length, type) records
FILE_HEADER = struct.Struct("<4sHB")  # b":W&B", 0xBEE1, version 0
RECORD_HEADER = struct.Struct("<IHB")  # crc32, data length, type: 1 full, 2 first, 3 middle, 4 last


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
    from lokal.runs.sweep_report import collect_runs, markdown_table

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

    `runs`: one dict per run with `wandb_ids` and `metrics` (lokal.runs.sweep_report.collect_runs)."""
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
