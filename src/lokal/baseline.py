"""The classic text baseline, fitted on the same split as the fine-tune: if a fine-tuned
transformer cannot beat TF-IDF + logistic regression, the user should know."""

from __future__ import annotations


def tfidf_logreg(texts: dict[str, list[str]], labels: dict[str, list[int]]) -> dict[str, float]:
    """Word 1-2-gram TF-IDF + logistic regression, sklearn defaults otherwise (untuned)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                             LogisticRegression(max_iter=1000))
    pipeline.fit(texts["train"], labels["train"])
    predicted = pipeline.predict(texts["test"])
    return {"baseline/tfidf_logreg_accuracy": float(accuracy_score(labels["test"], predicted)),
            "baseline/tfidf_logreg_f1_macro": float(f1_score(labels["test"], predicted, average="macro"))}
