"""A classifier's plots (confusion matrix, ROC curves, per-class precision/recall/F1, learning
curves), each written atomically as a PNG."""

from __future__ import annotations

from pathlib import Path

from lokal.io import write_atomically


def new_figure(width: float, height: float, panels: int = 1):
    import matplotlib

    matplotlib.use("Agg")  # no display needed (servers, Slurm jobs)
    import matplotlib.pyplot as plt

    return plt.subplots(1, panels, figsize=(width, height))


def save_figure(fig, target: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    write_atomically(target, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return target


def save_confusion_matrix(confusion, class_names: list[str], target: Path) -> Path:
    """Rows are true classes, columns predicted; counts in each cell."""
    import matplotlib.pyplot as plt
    import numpy as np

    size = 1.2 + 0.6 * len(class_names)
    fig, ax = new_figure(size + 1, size)
    counts = np.asarray(confusion)
    image = ax.imshow(counts, cmap="Blues")
    ax.set(xticks=range(len(class_names)), yticks=range(len(class_names)),
           xticklabels=class_names, yticklabels=class_names, xlabel="predicted", ylabel="true")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, int(n), ha="center", va="center", color="white" if n > counts.max() / 2 else "black")
    fig.colorbar(image, ax=ax)
    return save_figure(fig, target)


def save_roc(probs, target, class_names: list[str], path: Path) -> Path:
    """ROC curves: class 1 against class 0 for two classes, else one-vs-rest per class (a class
    without both positives and negatives in the labels has no curve)."""
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    fig, ax = new_figure(5.5, 5)
    classes = [1] if len(class_names) == 2 else range(len(class_names))
    for c in classes:
        positive = (target == c).long()
        if 0 < positive.sum() < len(positive):
            fpr, tpr, _ = binary_roc(probs[:, c], positive)
            auc = binary_auroc(probs[:, c], positive)
            ax.plot(fpr.numpy(), tpr.numpy(), label=f"{class_names[c]} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02),
           title="ROC" + (f": {class_names[1]} vs {class_names[0]}" if len(class_names) == 2 else " (one-vs-rest)"))
    ax.legend(loc="lower right", fontsize="small")
    return save_figure(fig, path)


def save_per_class(metrics: dict, class_names: list[str], path: Path) -> Path:
    """Precision, recall and F1 per class as grouped horizontal bars (F1 labelled)."""
    import numpy as np

    fig, ax = new_figure(6.5, 1.2 + 0.55 * len(class_names))
    y, height = np.arange(len(class_names)), 0.27
    for k, (name, color) in enumerate((("precision", "#9ecae1"), ("recall", "#6baed6"), ("f1", "#08519c"))):
        values = [metrics[f"{name}/{c}"] for c in class_names]
        bars = ax.barh(y + (k - 1) * height, values, height, label=name, color=color)
    ax.bar_label(bars, fmt="%.2f", padding=2, fontsize="small")  # the F1 bars
    ax.set(yticks=y, yticklabels=class_names, xlim=(0, 1.12), xlabel="score", title="per-class precision / recall / F1")
    ax.invert_yaxis()  # first class on top
    ax.legend(loc="lower right", fontsize="small")
    return save_figure(fig, path)


def save_learning_curves(metrics_csv: Path, path: Path) -> Path | None:
    """Training and validation loss, and the validation metrics, by step, from metrics.csv.
    None when there is no history to draw (no file, or no train/loss logged)."""
    import pandas as pd

    if not Path(metrics_csv).is_file():
        return None
    history = pd.read_csv(metrics_csv)
    if "train/loss" not in history or history["train/loss"].isna().all():
        return None
    fig, (loss_ax, metric_ax) = new_figure(10, 4, panels=2)
    train = history.dropna(subset=["train/loss"])
    loss_ax.plot(train["step"], train["train/loss"], label="train/loss", alpha=0.8)
    val = validation_rows(history)
    if "val/loss" in val:
        loss_ax.plot(val["step"], val["val/loss"], marker="o", label="val/loss")
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    loss_ax.legend(fontsize="small")
    for key in ("val/accuracy", "val/balanced_accuracy", "val/f1_macro"):
        if key in val:
            metric_ax.plot(val["step"], val[key], marker="o", label=key)
    metric_ax.set(xlabel="step", ylim=(0, 1.02), title="validation")
    metric_ax.legend(fontsize="small")
    return save_figure(fig, path)


def validation_rows(history):
    """The per-epoch validation rows, one per step: the final re-validation of the best
    checkpoint logs again at the last step, and would draw the best score as the last point."""
    if "val/loss" not in history:
        return history.iloc[0:0]
    return history.dropna(subset=["val/loss"]).drop_duplicates(subset="step", keep="first")
