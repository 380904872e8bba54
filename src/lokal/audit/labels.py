"""Likely label errors: rows whose label a simple model, which never saw them, confidently contradicts.

Confident learning (Northcutt et al., 2021, "Confident Learning: Estimating Uncertainty in
Dataset Labels"): out-of-fold probabilities from 5-fold cross-validation; a row is flagged
when another class is predicted with at least that class's average self-confidence (and at
least 0.5) and the given label falls below its own. A model that does not beat always
answering the largest class by 10 points flags nothing: its doubts would be noise. The model
is cheap on purpose (TF-IDF, or a 16x16 thumbnail, with logistic regression): a flag is a row
to look at, not a verdict.
"""

from __future__ import annotations

import numpy as np

MIN_CLASS_ROWS = 5  # fewer rows than folds: no out-of-fold estimate for that class
MIN_LIFT = 0.1  # the model must beat always-the-largest-class by this much before its doubts count
MIN_CONFIDENCE = 0.5  # "confidently predicted": never below a coin flip, however low a class's average


def text_features(texts: list[str]):
    """Word 1-2-grams plus character 3-4-grams within words: slang and typos still share pieces.
    (3-4 finds as many planted label flips in the shipped corpus as 2-5, at 60% of the time.)"""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    from lokal.evaluation.baselines import fit_transform_or_empty

    words = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=50_000)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 4), min_df=2, sublinear_tf=True,
                            max_features=100_000)
    return hstack([fit_transform_or_empty(words, texts), fit_transform_or_empty(chars, texts)]).tocsr()


def out_of_fold_probabilities(features, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, C) probabilities, each row predicted by a model trained on the other folds.
    Features are fitted once on all rows: unsupervised, so the labels do not leak."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    model = LogisticRegression(C=4.0, solver="newton-cg", max_iter=200)  # lbfgs: 10x slower on 20k+ sparse features
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    return cross_val_predict(model, features, labels, cv=folds, method="predict_proba")


def confident_disagreements(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices of rows whose prediction confidently contradicts the label, most confident first."""
    classes = np.arange(probs.shape[1])
    self_conf = np.array([probs[labels == c, c].mean() for c in classes])  # per-class threshold
    predicted = probs.argmax(1)
    given = probs[np.arange(len(labels)), labels]
    threshold = np.maximum(self_conf, MIN_CONFIDENCE)
    flagged = (predicted != labels) & (probs.max(1) >= threshold[predicted]) & (given < self_conf[labels])
    rows = np.nonzero(flagged)[0]
    return rows[np.argsort(-(probs.max(1) - given)[rows], kind="stable")]


def likely_label_errors(features, labels: list[str], limit: int = 50) -> dict:
    """The label-error section: how many rows were checked and flagged, and the top `limit`
    as {"index", "label", "predicted", "p_label", "p_predicted"} (indices into `labels`)."""
    names, counts = np.unique(np.asarray(labels), return_counts=True)
    usable = set(names[counts >= MIN_CLASS_ROWS])
    keep = np.array([label in usable for label in labels])
    skipped = sorted(str(n) for n in names if n not in usable)
    if len(usable) < 2:
        return {"checked": 0, "flagged": 0, "rows": [], "skipped_classes": skipped,
                "note": f"needs 2+ classes with {MIN_CLASS_ROWS}+ distinct items"}
    if features.shape[1] == 0:
        return {"checked": 0, "flagged": 0, "rows": [], "skipped_classes": skipped,
                "note": "the items share no word or character n-gram for the quick model to learn from"}
    classes = sorted(usable)
    y = np.array([classes.index(label) for label, k in zip(labels, keep, strict=True) if k])
    index = np.nonzero(keep)[0]
    probs = out_of_fold_probabilities(features[index], y)
    accuracy, majority = float((probs.argmax(1) == y).mean()), float(np.bincount(y).max() / len(y))
    if accuracy < majority + MIN_LIFT:  # a model no better than guessing: its disagreements are noise
        return {"checked": int(len(y)), "flagged": 0, "rows": [], "skipped_classes": skipped,
                "oof_accuracy": round(accuracy, 4),
                "note": f"the quick model is too weak to judge labels (out-of-fold accuracy {accuracy:.2f}, "
                        f"largest class {majority:.2f}); nothing flagged"}
    flagged = confident_disagreements(probs, y)
    rows = [{"index": int(index[r]), "label": classes[y[r]], "predicted": classes[int(probs[r].argmax())],
             "p_label": round(float(probs[r, y[r]]), 3), "p_predicted": round(float(probs[r].max()), 3)}
            for r in flagged[:limit]]
    return {"checked": int(len(y)), "flagged": int(len(flagged)), "rows": rows, "skipped_classes": skipped,
            "oof_accuracy": round(accuracy, 4)}
