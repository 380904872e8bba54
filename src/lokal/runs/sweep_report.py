"""`lokal report SWEEP_DIR`: a sweep's runs in one self-contained HTML file (no network, no
external files: plots are embedded as base64 PNGs), the same content as its W&B Report:
the run table (metrics.json, config.yaml, the overrides that differ), validation accuracy over
steps, a test metric against trainable parameters, and every run's own plots."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import time
from pathlib import Path

from lokal.errors import LokalError
from lokal.markup import page_head

# the run-table columns, in this order, when any run has them (per-class metrics stay in each run's plots)
HEADLINE = ("test/accuracy", "test/balanced_accuracy", "test/f1_macro", "test/f1_micro", "test/auroc", "test/ece",
            "val/accuracy")
RESOURCES = ("trainable_params", "trainable_percent", "peak_memory_mb", "train_time_s")
LOWER_IS_BETTER = ("test/ece",)  # calibration error; every other quality column: higher is better


def find_runs(sweep_dir: str | Path) -> list[Path]:
    """Finished runs under `sweep_dir` (folders with metrics.json and config.yaml, or cv.json for
    k-fold runs, whose fold_i folders count as part of them), in job order. A run folder itself
    is a sweep of one."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise LokalError(f"{sweep} is not a folder: give a sweep's folder, e.g. outputs/multirun/DATE_TIME")
    found = {p.parent for p in sweep.rglob("metrics.json")
             if (p.parent / "config.yaml").is_file() or (p.parent / "cv.json").is_file()}
    runs = [r for r in found if not any(parent in found for parent in r.parents)]
    if not runs:
        raise LokalError(f"{sweep} holds no finished lokal run (a folder with metrics.json and config.yaml): "
                         "give a sweep's folder, e.g. outputs/multirun/DATE_TIME")
    return sorted(runs, key=lambda r: natural_key(r.relative_to(sweep).as_posix()))


def natural_key(text: str) -> list:
    """'2_lora' before '10_full': multirun folders start with the job number."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


def collect_runs(sweep_dir: str | Path) -> list[dict]:
    """One dict per run: name, dir, metrics (metrics.json), method, model, overrides (the
    differing ones in `changes`), and its W&B run ids and folders (`wandb_ids`, `wandb_dirs`:
    one per fold for a k-fold run, none when it did not log to W&B)."""
    from lokal.training.wandb import wandb_run_id

    sweep = Path(sweep_dir)
    runs = []
    for run_dir in find_runs(sweep):
        config = read_yaml(run_dir / "config.yaml") or read_yaml(run_dir / "fold_0" / "config.yaml") or {}
        folders = latest_wandb_runs(run_dir)
        runs.append({"name": run_dir.relative_to(sweep).as_posix() if run_dir != sweep else run_dir.name,
                     "dir": str(run_dir), "metrics": json.loads((run_dir / "metrics.json").read_text()),
                     "method": class_name((config.get("method") or {}).get("_target_")),
                     "model": model_name((config.get("model") or {}).get("name")),
                     "overrides": read_yaml(run_dir / ".hydra" / "overrides.yaml") or [],
                     "wandb_ids": [wandb_run_id(f) for f in folders], "wandb_dirs": [str(f) for f in folders],
                     "config": config})
    listed = [set(r["overrides"]) for r in runs if r["overrides"]]  # runs started outside Hydra list none
    common = set.intersection(*listed) if listed else set()
    for run in runs:
        run["changes"] = [o for o in run["overrides"] if o not in common]
    return runs


def latest_wandb_runs(run_dir: Path) -> list[Path]:
    """The latest W&B run folder of a run, or of each fold of a k-fold run (a run resumed after
    a kill starts a new W&B run; the last one holds its end)."""
    from lokal.training.wandb import wandb_runs

    parts = [run_dir, *sorted(run_dir.glob("fold_*"), key=lambda d: natural_key(d.name))]
    return [folders[-1] for folders in map(wandb_runs, parts) if folders]


def read_yaml(path: Path):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else None


def class_name(target) -> str:
    """`lokal.methods.lora.LoRA` -> LoRA."""
    return str(target or "").rsplit(".", 1)[-1]


def model_name(name) -> str:
    """A Hub id or local model path -> its last part (shipped models are long local paths)."""
    return re.split(r"[/\\]", str(name or "").rstrip("/\\"))[-1]


def metric_columns(runs: list[dict]) -> list[str]:
    present = {k for r in runs for k in r["metrics"]}
    extra = sorted(k for k in present if k.startswith("forgetting/") and k.count("/") == 1)
    return [k for k in (*HEADLINE, *extra, *RESOURCES) if k in present]


def markdown_table(runs: list[dict]) -> str:
    """The run table as Markdown (the W&B Report's text block)."""
    columns = metric_columns(runs)
    lines = ["| run | method | model | overrides | " + " | ".join(columns) + " |",
             "|---" * (4 + len(columns)) + "|"]
    for run in runs:
        values = [format_value(run["metrics"].get(c)) for c in columns]
        changes = ", ".join(run["changes"]) or run["method"]
        lines.append(f"| {run['name']} | {run['method']} | {run['model']} | {changes} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def format_value(value) -> str:
    if not isinstance(value, int | float):
        return ""
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4f}"


# -- HTML -----------------------------------------------------------------------------------------
STYLE = """table{font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}td.name,th.name{text-align:left}
td.best{font-weight:bold;background:#eef7ee}img{max-width:100%;border:1px solid #eee;margin:4px}
details{margin:.5em 0}summary{cursor:pointer;font-weight:600}.note{color:#666;font-size:13px}"""


def write_html_report(sweep_dir: str | Path, out: str | Path | None = None, title: str | None = None,
                      metric: str = "test/accuracy") -> Path:
    """Write the sweep's report as one HTML file (default SWEEP_DIR/report.html); returns its path."""
    from lokal.io import write_text

    sweep = Path(sweep_dir)
    runs = collect_runs(sweep)
    target = Path(out) if out else sweep / "report.html"
    return write_text(target, render_html(runs, title or f"lokal sweep: {sweep.name}", sweep, metric))


def render_html(runs: list[dict], title: str, sweep: Path, metric: str = "test/accuracy") -> str:
    figures = [img_tag(png, alt) for png, alt in ((learning_curves_png(runs), "validation accuracy by step"),
                                                   (tradeoff_png(runs, metric), f"{metric} vs trainable params"))
               if png]
    parts = [page_head(title, STYLE),
             f"<p class='note'>{len(runs)} runs in {esc(sweep)}; written {time.strftime('%Y-%m-%d %H:%M')} "
             "by <code>lokal report</code>. Bold: the best value of each column.</p>",
             "<h2>Runs</h2>", runs_table(runs), "<h2>Across runs</h2>", *figures,
             "<h2>Each run</h2>", *(run_section(r) for r in runs), "</body></html>"]
    return "\n".join(parts)


def esc(value) -> str:
    return html.escape(str(value))


def runs_table(runs: list[dict]) -> str:
    columns = metric_columns(runs)
    best = {c: best_value(runs, c) for c in columns if c not in RESOURCES}  # resources are trade-offs, not scores
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    rows = []
    for run in runs:
        cells = "".join(metric_cell(run["metrics"].get(c), best.get(c)) for c in columns)
        changes = ", ".join(run["changes"]) or run["method"]
        rows.append(f"<tr><td class='name'>{esc(run['name'])}</td><td class='name'>{esc(run['method'])}</td>"
                    f"<td class='name'>{esc(run['model'])}</td><td class='name'>{esc(changes)}</td>{cells}</tr>")
    return ("<table><tr><th class='name'>run</th><th class='name'>method</th><th class='name'>model</th>"
            f"<th class='name'>overrides</th>{head}</tr>" + "".join(rows) + "</table>")


def best_value(runs: list[dict], column: str):
    values = [r["metrics"][column] for r in runs if isinstance(r["metrics"].get(column), int | float)]
    if len(set(values)) < 2:  # one run, or all equal: nothing stands out
        return None
    return min(values) if column in LOWER_IS_BETTER else max(values)


def metric_cell(value, best) -> str:
    text = format_value(value)
    return f"<td class='best'>{text}</td>" if text and value == best else f"<td>{text}</td>"


def run_section(run: dict) -> str:
    """A run's own plots (RUN_DIR/plots/*.png, else the older RUN_DIR/confusion_matrix.png), folded."""
    run_dir = Path(run["dir"])
    pngs = sorted((run_dir / "plots").glob("*.png")) or sorted(run_dir.glob("confusion_matrix.png"))
    images = "".join(img_tag(p.read_bytes(), f"{run['name']}: {p.stem}") for p in pngs)
    wandb = f" (W&amp;B {esc(', '.join(run['wandb_ids']))})" if run["wandb_ids"] else ""
    return (f"<details><summary>{esc(run['name'])}{wandb}</summary>"
            f"{images or '<p class=note>no plots</p>'}</details>")


def img_tag(png: bytes, alt: str) -> str:
    return f"<img alt='{esc(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"


# -- the two figures across runs (matplotlib, in memory) --------------------------------------------
def learning_curves_png(runs: list[dict]) -> bytes | None:
    """val/accuracy by step, one line per run (from each run's metrics.csv)."""
    import pandas as pd

    curves = {}
    for run in runs:
        csv = Path(run["dir"]) / "metrics.csv"
        history = pd.read_csv(csv) if csv.is_file() else pd.DataFrame()
        if "val/accuracy" in history and "step" in history:
            val = history.dropna(subset=["val/accuracy"]).drop_duplicates(subset="step", keep="first")
            curves[run["name"]] = val
    if not curves:
        return None
    fig, ax = figure()
    for name, val in curves.items():
        ax.plot(val["step"], val["val/accuracy"], marker="o", label=name)
    ax.set(xlabel="step", ylabel="val/accuracy", title="validation accuracy")
    ax.legend(fontsize="small")
    return png_bytes(fig)


def tradeoff_png(runs: list[dict], metric: str) -> bytes | None:
    """`metric` against trainable parameters (log scale), one labelled point per run."""
    points = [(r["metrics"]["trainable_params"], r["metrics"][metric], r["name"]) for r in runs
              if isinstance(r["metrics"].get(metric), int | float) and r["metrics"].get("trainable_params")]
    if not points:
        return None
    fig, ax = figure()
    for params, value, name in points:
        ax.scatter(params, value)
        ax.annotate(name, (params, value), fontsize="small", textcoords="offset points", xytext=(4, 4))
    ax.set(xscale="log", xlabel="trainable parameters", ylabel=metric, title=f"{metric} vs trainable parameters")
    return png_bytes(fig)


def figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4))


def png_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
