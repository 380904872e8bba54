"""The classic text baseline, fitted on the same split as the fine-tune: if a fine-tuned
transformer cannot beat TF-IDF + logistic regression, the user should know."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def tfidf_logreg(texts: dict[str, list[str]], labels: dict[str, list[int]]) -> dict[str, float]:
    """Word 1-2-gram TF-IDF + logistic regression, sklearn defaults otherwise (untuned). Texts
    without a word of two letters (emoji, single characters) fall back to character 1-3-grams."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline

    words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    chars = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)
    if not has_vocabulary(words, texts["train"]):
        log.warning("the training texts hold no word of 2+ letters: the TF-IDF baseline uses character 1-3-grams")
        words = chars
    pipeline = make_pipeline(words, LogisticRegression(max_iter=1000))
    pipeline.fit(texts["train"], labels["train"])
    predicted = pipeline.predict(texts["test"])
    return {"baseline/tfidf_logreg_accuracy": float(accuracy_score(labels["test"], predicted)),
            "baseline/tfidf_logreg_f1_macro": float(f1_score(labels["test"], predicted, average="macro"))}


def has_vocabulary(vectorizer, texts: list[str]) -> bool:
    """Does `vectorizer` find any term in `texts`? (sklearn raises "empty vocabulary" otherwise.)"""
    analyse = vectorizer.build_analyzer()
    return any(analyse(text) for text in texts)


def fit_transform_or_empty(vectorizer, texts: list[str]):
    """`vectorizer.fit_transform(texts)`, or a matrix with no columns when it finds no term."""
    from scipy.sparse import csr_matrix

    try:
        return vectorizer.fit_transform(texts)
    except ValueError as err:  # "empty vocabulary", also after min_df / max_df pruning
        if "vocabulary" not in str(err):
            raise
        return csr_matrix((len(texts), 0))
