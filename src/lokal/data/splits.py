"""How rows become train/val/test, shared by every data module.

Every split returns row indices {"train", "val", "test"} and comes from one entry point,
`split_rows`: user-given splits (a split column or split folders; missing ones carved from
train), k-fold (`folds`/`fold`), or a held-out split by seed, stratified by label and, with
groups (patients, users), group-aware: one group never lands in two splits.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from lokal.data.settings import check_fractions
from lokal.errors import LokalError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def stratified_split(
    labels: Sequence, val_fraction: float, test_fraction: float, seed: int, where: str
) -> dict[str, np.ndarray]:
    """Indices for train/val/test with the class mix of `labels` (class names) kept in every split."""
    from sklearn.model_selection import train_test_split

    check_fractions(val_fraction, test_fraction)
    labels = np.asarray(labels)
    _check_class_sizes(labels, val_fraction, test_fraction, where)
    index = np.arange(len(labels))
    held_out = val_fraction + test_fraction
    if held_out == 0:
        return {"train": index, "val": index[:0], "test": index[:0]}
    classes = len(set(labels.tolist()))
    held_splits = (val_fraction > 0) + (test_fraction > 0)
    try:
        size = _stratifiable(held_out, len(index), classes, held_splits)
        train, rest = train_test_split(index, test_size=size, stratify=labels, random_state=seed)
        if val_fraction == 0 or test_fraction == 0:
            key = "test" if val_fraction == 0 else "val"
            return {"train": train, "val": rest[:0], "test": rest[:0]} | {key: rest}
        size = _stratifiable(test_fraction / held_out, len(rest), classes)
        val, test = train_test_split(rest, test_size=size, stratify=labels[rest], random_state=seed)
    except ValueError as err:  # sklearn: too few rows for a stratified split of this size
        raise LokalError(f"{where}: cannot split {len(labels)} rows stratified by label ({err}); "
                         "add data or change data.val_fraction / data.test_fraction") from err
    return {"train": train, "val": val, "test": test}


def _stratifiable(fraction: float, rows: int, classes: int, held_splits: int = 1) -> float | int:
    """The held-out size for sklearn: `fraction` as it is, unless its rows (sklearn rounds up)
    could not hold every class in each held-out split, or leave every class in the rest; then
    the nearest row count that can. Small data gets a val/test split with each class instead
    of an error; every split that worked before is unchanged."""
    import math

    low, high = classes * held_splits, rows - classes
    wanted = math.ceil(fraction * rows)
    if low <= wanted <= high or low > high:  # fine as asked, or impossible: sklearn says why
        return fraction
    return min(max(wanted, low), high)


def _check_class_sizes(labels: np.ndarray, val_fraction: float, test_fraction: float, where: str) -> None:
    need = 1 + (val_fraction > 0) + (test_fraction > 0)
    small = {label: n for label, n in Counter(labels.tolist()).items() if n < need + 1}
    if small:
        raise LokalError(
            f"{where}: class(es) {small} have too few examples to split into train/val/test; "
            f"add examples (at least {need + 1} per class) or remove that class"
        )


def split_rows(
    labels: Sequence[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    where: str,
    groups: Sequence[str] | None = None,
    given: Sequence[str] | None = None,
    folds: int = 0,
    fold: int = 0,
    from_files: bool = False,
) -> dict[str, np.ndarray]:
    """Row indices per split. `given` (train/val/test per row) wins; else k-fold when
    `folds` >= 2; else a held-out split by seed. With `groups`, every split is group-aware.
    `from_files`: `given` says which split table a row came from; k-fold folds over those
    (files_kfold) where a split column would contradict it."""
    check_fractions(val_fraction, test_fraction)
    labels = np.asarray(labels, dtype=str)
    groups = None if groups is None else np.asarray(groups, dtype=str)
    if folds and given is not None and not from_files:
        raise LokalError(f"{where}: data.folds={folds} makes its own test folds, so it cannot be combined with "
                         "data.split_column; unset one of them")
    if folds and given is not None:
        return files_kfold(labels, groups, np.asarray(given, dtype=str), folds, fold, val_fraction, seed, where)
    if folds:
        return kfold_split(labels, groups, folds, fold, val_fraction, seed, where)
    if given is not None:
        return given_split(labels, groups, np.asarray(given, dtype=str), val_fraction, test_fraction, seed, where)
    return holdout_split(labels, groups, val_fraction, test_fraction, seed, where)


def holdout_split(labels: np.ndarray, groups: np.ndarray | None, val_fraction: float, test_fraction: float,
                  seed: int, where: str) -> dict[str, np.ndarray]:
    """Stratified train/val/test; with groups, test then val are held out group by group."""
    if groups is None:
        return stratified_split(labels, val_fraction, test_fraction, seed, where)
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    if len(set(groups)) < needed:
        raise LokalError(f"{where}: {len(set(groups))} group(s) in data.group_column cannot fill {needed} splits "
                         "(one group is never in two); add groups, set data.val_fraction=0 or "
                         "data.test_fraction=0, or unset data.group_column")
    index = np.arange(len(labels))
    split = {"train": index, "val": index[:0], "test": index[:0]}
    for name, frac in (("test", test_fraction), ("val", val_fraction / (1 - test_fraction))):
        if frac > 0:
            split[name], split["train"] = _hold_out_groups(split["train"], labels, groups, frac, seed, where)
    _warn_missing_classes(labels, split, where)
    return split


def _hold_out_groups(index: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int,
                     where: str) -> tuple[np.ndarray, np.ndarray]:
    """(held out, rest) of `index`: the fold of a StratifiedGroupKFold (k = 1/fraction, at
    most one fold per group) whose size is nearest fraction * rows. Whole groups move, so
    the fraction is met only as closely as group sizes allow."""
    n_groups = len(set(groups[index]))
    if n_groups < 2:
        raise LokalError(f"{where}: after holding out test groups, 1 group is left for train and val; add "
                         "groups, set data.val_fraction=0, or unset data.group_column")
    k = min(max(2, round(1 / fraction)), n_groups)
    held = min(_group_folds(labels[index], groups[index], k, seed), key=lambda f: abs(len(f) - fraction * len(index)))
    mask = np.zeros(len(index), dtype=bool)
    mask[held] = True
    return index[mask], index[~mask]


def _group_folds(labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """The non-empty test folds of a StratifiedGroupKFold; plain GroupKFold when every class
    is smaller than k (nothing left to stratify), groups shuffled by seed first."""
    import warnings

    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    index = np.arange(len(labels))
    if max(Counter(labels.tolist()).values()) >= k:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class has fewer than k members": expected with groups
        warnings.simplefilter("ignore", UserWarning)
        return [held for _, held in splitter.split(index, labels, groups) if len(held)]


def kfold_split(labels: np.ndarray, groups: np.ndarray | None, folds: int, fold: int, val_fraction: float,
                seed: int, where: str) -> dict[str, np.ndarray]:
    """Test = fold `fold` of a stratified (group-aware with groups) k-fold over all rows, so
    the `folds` runs together test every row exactly once; val is carved from the rest."""
    from sklearn.model_selection import StratifiedKFold

    _check_folds(labels, groups, folds, fold, where)
    index = np.arange(len(labels))
    if groups is None:
        tests = [held for _, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(index, labels)]
    else:
        tests = _group_folds(labels, groups, folds, seed)
    if len(tests) < folds:
        raise LokalError(f"{where}: only {len(tests)} of {folds} group-aware folds hold rows (groups too uneven); "
                         "lower data.folds")
    test = tests[fold]
    rest = np.setdiff1d(index, test)
    inner = holdout_split(labels[rest], None if groups is None else groups[rest], val_fraction, 0.0, seed, where)
    return {"train": rest[inner["train"]], "val": rest[inner["val"]], "test": test}


def files_kfold(labels: np.ndarray, groups: np.ndarray | None, given: np.ndarray, folds: int, fold: int,
                val_fraction: float, seed: int, where: str) -> dict[str, np.ndarray]:
    """k-fold over split tables. A test table stays the test split of every fold (a benchmark's
    test set is never trained on) and the folds run over the train and val tables' rows: val
    = fold `fold`, train = the rest. Without a test table the tables are pooled and folded as
    one table would be (test = fold `fold`, val carved from the rest)."""
    test = np.flatnonzero(given == "test")
    if not len(test):
        log.info("%s: k-fold over the train and val tables pooled (no test table): test = fold %d", where, fold)
        return kfold_split(labels, groups, folds, fold, val_fraction, seed, where)
    pool = np.flatnonzero(given != "test")
    inner = kfold_split(labels[pool], None if groups is None else groups[pool], folds, fold, 0.0, seed, where)
    split = {"train": pool[inner["train"]], "val": pool[inner["test"]], "test": test}
    log.info("%s: k-fold over the train and val tables (%d rows, val = fold %d); the test table is every fold's "
             "test split", where, len(pool), fold)
    _check_train_has_every_class(labels, split, where)
    return split


def _check_folds(labels: np.ndarray, groups: np.ndarray | None, folds: int, fold: int, where: str) -> None:
    if folds < 2:
        raise LokalError(f"data.folds={folds}: use 0 for one train/val/test split or >= 2 for k-fold")
    if not 0 <= fold < folds:
        raise LokalError(f"data.fold={fold} is out of range: with data.folds={folds} it must be 0..{folds - 1}")
    if groups is not None and len(set(groups)) < folds:
        raise LokalError(f"{where}: {len(set(groups))} groups in data.group_column cannot fill {folds} folds; "
                         "lower data.folds or unset data.group_column")
    small = {label: n for label, n in Counter(labels.tolist()).items() if n < folds}
    if small:
        raise LokalError(f"{where}: class(es) {small} have fewer examples than data.folds={folds}, so some test "
                         "folds would miss them; add examples, lower data.folds, or remove that class")


def given_split(labels: np.ndarray, groups: np.ndarray | None, given: np.ndarray, val_fraction: float,
                test_fraction: float, seed: int, where: str) -> dict[str, np.ndarray]:
    """The user's own splits; a missing val or test split is carved from train as usual."""
    split = {name: np.flatnonzero(given == name) for name in SPLITS}
    if not len(split["train"]):
        raise LokalError(f"{where}: no rows are marked 'train'; mark some, or unset data.split_column")
    train = split["train"]
    fractions = [0.0 if len(split[name]) else frac for name, frac in (("val", val_fraction), ("test", test_fraction))]
    inner = holdout_split(labels[train], None if groups is None else groups[train], *fractions, seed, where)
    split["train"] = train[inner["train"]]
    for name in ("val", "test"):
        if not len(split[name]):
            split[name] = train[inner[name]]
    _check_train_has_every_class(labels, split, where)
    if groups is not None:
        _warn_shared_groups(groups, split, where)
    return split


def given_splits(values: pd.Series, column: str, where: str) -> np.ndarray:
    """Normalise a user's split column to train/val/test; anything else is an error."""
    names = values.astype(str).str.strip().str.lower().replace({"valid": "val", "validation": "val", "dev": "val"})
    unknown = sorted(set(values[~names.isin(SPLITS)].astype(str)))
    if unknown:
        raise LokalError(f"{where}: column {column!r} (data.split_column) holds {unknown[:10]}; "
                         "its values must be train, val or test")
    return names.to_numpy()


def _check_train_has_every_class(labels: np.ndarray, split: dict[str, np.ndarray], where: str) -> None:
    trained = set(labels[split["train"]])
    for name in ("val", "test"):
        unseen = sorted(set(labels[split[name]]) - trained)
        if unseen:
            raise LokalError(f"{where}: class(es) {unseen} appear in {name} but never in train, so the model "
                             f"cannot learn them; add training examples or remove them from {name}")


def _warn_missing_classes(labels: np.ndarray, split: dict[str, np.ndarray], where: str) -> None:
    every = set(labels)
    for name, rows in split.items():
        missing = sorted(every - set(labels[rows]))
        if len(rows) and missing:
            log.warning("%s: the group-aware %s split has no examples of %s (whole groups moved)", where, name, missing)


def _warn_shared_groups(groups: np.ndarray, split: dict[str, np.ndarray], where: str) -> None:
    seen: dict[str, str] = {}
    shared = set()
    for name, rows in split.items():
        for group in set(groups[rows]):
            if seen.setdefault(group, name) != name:
                shared.add(group)
    if shared:
        log.warning("%s: %d groups appear in more than one of your given splits (e.g. %s): their examples leak "
                    "across splits", where, len(shared), sorted(shared)[:5])


def label_strings(labels: pd.Series) -> pd.Series:
    """Labels as the user wrote them: 1.0 read from a column with a gap becomes "1" again."""
    if labels.dtype.kind == "f" and (labels.dropna() % 1 == 0).all():
        labels = labels.astype("Int64")
    return labels.astype(str).str.strip()


def warn_label_spellings(labels: list[str], where: str) -> None:
    """Two spellings of one class ("Negative" / "negative", "1" / "positive") silently become two
    classes: say so, with the `data.label_map` that merges them."""
    by_folded: dict[str, list[str]] = {}
    for label in labels:
        by_folded.setdefault(label.casefold().strip(), []).append(label)
    for spellings in (s for s in by_folded.values() if len(s) > 1):
        mapping = ", ".join(f"{s}: {spellings[-1]}" for s in spellings[:-1])
        log.warning("%s: labels %s differ only in case and are separate classes; if they are one class, set "
                    "data.label_map='{%s}'", where, spellings, mapping)
    numbers = [label for label in labels if label.lstrip("-").isdigit()]
    if numbers and len(numbers) < len(labels):
        words = [label for label in labels if label not in numbers]
        log.warning("%s: labels mix numbers %s and words %s: each is its own class; if a number is a word's "
                    "code, set data.label_map, e.g. data.label_map='{%s: %s}'", where, numbers, words, numbers[0],
                    words[0])


def known_classes(labels: pd.Series, classes: Sequence | None, ids: pd.Series, where: str) -> list[str]:
    """The class list: `classes` in the user's order, else the labels found, sorted. A label
    outside `classes` (a typo, a stray "netral") is an error naming the rows it is in."""
    if classes is None:
        found = sorted(labels.unique())
        warn_label_spellings(found, where)
        return found
    classes = [str(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise LokalError(f"data.classes={classes} lists a class twice")
    unknown = ~labels.isin(classes)
    if unknown.any():
        shown = ", ".join(f"{i} ({label!r})" for i, label in zip(ids[unknown][:10], labels[unknown][:10], strict=True))
        raise LokalError(f"{where}: {int(unknown.sum())} example(s) have a label not in data.classes {classes}: "
                         f"{shown}; fix those labels or add them to data.classes")
    unused = [c for c in classes if c not in set(labels)]
    if unused:
        log.warning("%s: data.classes %s have no examples; the model gets outputs it never learns", where, unused)
    return classes


# -- multi-label ---------------------------------------------------------------------------------
def multilabel_split_rows(targets: np.ndarray, names: list[str], val_fraction: float, test_fraction: float,
                          seed: int, where: str, given: Sequence[str] | None = None, folds: int = 0,
                          fold: int = 0, from_files: bool = False) -> dict[str, np.ndarray]:
    """Row indices per split for (N, L) 0/1 targets, by iterative stratification (Sechidis et al.
    2011; the iterative-stratification package): every label keeps its share in each split. As
    `split_rows`: `given` wins, else k-fold, else held out by seed; val is carved from the rest.
    k-fold over split tables (`from_files`) keeps a test table fixed, as `files_kfold`."""
    check_fractions(val_fraction, test_fraction)
    index = np.arange(len(targets))
    if folds and given is not None and not from_files:
        raise LokalError(f"{where}: data.folds={folds} makes its own test folds, so it cannot be combined with "
                         "data.split_column; unset one of them")
    fixed_test = np.flatnonzero(np.asarray(given) == "test") if folds and given is not None else index[:0]
    if len(fixed_test):
        pool = np.setdiff1d(index, fixed_test)
        inner = _multilabel_folds(targets[pool], folds, fold, 0.0, seed)
        split = {"train": pool[inner["train"]], "val": pool[inner["test"]], "test": fixed_test}
    elif folds:
        split = _multilabel_folds(targets, folds, fold, val_fraction, seed)
    elif given is not None:
        split = {name: np.flatnonzero(np.asarray(given) == name) for name in SPLITS}
        for name, fraction in (("test", test_fraction), ("val", val_fraction)):
            if not len(split[name]):
                split["train"], split[name] = _multilabel_holdout(split["train"], targets, fraction, seed)
    else:
        rest, test = _multilabel_holdout(index, targets, test_fraction, seed)
        train, val = _multilabel_holdout(rest, targets, val_fraction / (1 - test_fraction), seed)
        split = {"train": train, "val": val, "test": test}
    _check_every_label_trains(targets, names, split, where)
    return split


def _multilabel_holdout(rows: np.ndarray, targets: np.ndarray, fraction: float,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    if fraction <= 0 or len(rows) < 2:
        return rows, rows[:0]
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    kept, held = next(splitter.split(rows, targets[rows]))
    return np.sort(rows[kept]), np.sort(rows[held])


def _multilabel_folds(targets: np.ndarray, folds: int, fold: int, val_fraction: float,
                      seed: int) -> dict[str, np.ndarray]:
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    if folds < 2 or not 0 <= fold < folds:
        raise LokalError(f"data.folds={folds}, data.fold={fold}: k-fold needs folds >= 2 and 0 <= fold < folds")
    index = np.arange(len(targets))
    rest, test = list(MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
                      .split(index, targets))[fold]
    train, val = _multilabel_holdout(rest, targets, val_fraction, seed)
    return {"train": train, "val": val, "test": np.sort(test)}


def _check_every_label_trains(targets: np.ndarray, names: list[str], split: dict[str, np.ndarray],
                              where: str) -> None:
    """A label with no positive training example cannot be learned (nor its threshold chosen)."""
    positives = targets[split["train"]].sum(axis=0)
    missing = [name for name, n in zip(names, positives, strict=True) if n == 0]
    if missing:
        raise LokalError(f"{where}: label(s) {missing} have no positive example in the training split; add "
                         "examples, or leave those labels out of data.labels")
