"""What a run shows at the end: the summary table and the confusion-matrix plot."""

from __future__ import annotations

from pathlib import Path

import torch

from lokal.io import write_atomically


def print_summary(metrics: dict, run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lokal run: {run_dir}", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key in sorted(k for k in metrics if k.startswith(("test/", "val/"))):
        table.add_row(key, f"{metrics[key]:.4f}")
    if "majority_class_accuracy" in metrics:
        table.add_row("majority-class accuracy (test)", f"{metrics['majority_class_accuracy']:.4f}")
    if "baseline/tfidf_logreg_accuracy" in metrics:
        table.add_row("TF-IDF + logistic regression (test)", f"{metrics['baseline/tfidf_logreg_accuracy']:.4f}")
    pct = 100 * metrics["trainable_params"] / metrics["total_params"]
    table.add_row("trainable params", f"{metrics['trainable_params']:,} ({pct:.2f}%)")
    table.add_row("total params", f"{metrics['total_params']:,}")
    table.add_row("train time", f"{metrics['train_time_s']:.1f} s")
    table.add_row("peak memory", f"{metrics['peak_memory_mb']:,.0f} MB")
    for key in sorted(k for k in metrics if k.startswith("data/")):
        table.add_row(key, f"{metrics[key]:,}")
    Console().print(table)


def save_confusion_matrix(confusion: torch.Tensor, class_names: list[str], target: Path) -> Path:
    """Rows are true classes, columns predicted; counts in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    size = 1.2 + 0.6 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    counts = confusion.cpu().numpy()
    image = ax.imshow(counts, cmap="Blues")
    ax.set(xticks=range(len(class_names)), yticks=range(len(class_names)),
           xticklabels=class_names, yticklabels=class_names, xlabel="predicted", ylabel="true")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, int(n), ha="center", va="center", color="white" if n > counts.max() / 2 else "black")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    write_atomically(target, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return target
