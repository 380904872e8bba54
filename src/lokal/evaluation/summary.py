"""The table a run prints at the end: its metrics next to the bars to beat, size, time, memory."""

from __future__ import annotations

from pathlib import Path


def print_classification_summary(metrics: dict, run_dir: Path, shown: tuple[str, ...] = ()) -> None:
    """The test and val metrics, the bars to beat, size, time, memory, data counts; `shown`: more
    keys to list (a task's own baselines)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lokal run: {run_dir}", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("value", justify="right")
    per_class = [k for k in metrics if k.startswith("test/") and k.count("/") > 1]
    for key in sorted(k for k in metrics if k.startswith(("test/", "val/")) and k not in per_class):
        table.add_row(key, f"{metrics[key]:.4f}")
    if per_class:  # one row per class and metric would bury the summary
        table.add_row("per-class precision/recall/F1", "metrics.json, plots/")
    if "majority_class_accuracy" in metrics:
        table.add_row("majority-class accuracy (test)", f"{metrics['majority_class_accuracy']:.4f}")
    if "baseline/tfidf_logreg_accuracy" in metrics:
        table.add_row("TF-IDF words+chars + logreg (test)", f"{metrics['baseline/tfidf_logreg_accuracy']:.4f}")
    for key in shown:
        table.add_row(key, f"{metrics[key]:.4f}")
    pct = 100 * metrics["trainable_params"] / metrics["total_params"]
    table.add_row("trainable params", f"{metrics['trainable_params']:,} ({pct:.2f}%)")
    table.add_row("total params", f"{metrics['total_params']:,}")
    table.add_row("train time", f"{metrics['train_time_s']:.1f} s")
    table.add_row("peak memory", f"{metrics['peak_memory_mb']:,.0f} MB")
    for key in sorted(k for k in metrics if k.startswith("data/")):
        table.add_row(key, f"{metrics[key]:,}")
    Console().print(table)


def summary_table(metrics: dict, run_dir: Path):
    """The run's metrics before (base/) and after training, size, time and memory: a rich Table."""
    from rich.table import Table

    table = Table(title=f"lokal run: {run_dir}", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key in sorted(k for k in metrics if k.startswith(("base/", "test/", "val/"))):
        table.add_row(key, f"{metrics[key]:.4f}")
    table.add_row("trainable params", f"{metrics['trainable_params']:,} ({metrics['trainable_percent']:.2f}%)")
    table.add_row("train time", f"{metrics['train_time_s']:.1f} s")
    table.add_row("peak memory", f"{metrics['peak_memory_mb']:,.0f} MB")
    return table
