"""Subgroup fairness: every test metric per group of a metadata column (region, gender, ...),
the largest gap between groups, and a warning when a gap is above the threshold *and* beyond
noise. Reads the test predictions (predictions.csv, one row per example: label, predicted,
prob/<class>, metadata columns)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from lokal.errors import LokalError
from lokal.io import write_json, write_text

CORE = ("id", "split", "label", "predicted", "confidence", "correct")  # predictions.csv columns that are not metadata
PROB = "prob/"
MISSING = "(missing)"  # the group of rows with no value in the column
Z95 = 1.959963984540054  # two-sided 95% normal quantile (Wilson interval)
PERMUTATION_CELLS = 2_000_000  # rows x groups per batch of shufflings: bounds memory
SUMMARY = ("accuracy", "balanced_accuracy", "f1_macro", "auroc")


class Coded(NamedTuple):
    """Predictions as arrays: true and predicted class indices, and the probabilities' ranks
    (all AUROC needs: it depends on the order of the scores only)."""

    y: np.ndarray  # (N,)
    p: np.ndarray  # (N,)
    ranks: np.ndarray | None  # (N, K) dense rank of each class's probability: equal scores, equal rank

    def rows(self, mask: np.ndarray) -> Coded:
        return Coded(*(None if a is None else a[mask] for a in self))


def subgroup_report(predictions: pd.DataFrame, columns: list[str], gap_warning: float = 0.05,
                    min_group_size: int = 20, alpha: float = 0.05, permutations: int = 2000,
                    seed: int = 0) -> dict:
    """Per metadata column: each group's n and metrics, the largest gap per metric, warnings.

    Metrics per group: accuracy (with a Wilson 95% interval), balanced accuracy, macro-F1, the
    recall (true positive rate) of each class the group holds, AUROC when the group holds both
    classes (one-vs-rest macro for more). Groups under `min_group_size` rows are shown but not
    judged. Whether a gap is beyond noise is a permutation test: shuffle the group labels
    `permutations` times (seeded) and count how often the largest gap is at least as large.
    Every column and metric is a test (untreated, one equal set in seven warned somewhere), so
    p is adjusted for the metrics (Westfall-Young min-p over the same shuffles) and the columns
    (Bonferroni); below `alpha` is beyond noise. A gap warns when it is above `gap_warning` and
    beyond noise; above the threshold but within noise is a note.
    """
    check_columns(predictions, columns)
    check_settings(gap_warning, min_group_size)
    classes = class_names(predictions)
    coded = encode(predictions, classes)
    rng = np.random.default_rng(seed)
    report = {column: column_report(coded, group_labels(predictions[column]), classes, min_group_size,
                                    permutations, rng) for column in dict.fromkeys(columns)}
    adjust_for_columns(report)
    warnings, notes = judge(report, gap_warning, alpha, min_group_size)
    settings = {"gap_warning": gap_warning, "min_group_size": min_group_size, "alpha": alpha,
                "permutations": permutations, "seed": seed}
    return {"settings": settings, "classes": classes, "columns": report, "warnings": warnings, "notes": notes,
            "metrics": flat_metrics(report)}


# -- checks and encoding -------------------------------------------------------
def metadata_columns(predictions: pd.DataFrame) -> list[str]:
    return [c for c in predictions.columns if c not in CORE and not str(c).startswith(PROB)]


def check_columns(predictions: pd.DataFrame, columns: list[str]) -> None:
    """A requested column must have come through to the predictions from the data."""
    if predictions.empty:
        raise LokalError("the predictions are empty: a subgroup report needs the test split's predictions")
    for need in ("label", "predicted"):
        if need not in predictions.columns:
            raise LokalError(f"the predictions have no {need!r} column: subgroup reports read predictions.csv "
                             "(columns id, label, predicted, prob/<class>, then metadata)")
    available = metadata_columns(predictions)
    for column in columns:
        if column not in predictions.columns:
            raise LokalError(
                f"evaluation.subgroups: column {column!r} is not in the test predictions; metadata columns there: "
                f"{', '.join(map(repr, available)) or 'none'}. Name it in data.metadata_columns=[{column}] "
                "(it must be a column of your data file) so it is carried into predictions.csv")


def check_settings(gap_warning: float, min_group_size: int) -> None:
    if not 0 <= gap_warning <= 1:
        raise LokalError(f"evaluation.gap_warning={gap_warning}: a gap between groups' metrics is between 0 and 1 "
                         "(e.g. 0.05 warns when a group is 5 points behind)")
    if min_group_size < 1:
        raise LokalError(f"min_group_size={min_group_size}: must be 1 or more")


def class_names(predictions: pd.DataFrame) -> list[str]:
    """The classes in prob/ column order, then any label or prediction not among them."""
    named = [c[len(PROB):] for c in predictions.columns if str(c).startswith(PROB)]
    seen = pd.concat([predictions["label"], predictions["predicted"]]).astype(str)
    return named + sorted(set(seen) - set(named))


def encode(predictions: pd.DataFrame, classes: list[str]) -> Coded:
    index = {name: i for i, name in enumerate(classes)}
    y = predictions["label"].astype(str).map(index).to_numpy(dtype=int)
    p = predictions["predicted"].astype(str).map(index).to_numpy(dtype=int)
    prob_columns = [PROB + c for c in classes]
    if not all(c in predictions.columns for c in prob_columns):
        return Coded(y, p, None)
    probs = predictions[prob_columns].to_numpy(dtype=float)
    return Coded(y, p, np.stack([np.unique(c, return_inverse=True)[1].ravel() for c in probs.T], axis=1))


def group_labels(values: pd.Series) -> pd.Series:
    """Group names as strings (JSON keys); empty cells form their own group, not a dropped one."""
    return values.astype(object).where(values.notna(), MISSING).astype(str)


# -- metrics, for every group at once -------------------------------------------
def metrics_by_group(coded: Coded, codes: np.ndarray, n_groups: int, classes: list[str]) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, macro-F1, AUROC and per-class recall of each group (G,),
    NaN where undefined (the recall of a class the group lacks). Macro-F1 averages the classes
    in the group's labels or predictions, as scikit-learn does. Vectorised over groups: the
    permutation test runs it on thousands of shuffles at once."""
    k = len(classes)
    flat = (codes * k + coded.y) * k + coded.p
    confusion = np.bincount(flat, minlength=n_groups * k * k).reshape(n_groups, k, k)  # (G, true, predicted)
    support, predicted = confusion.sum(2), confusion.sum(1)  # (G, K)
    hits = np.diagonal(confusion, axis1=1, axis2=2)
    recall = np.where(support > 0, hits / np.maximum(support, 1), np.nan)
    f1 = np.where(support + predicted > 0, 2 * hits / np.maximum(support + predicted, 1), np.nan)
    metrics = {"accuracy": hits.sum(1) / np.maximum(support.sum(1), 1), "balanced_accuracy": nan_mean(recall),
               "f1_macro": nan_mean(f1), "auroc": auroc_by_group(coded, codes, n_groups)}
    return metrics | {f"recall/{c}": recall[:, i] for i, c in enumerate(classes)}


def nan_mean(values: np.ndarray) -> np.ndarray:
    """Row means over the defined (non-NaN) entries; NaN for a row with none."""
    defined = ~np.isnan(values)
    return np.where(defined.any(1), np.nansum(values, 1) / np.maximum(defined.sum(1), 1), np.nan)


def auroc_by_group(coded: Coded, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Binary: the positive (second) class's AUROC; more classes: the mean one-vs-rest AUROC over
    the classes a group holds alongside others. NaN without probabilities or with one class."""
    if coded.ranks is None:
        return np.full(n_groups, np.nan)
    k = coded.ranks.shape[1]
    per_class = [binary_auroc_by_group(coded.y == c, coded.ranks[:, c], codes, n_groups)
                 for c in ([1] if k == 2 else range(k))]
    return nan_mean(np.stack(per_class, axis=1))


def binary_auroc_by_group(positive: np.ndarray, ranks: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Mann-Whitney form of the area under the ROC curve, per group: the share of (positive,
    negative) pairs the scores order correctly, ties counting half (as scikit-learn's)."""
    levels = int(ranks.max()) + 1 if len(ranks) else 1
    negatives = np.bincount(codes[~positive] * levels + ranks[~positive],
                            minlength=n_groups * levels).reshape(n_groups, levels)  # (G, score levels)
    wins = np.cumsum(negatives, 1) - negatives / 2  # negatives scored below, plus half the equal ones
    pos_codes = codes[positive]
    pairs = np.bincount(pos_codes, weights=wins[pos_codes, ranks[positive]], minlength=n_groups)
    n_pairs = np.bincount(pos_codes, minlength=n_groups) * negatives.sum(1)
    return np.where(n_pairs > 0, pairs / np.maximum(n_pairs, 1), np.nan)


def wilson_interval(share: float, n: int, z: float = Z95) -> list[float]:
    """Wilson score interval for a proportion: sound at small n and near 0 or 1, unlike p +/- 2 SE."""
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(centre - half), float(centre + half)]


def spread(values: np.ndarray) -> np.ndarray:
    """Largest minus smallest defined value along the last axis; NaN with fewer than two."""
    defined = ~np.isnan(values)
    top, bottom = np.where(defined, values, -np.inf).max(-1), np.where(defined, values, np.inf).min(-1)
    return np.where(defined.sum(-1) >= 2, top - bottom, np.nan)


# -- one column ----------------------------------------------------------------
def column_report(coded: Coded, groups: pd.Series, classes: list[str], min_group_size: int,
                  permutations: int, rng: np.random.Generator) -> dict:
    """Every group's metrics, and per metric the largest gap among the groups big enough to
    judge. With fewer than two of those, the gap between all groups is still given (metrics.json
    keeps its keys on a small test set) but marked unjudged: never tested, never a warning."""
    names = sorted(groups.unique())
    codes = groups.map({name: i for i, name in enumerate(names)}).to_numpy()
    values = metrics_by_group(coded, codes, len(names), classes)
    sizes = np.bincount(codes, minlength=len(names))
    per_group = {name: describe_group(i, values, int(sizes[i]), min_group_size) for i, name in enumerate(names)}
    judged = np.flatnonzero(sizes >= min_group_size)
    compared = judged if len(judged) >= 2 else np.arange(len(names))
    gaps = largest_gaps({m: v[compared] for m, v in values.items()}, [names[i] for i in compared], sizes[compared])
    observed = {metric: gap["gap"] for metric, gap in gaps.items()} if len(judged) >= 2 else {}
    p_values = permutation_p(coded, codes, judged, observed, classes, permutations, rng)
    for metric, gap in gaps.items():
        p_value, p_metrics = p_values.get(metric, (None, None))
        gap |= {"judged": len(judged) >= 2, "p_value": p_value, "p_metrics": p_metrics}
    return {"groups": per_group, "gaps": gaps}


def describe_group(i: int, values: dict[str, np.ndarray], n: int, min_group_size: int) -> dict:
    metrics = {m: None if np.isnan(v[i]) else float(v[i]) for m, v in values.items()}
    return {"n": n, "judged": n >= min_group_size, "accuracy_ci95": wilson_interval(metrics["accuracy"], n)} | metrics


def largest_gaps(values: dict[str, np.ndarray], names: list[str], sizes: np.ndarray) -> dict[str, dict]:
    """Per metric defined in two or more of the groups: best minus worst, naming both."""
    gaps = {}
    for metric, column in values.items():
        if np.isnan(spread(column)):
            continue
        best, worst = np.nanargmax(column), np.nanargmin(column)
        gaps[metric] = {"gap": float(column[best] - column[worst]),
                        "best": names[best], "best_value": float(column[best]), "best_n": int(sizes[best]),
                        "worst": names[worst], "worst_value": float(column[worst]), "worst_n": int(sizes[worst])}
    return gaps


def permutation_p(coded: Coded, codes: np.ndarray, judged: np.ndarray, observed: dict[str, float],
                  classes: list[str], permutations: int, rng: np.random.Generator) -> dict[str, tuple]:
    """Per metric (p, p adjusted for the column's several metrics), from shuffling the judged
    rows' group labels: p is how often random groups show a largest gap at least as big as the
    observed one (a test of the largest gap itself, so picking the best and worst of many groups
    is accounted for)."""
    if permutations <= 0 or not observed:
        return dict.fromkeys(observed, (None, None))
    keep = np.isin(codes, judged)
    rows, labels = coded.rows(keep), np.searchsorted(judged, codes[keep])  # judged groups renumbered 0..J-1
    batch = int(np.clip(PERMUTATION_CELLS // (len(labels) * len(judged)), 1, permutations))
    null = [permuted_spreads(rows, labels, len(judged), classes, min(batch, permutations - start), rng)
            for start in range(0, permutations, batch)]
    spreads = np.stack([np.concatenate([d[m] for d in null]) for m in observed], 1)  # (permutations, metrics)
    return dict(zip(observed, min_p(np.array(list(observed.values())), spreads), strict=True))


def min_p(observed: np.ndarray, spreads: np.ndarray) -> list[tuple[float, float]]:
    """Raw and Westfall-Young single-step min-p adjusted p-values (Westfall & Young 1993): a
    metric's adjusted p is how often the smallest p-value over all metrics of one shuffle is at
    most its own. The metrics move together (accuracy, balanced accuracy, F1), so this costs far
    less power than multiplying by their number. `spreads` (B, M): NaN where undefined."""
    b = len(spreads)
    spreads = np.nan_to_num(spreads, nan=-np.inf)
    exceed = (spreads >= observed - 1e-12).sum(0) / b  # (M,)
    ordered = np.sort(spreads, 0)
    own = np.stack([b - np.searchsorted(ordered[:, m], spreads[:, m] - 1e-12) for m in range(len(observed))], 1) / b
    smallest = own.min(1)  # (B,): each shuffle's most extreme metric
    adjusted = (smallest[:, None] <= exceed + 1e-12).sum(0)
    return [(float((1 + e * b) / (1 + b)), float((1 + a) / (1 + b))) for e, a in zip(exceed, adjusted, strict=True)]


def permuted_spreads(rows: Coded, labels: np.ndarray, n_groups: int, classes: list[str], count: int,
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The largest gap per metric in each of `count` shufflings, all computed in one pass: copy
    b of the rows carries group codes b * n_groups + shuffled label."""
    tiled = Coded(*(None if a is None else np.tile(a, (count,) + (1,) * (a.ndim - 1)) for a in rows))
    shuffled = rng.permuted(np.tile(labels, (count, 1)), axis=1)  # (count, N)
    codes = (shuffled + n_groups * np.arange(count)[:, None]).ravel()
    drawn = metrics_by_group(tiled, codes, count * n_groups, classes)
    return {metric: spread(values.reshape(count, n_groups)) for metric, values in drawn.items()}


# -- verdicts ------------------------------------------------------------------
def adjust_for_columns(report: dict) -> None:
    """Bonferroni over the columns tested (each column's shuffles are its own): a gap is beyond
    noise when its p, adjusted for the column's metrics and times the number of columns, is
    below alpha."""
    tested = [result for result in report.values() if any(g["p_metrics"] is not None for g in result["gaps"].values())]
    for result in report.values():
        for gap in result["gaps"].values():
            gap["p_adjusted"] = None if gap["p_metrics"] is None else min(1.0, len(tested) * gap["p_metrics"])


def judge(report: dict, gap_warning: float, alpha: float, min_group_size: int) -> tuple[list[str], list[str]]:
    """Warnings: gaps above the threshold and beyond noise. Notes: gaps above it but within
    noise, groups too small to judge, columns with fewer than two groups to compare."""
    warnings, notes = [], []
    for column, result in report.items():
        small = [f"{name} (n={g['n']})" for name, g in result["groups"].items() if not g["judged"]]
        if small:
            notes.append(f"{column}: {', '.join(small)} shown but not judged: fewer than {min_group_size} "
                         "test rows, too few to tell a gap from noise")
        if sum(g["judged"] for g in result["groups"].values()) < 2:
            notes.append(f"{column}: fewer than two groups with {min_group_size}+ test rows: gaps are shown "
                         "but not judged")
        for metric, gap in result["gaps"].items():
            gap["above_threshold"] = gap["gap"] > gap_warning
            gap["beyond_noise"] = gap["judged"] and (gap["p_adjusted"] is None or gap["p_adjusted"] < alpha)
            if gap["above_threshold"] and gap["judged"]:
                (warnings if gap["beyond_noise"] else notes).append(describe_gap(column, metric, gap, gap_warning))
    return warnings, notes


def describe_gap(column: str, metric: str, gap: dict, gap_warning: float) -> str:
    noise = "untested" if gap["p_value"] is None else \
        f"permutation p={gap['p_value']:.3g}, {gap['p_adjusted']:.3g} adjusted for all metrics and columns"
    verdict = "beyond noise" if gap["beyond_noise"] else "but within noise: too few test rows to tell"
    return (f"{column}: {metric} is {gap['gap']:.3f} lower for {gap['worst']} ({gap['worst_value']:.3f}, "
            f"n={gap['worst_n']}) than for {gap['best']} ({gap['best_value']:.3f}, n={gap['best_n']}): "
            f"above {gap_warning:g}, {verdict} ({noise})")


def flat_metrics(report: dict) -> dict[str, float]:
    """metrics.json keys: subgroup/<column>/max_gap/<metric>."""
    return {f"subgroup/{column}/max_gap/{metric}": gap["gap"]
            for column, result in report.items() for metric, gap in result["gaps"].items()}


def format_warnings(report: dict) -> list[str]:
    """Lines to print after a run: warnings first, then notes."""
    return [f"subgroup gap: {w}" for w in report["warnings"]] + [f"subgroup note: {n}" for n in report["notes"]]


# -- files ---------------------------------------------------------------------
def write_subgroup_report(report: dict, run_dir: str | Path) -> list[Path]:
    """RUN_DIR/subgroups.json (everything) and subgroups.md (tables), written atomically."""
    run_dir = Path(run_dir)
    return [write_json(run_dir / "subgroups.json", report), write_text(run_dir / "subgroups.md", to_markdown(report))]


def to_markdown(report: dict) -> str:
    settings = report["settings"]
    lines = ["# Subgroup report (test split)", "",
             f"Warn when a metric's largest gap between groups is above {settings['gap_warning']:g} and beyond "
             f"noise (permutation test with {settings['permutations']} shuffles, p adjusted for all metrics and "
             f"columns < {settings['alpha']:g}); groups under {settings['min_group_size']} rows are not judged.", ""]
    for column, result in report["columns"].items():
        lines += [f"## {column}", "", *group_table(result["groups"]), "", *gap_table(result["gaps"]), ""]
    for title, items in (("Warnings", report["warnings"]), ("Notes", report["notes"])):
        lines += [f"## {title}", "", *([f"- {item}" for item in items] or ["- none"]), ""]
    return "\n".join(lines)


def group_table(groups: dict[str, dict]) -> list[str]:
    metrics = [m for m in next(iter(groups.values())) if m in SUMMARY or m.startswith("recall/")]
    rows = ["| group | n | accuracy (95% CI) | " + " | ".join(metrics[1:]) + " |",
            "|---|---:|---:|" + "---:|" * (len(metrics) - 1)]
    for name, g in groups.items():
        low, high = g["accuracy_ci95"]
        accuracy = f"{g['accuracy']:.3f} ({low:.3f}-{high:.3f})" + ("" if g["judged"] else " (too few)")
        rows.append(f"| {name} | {g['n']} | {accuracy} | " + " | ".join(number(g[m]) for m in metrics[1:]) + " |")
    return rows


def gap_table(gaps: dict[str, dict]) -> list[str]:
    rows = ["| metric | largest gap | best | worst | p (permutation) | p (adjusted) | verdict |",
            "|---|---:|---|---|---:|---:|---|"]
    for metric, gap in gaps.items():
        verdict = ("**warn**" if gap["beyond_noise"] else "within noise") if gap["above_threshold"] else "ok"
        verdict = verdict if gap["judged"] else "not judged (groups too small)"
        rows.append(f"| {metric} | {gap['gap']:.3f} | {gap['best']} ({gap['best_value']:.3f}) | {gap['worst']} "
                    f"({gap['worst_value']:.3f}) | {number(gap['p_value'], '.2g')} | "
                    f"{number(gap['p_adjusted'], '.2g')} | {verdict} |")
    return rows if gaps else ["No gap: fewer than two groups to compare."]


def number(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)
