"""`lokal compare PATHS...`: finished runs side by side, and what each one's score cost.

One row per run (a k-fold run is one row: the mean and std over its folds), read from the run's
own metrics.json and config: the metric, trainable parameters, peak memory and training time,
sorted by the metric. A run is on the Pareto front for a cost (parameters, memory, time) when
no other run scores at least as well for at most that cost, one of the two strictly better.
Written as compare.md and a self-contained compare.html (the Pareto plot embedded), plus
compare.png and compare.json. Runs without metrics.json are listed as unfinished.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lokal.errors import LokalError
from lokal.markup import md_cell, page_head

# Which way is better is read from the metric's name: these are errors or losses.
LOWER_IS_BETTER = ("loss", "perplexity", "ece", "wer", "cer", "error")
COSTS = {"params": "trainable_params", "memory": "peak_memory_mb", "time": "train_time_s"}
COST_LABELS = {"params": "trainable parameters", "memory": "peak memory (MB)", "time": "train time (s)"}


@dataclass
class Row:
    """One run as the table shows it; None where the run does not say."""

    run: str  # the run's folder, relative to the folders compared
    path: str
    status: str  # "finished" | "unfinished"
    method: str = "?"
    model: str = "?"
    data: str = "?"
    seed: int | None = None
    overrides: str = ""  # what this run set on the command line (tells sweep members apart)
    metric: float | None = None
    metric_std: float | None = None  # k-fold runs: sample std over folds
    folds: int | None = None
    trainable_params: int | None = None
    peak_memory_mb: float | None = None  # GPU peak where a GPU trained, else the process's peak RSS
    train_time_s: float | None = None  # k-fold: per fold (the mean)
    note: str = ""
    pareto: list[str] = field(default_factory=list)  # the costs this run is Pareto-optimal for


# -- finding runs ------------------------------------------------------------------------------
def is_run(folder: Path) -> bool:
    """A run directory: its resolved config, Hydra's copy (written when the run starts) or metrics."""
    return any((folder / name).is_file() for name in ("config.yaml", ".hydra/config.yaml", "metrics.json"))


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories given, or found below the folders given (a sweep's 0/, 1/, ...)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise LokalError(f"{path}: no such folder" if not path.exists() else
                             f"{path} is a file: give run directories or folders that hold them")
        runs = [path] if is_run(path) else runs_below(path)
        if not runs:
            raise LokalError(f"{path}: no lokal runs in it or below it (folders with config.yaml or metrics.json)")
        found += [r for r in runs if r not in found]
    return found


def runs_below(folder: Path) -> list[Path]:
    """Runs anywhere below `folder`, not looking inside a run (a k-fold run's fold_i are its own)."""
    runs = []
    for child in sorted((c for c in folder.iterdir() if c.is_dir() and not c.name.startswith(".")), key=natural):
        runs += [child] if is_run(child) else runs_below(child)
    return runs


def natural(path: Path) -> list:
    """2_x before 10_x: sweep job numbers sort as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


# -- reading one run ---------------------------------------------------------------------------
def read_run(run_dir: Path, metric: str, name: str) -> Row:
    row = Row(run=name, path=str(run_dir), status="unfinished")
    describe(row, run_dir)
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        row.note = unfinished_note(run_dir)
        return row
    metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    row.status = "finished"
    row.metric, row.metric_std, row.folds = metrics.get(metric), metrics.get(f"{metric}_std"), metrics.get("folds")
    row.trainable_params, row.train_time_s = metrics.get("trainable_params"), metrics.get("train_time_s")
    row.peak_memory_mb = metrics.get("peak_gpu_memory_mb", metrics.get("peak_memory_mb"))
    if row.metric is None:
        row.note = f"no {metric} in metrics.json"
    return row


def describe(row: Row, run_dir: Path) -> None:
    """Method, model, data, seed and overrides from the run's config and Hydra's record of the
    choices (config names, e.g. model=minilm, rather than the model's file path)."""
    from omegaconf import OmegaConf

    config = next((run_dir / n for n in ("config.yaml", ".hydra/config.yaml", "fold_0/config.yaml")
                   if (run_dir / n).is_file()), None)
    cfg = OmegaConf.load(config) if config else OmegaConf.create()
    choices = hydra_choices(run_dir)
    row.method = choices.get("method") or target_module(cfg, "method")
    row.model = choices.get("model") or plain(OmegaConf.select(cfg, "model.name", default=None), "?", name=True)
    row.data = choices.get("data") or target_module(cfg, "data")
    source = OmegaConf.select(cfg, "data.path", default=None) or OmegaConf.select(cfg, "data.root", default=None)
    source = plain(source, "", name=True)
    if source and source not in row.data:
        row.data = f"{row.data} ({source})"
    seed = OmegaConf.select(cfg, "seed", default=None)
    row.seed = seed if isinstance(seed, int) else None
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        row.overrides = " ".join(str(o) for o in OmegaConf.load(overrides) if not str(o).startswith("hydra."))


def hydra_choices(run_dir: Path) -> dict[str, str]:
    from omegaconf import OmegaConf

    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        return {}
    choices = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.choices", default=None)
    return {str(k): str(v) for k, v in (choices or {}).items() if v is not None}


def target_module(cfg, group: str) -> str:
    """lokal.methods.lora.LoRA -> lora: module names are the config names (one name everywhere)."""
    from omegaconf import OmegaConf

    target = OmegaConf.select(cfg, f"{group}._target_", default=None)
    return str(target).rsplit(".", 2)[-2] if target and target.count(".") >= 2 else "?"


def plain(value, default: str, name: bool = False) -> str:
    """A config value as shown: interpolations (unresolved copies) hidden, paths by their last part."""
    if value is None or "${" in str(value):
        return default
    return Path(str(value)).name if name else str(value)


def unfinished_note(run_dir: Path) -> str:
    folds = sorted(run_dir.glob("fold_*/metrics.json"))
    if folds or (run_dir / "fold_0").is_dir():
        return f"k-fold run in progress: {len(folds)} fold(s) finished"
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return "no metrics.json: still training or stopped (checkpoints/last.ckpt to resume from)"
    return "no metrics.json: still training or stopped before its first checkpoint"


# -- the comparison ----------------------------------------------------------------------------
def lower_is_better(metric: str) -> bool:
    name = metric.rsplit("/", 1)[-1].lower()
    return any(word in name for word in LOWER_IS_BETTER)


def pareto_front(points: list[tuple[float, float] | None], lower: bool = False) -> list[bool]:
    """Per (metric, cost) point: no other point has a metric at least as good for a cost at most
    as high, one of the two strictly better. None (a run that does not say) is never on it."""
    sign = -1.0 if lower else 1.0

    def dominates(b: tuple[float, float], a: tuple[float, float]) -> bool:
        better, cheaper = sign * b[0] >= sign * a[0], b[1] <= a[1]
        return better and cheaper and (sign * b[0] > sign * a[0] or b[1] < a[1])

    return [p is not None and not any(q is not None and dominates(q, p) for q in points) for p in points]


def compare(paths: list[str | Path], metric: str = "test/accuracy", lower: bool | None = None) -> list[Row]:
    """Every run below `paths`, best first (unfinished and unscored last), Pareto flags set."""
    runs = find_runs(paths)
    names = display_names(runs)
    rows = [read_run(run, metric, name) for run, name in zip(runs, names, strict=True)]
    lower = lower_is_better(metric) if lower is None else lower
    for cost, key in COSTS.items():
        points = [(r.metric, getattr(r, key)) if r.metric is not None and getattr(r, key) is not None else None
                  for r in rows]
        for row, on_front in zip(rows, pareto_front(points, lower), strict=True):
            if on_front:
                row.pareto.append(cost)
    scored = sorted((r for r in rows if r.metric is not None), key=lambda r: r.metric, reverse=not lower)
    return scored + [r for r in rows if r.metric is None]


def display_names(runs: list[Path]) -> list[str]:
    """Each run's path relative to the folder all of them share (the sweep's job folders)."""
    import os

    if len(runs) == 1:
        return [runs[0].name or str(runs[0])]
    common = Path(os.path.commonpath([r.resolve() for r in runs]))
    return [r.resolve().relative_to(common).as_posix() or r.name for r in runs]


# -- documents ---------------------------------------------------------------------------------
COLUMNS = ["run", "method", "model", "data", "seed", "METRIC", "trainable params", "peak memory MB",
           "train time s", "Pareto"]


def cells(row: Row) -> list[str]:
    """A row as text, as every document shows it."""
    if row.metric is None:
        score = "unfinished" if row.status == "unfinished" else "-"
    elif row.metric_std is not None:
        score = f"{row.metric:.4f} ± {row.metric_std:.4f} ({row.folds} folds)"
    else:
        score = f"{row.metric:.4f}"
    return [row.run, row.method, row.model, row.data, "" if row.seed is None else str(row.seed), score,
            number(row.trainable_params, "{:,}"), number(row.peak_memory_mb, "{:,.0f}"),
            number(row.train_time_s, "{:,.1f}"), ", ".join(row.pareto)]


def number(value, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def headers(metric: str) -> list[str]:
    return [metric if c == "METRIC" else c for c in COLUMNS]


FOOTNOTE = ("Pareto: no other run scores at least as well for at most this cost (params: trainable parameters, "
            "memory: peak memory, time: train time). Peak memory is the GPU's where a GPU trained, else the "
            "process's peak RSS. k-fold runs: mean ± sample std over folds; their cost columns are per fold.")


def to_markdown(rows: list[Row], metric: str, plot: str | None = "compare.png") -> str:
    lines = [f"# lokal compare: {metric}", "", "| " + " | ".join(headers(metric)) + " |",
             "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(md_cell(c) for c in cells(r)) + " |" for r in rows]
    lines += ["", FOOTNOTE, ""]
    notes = [f"- {r.run}: {r.note}" for r in rows if r.note]
    overrides = [f"- {r.run}: `{r.overrides}`" for r in rows if r.overrides]
    lines += ["## Notes", "", *notes, ""] if notes else []
    lines += ["## Overrides", "", *overrides, ""] if overrides else []
    if plot:
        lines += [f"![Pareto plot]({plot})", ""]
    return "\n".join(lines)


CSS = """.front{font-weight:600;color:#1a5fa8}
.unfinished{color:#999}"""


def to_html(rows: list[Row], metric: str, png: bytes | None) -> str:
    """One file: inline CSS, the plot as a data: URI, no scripts or links out; it opens offline."""
    import base64
    import html

    esc = html.escape
    parts = [page_head(f"lokal compare: {metric}", CSS) + "<table><tr>"
             + "".join(f"<th>{esc(h)}</th>" for h in headers(metric)) + "</tr>"]
    for row in rows:
        cls = "unfinished" if row.status == "unfinished" else "front" if row.pareto else ""
        title = f" title='{esc(row.overrides or row.path)}'"
        parts.append(f"<tr class='{cls}'{title}>" + "".join(f"<td>{esc(c)}</td>" for c in cells(row)) + "</tr>")
    parts.append(f"</table><p class='note'>{esc(FOOTNOTE)}</p>")
    notes = [f"<li>{esc(r.run)}: {esc(r.note)}</li>" for r in rows if r.note]
    overrides = [f"<li>{esc(r.run)}: <code>{esc(r.overrides)}</code></li>" for r in rows if r.overrides]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(notes) + "</ul>")
    if overrides:
        parts.append("<h2>Overrides</h2><ul>" + "".join(overrides) + "</ul>")
    if png:
        encoded = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>Pareto plot</h2><img alt='Pareto plot' src='data:image/png;base64,{encoded}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def plot(rows: list[Row], metric: str, lower: bool) -> bytes | None:
    """The metric against each cost (trainable parameters on a log axis), the front as a line;
    None when no finished run has a score."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in rows if r.metric is not None]
    if not scored:
        return None
    fig, axes = plt.subplots(1, len(COSTS), figsize=(5 * len(COSTS), 4.2), constrained_layout=True)
    for ax, (cost, key) in zip(axes, COSTS.items(), strict=True):
        points = [r for r in scored if getattr(r, key) is not None]
        front = sorted((r for r in points if cost in r.pareto), key=lambda r: getattr(r, key))
        ax.scatter([getattr(r, key) for r in points], [r.metric for r in points],
                   c=["#1a5fa8" if cost in r.pareto else "#999999" for r in points], zorder=3)
        for r in (r for r in points if r.metric_std):  # k-fold runs: +/- one std over folds
            ax.errorbar(getattr(r, key), r.metric, yerr=r.metric_std, color="#999999", capsize=3, zorder=2)
        if front:
            ax.step([getattr(r, key) for r in front], [r.metric for r in front], where="post", color="#1a5fa8",
                    alpha=0.6, label="Pareto front")
            ax.legend(loc="best", fontsize=8)
        for r in points:
            ax.annotate(point_label(r, scored), (getattr(r, key), r.metric), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        if cost == "params" and all(getattr(r, key) > 0 for r in points):
            ax.set_xscale("log")
        ax.margins(x=0.12, y=0.08)  # room for the labels
        ax.set_xlabel(COST_LABELS[cost] + (" (log)" if ax.get_xscale() == "log" else ""))
        ax.set_ylabel(metric + (" (lower is better)" if lower else ""))
        ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def point_label(row: Row, rows: list[Row]) -> str:
    """The method, and the run's job number (or name) where two runs share a method."""
    if sum(r.method == row.method for r in rows) == 1:
        return row.method
    job = row.run.split("_")[0]
    return f"{row.method} ({job if job.isdigit() else row.run})"


def write_reports(rows: list[Row], metric: str, out: str | Path, lower: bool | None = None) -> Path:
    """compare.md, compare.html, compare.png (when there is a score) and compare.json in `out`, atomically."""
    from lokal.io import write_atomically, write_json, write_text

    out = Path(out)
    png = plot(rows, metric, lower_is_better(metric) if lower is None else lower)
    if png:
        write_atomically(out / "compare.png", lambda tmp: tmp.write_bytes(png))
    write_json(out / "compare.json", {"metric": metric, "runs": [asdict(r) for r in rows]})
    write_text(out / "compare.md", to_markdown(rows, metric, "compare.png" if png else None))
    write_text(out / "compare.html", to_html(rows, metric, png))
    return out


def print_table(rows: list[Row], metric: str, out: Path | None = None) -> None:
    """The terminal's version, narrow enough for a sweep: model, data and seed in the title when all
    runs share them, parameters as 150k / 22.0M, the Pareto costs as letters."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    shared = {c: getattr(rows[0], c) for c in ("model", "data", "seed") if len({getattr(r, c) for r in rows}) == 1}
    title = f"lokal compare: {metric} (best first)" + "".join(f", {c} {v}" for c, v in shared.items() if v is not None)
    table = Table(title=escape(title), header_style="bold", caption="Pareto: P params, M memory, T time")
    varying = [c for c in ("model", "data", "seed") if c not in shared]
    for column in ["run", "method", *varying, metric, "params", "peak MB", "time s", "Pareto"]:
        numeric = column in ("params", "peak MB", "time s")
        table.add_column(escape(column), justify="right" if numeric else "left", no_wrap=numeric or column == metric,
                         overflow="fold")
    for row in rows:
        full = dict(zip(COLUMNS, cells(row), strict=True))
        score = full["METRIC"].split(" (")[0]  # the fold count is in the documents
        values = [row.run, row.method, *(full[c] for c in varying), score, short_count(row.trainable_params),
                  full["peak memory MB"], full["train time s"], " ".join(c[0].upper() for c in row.pareto)]
        style = "dim" if row.status == "unfinished" else "bold" if row.pareto else None
        table.add_row(*(escape(v) for v in values), style=style)
    console = Console()
    console.print(table)
    for row in rows:
        if row.note:
            console.print(f"{escape(row.run)}: {escape(row.note)}", style="dim")
    if out is not None:
        print(f"written to {out / 'compare.md'}, {out / 'compare.html'}")


def short_count(n: int | None) -> str:
    if n is None:
        return ""
    for size, unit in ((1e9, "B"), (1e6, "M")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n / 1e3:.0f}k" if n >= 1e4 else str(n)
