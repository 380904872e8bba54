"""Splits, as properties over random labels and groups: every row lands in exactly one split,
a group (patient, user) never in two, k-fold tests every row exactly once, a seed fixes it all."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lokal.data.splits import given_splits, split_rows
from lokal.errors import LokalError

FAST = settings(max_examples=50, deadline=None)


@st.composite
def labelled_groups(draw, min_groups: int = 15) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels (2-4 classes, >= 8 rows each), groups of 1-6 rows with mixed labels, a seed."""
    counts = draw(st.lists(st.integers(8, 30), min_size=2, max_size=4))
    labels = np.repeat([f"c{i}" for i in range(len(counts))], counts)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    rng.shuffle(labels)
    n_groups = draw(st.integers(min_groups, min(40, len(labels))))
    groups = np.array([f"g{i}" for i in rng.integers(0, n_groups, len(labels))])
    groups[:n_groups] = [f"g{i}" for i in range(n_groups)]  # every group used at least once
    return labels, groups, draw(st.integers(0, 1000))


def assert_partition(split: dict[str, np.ndarray], n: int) -> None:
    every = np.concatenate([split["train"], split["val"], split["test"]])
    assert sorted(every.tolist()) == list(range(n)), "each row in exactly one split"


def assert_no_shared_group(split: dict[str, np.ndarray], groups: np.ndarray) -> None:
    seen = [set(groups[rows]) for rows in split.values()]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


@FAST
@given(labelled_groups())
def test_group_aware_split_never_puts_a_group_in_two_splits(case):
    labels, groups, seed = case
    split = split_rows(labels, 0.15, 0.2, seed, "t", groups=groups)
    assert_partition(split, len(labels))
    assert_no_shared_group(split, groups)
    assert all(len(rows) for rows in split.values())
    again = split_rows(labels, 0.15, 0.2, seed, "t", groups=groups)
    assert all(np.array_equal(split[k], again[k]) for k in split), "same seed, same split"


@FAST
@given(labelled_groups(), st.integers(2, 5), st.booleans())
def test_kfold_tests_every_row_once_and_keeps_val_apart(case, folds, grouped):
    labels, groups, seed = case
    groups = groups if grouped else None
    tested = []
    for fold in range(folds):
        split = split_rows(labels, 0.15, 0.2, seed, "t", groups=groups, folds=folds, fold=fold)
        assert_partition(split, len(labels))
        assert not set(split["val"]) & set(split["test"]) and len(split["val"])
        if grouped:
            assert_no_shared_group(split, groups)
        tested += split["test"].tolist()
    assert sorted(tested) == list(range(len(labels))), "every row in exactly one test fold"
    again = split_rows(labels, 0.15, 0.2, seed, "t", groups=groups, folds=folds, fold=folds - 1)
    assert all(np.array_equal(split[k], again[k]) for k in split), "same seed, same split"


@FAST
@given(labelled_groups(), st.sampled_from(["val", "test", None]))
def test_given_splits_are_kept_and_missing_ones_carved_from_train(case, missing):
    labels, _, seed = case
    given = np.array(["train"] * 4 + ["val", "test"])[np.arange(len(labels)) % 6]
    given[given == missing] = "train"
    for name in set(labels):
        given[np.flatnonzero(labels == name)[:3]] = "train"  # every class seen in training
    split = split_rows(labels, 0.15, 0.2, seed, "t", given=given)
    assert_partition(split, len(labels))
    for name in ("val", "test"):
        rows = np.flatnonzero(given == name)
        if len(rows):
            assert sorted(split[name].tolist()) == rows.tolist()
        else:
            assert len(split[name]) and set(split[name]) <= set(np.flatnonzero(given == "train"))


def test_three_groups_fill_three_splits_one_group_each():
    labels, groups = np.array(["a", "b"] * 15), np.array([f"g{i % 3}" for i in range(30)])
    split = split_rows(labels, 0.15, 0.2, 0, "t", groups=groups)
    assert sorted(len(set(groups[rows])) for rows in split.values()) == [1, 1, 1]


def test_stratified_split_keeps_the_class_mix():
    labels = np.array(["a"] * 80 + ["b"] * 20)
    split = split_rows(labels, 0.2, 0.2, 0, "t")
    for rows in split.values():
        assert (labels[rows] == "b").mean() == pytest.approx(0.2, abs=0.02)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"groups": [f"g{i % 2}" for i in range(40)]}, r"2 group\(s\) in data.group_column cannot fill 3 splits"),
        ({"groups": [f"g{i % 3}" for i in range(40)], "folds": 5}, r"3 groups .* cannot fill 5 folds"),
        ({"folds": 5, "fold": 5}, r"data.fold=5 is out of range: with data.folds=5 it must be 0..4"),
        ({"folds": 1}, r"data.folds=1: use 0 .* or >= 2"),
        ({"folds": 30}, r"class\(es\) \{'a': 20, 'b': 20\} have fewer examples than data.folds=30"),
        ({"folds": 3, "given": ["train"] * 40}, r"data.folds=3 .* cannot be combined with data.split_column"),
        ({"given": ["val"] * 40}, r"no rows are marked 'train'"),
        ({"given": ["train"] * 20 + ["test"] * 20}, r"class\(es\) \['b'\] appear in test but never in train"),
    ],
)
def test_impossible_splits_say_what_to_change(kwargs, message):
    labels = ["a"] * 20 + ["b"] * 20
    with pytest.raises(LokalError, match=message):
        split_rows(labels, 0.15, 0.2, 0, "t", **kwargs)


def test_split_column_values_other_than_train_val_test_are_named():
    import pandas as pd

    assert given_splits(pd.Series(["Train", "valid", "TEST", "dev"]), "fold", "t").tolist() == \
        ["train", "val", "test", "val"]
    with pytest.raises(LokalError, match=r"column 'fold' \(data.split_column\) holds \['holdout', 'x'\]"):
        given_splits(pd.Series(["train", "holdout", "x"]), "fold", "t.csv")
