"""Tables with several labels per example (the multi_label task): texts, or image files.

Labels come either from one column holding a set per row (`telco|complaint`; the separator is
found among | ; , or set with `label_separator`; an empty cell is an example with no label), or
from one 0/1 column per label (`label_columns: [telco, complaint, ...]`). Splits keep every
label's share (iterative stratification)."""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from lokal.data.base import SplitDataModule, make_records
from lokal.data.image import ImageFiles
from lokal.data.labelled_files import LabelledFilesDataModule
from lokal.data.resumable import length_grouped_loader
from lokal.data.settings import CacheSettings, DataSettings, LoaderSettings, SplitFileSettings, SplitSettings
from lokal.data.splits import given_splits, multilabel_split_rows
from lokal.data.tables import (
    FILE_SPLIT,
    describe_source,
    first_copies,
    fold_text,
    read_rows,
    report_leaks,
    row_ids,
    source_identity,
)
from lokal.errors import LokalError

log = logging.getLogger(__name__)
SEPARATORS = ("|", ";", ",")


class MultiLabelTextDataModule(SplitDataModule):
    """Reads the table once, turns labels into (N, L) 0/1 targets, drops empty and duplicate
    texts, splits by iterative stratification (or a split column, or k-fold), tokenises once."""

    modality = "text"
    task = "multi_label"

    settings = DataSettings(SplitSettings(), LoaderSettings(), CacheSettings(), files=SplitFileSettings())

    def __init__(self, path: str | None, text_column: str = "text", label_column: str | None = "labels",
                 label_columns: list[str] | None = None, label_separator: str | None = None,
                 labels: list[str] | None = None, table: str | None = None, encoding: str = "utf-8",
                 dedup: bool = True, split_column: str | None = None, **options) -> None:
        """`options`: the shared settings (`settings`: split, loader, cache and split-table keys)."""
        super().__init__(**options)
        self.path, self.text_column, self.split_column = path, text_column, split_column
        self.where = describe_source(path, asdict(self.settings.files))
        self.tokenizer, self.max_length = None, 128
        self.stats: dict[str, int] = {}
        columns = read_columns({"text_column": text_column}, split_column, label_column, label_columns)
        frame = read_rows(path, table, encoding, columns, asdict(self.settings.files),
                          labels=tuple(label_columns or [label_column]))
        frame = frame.assign(_id=row_ids(frame))
        self.class_names, targets = label_targets(frame, label_column, label_columns, label_separator, labels,
                                                  self.where)
        frame, targets = self._clean(frame, targets, dedup)
        given = _given(frame, split_column, self.where)
        index = multilabel_split_rows(targets, self.class_names, where=self.where, given=given,
                                      from_files=FILE_SPLIT in frame.columns, **asdict(self.settings.split))
        self.splits = {name: (frame.iloc[rows], targets[rows]) for name, rows in index.items()}
        self.stats |= {f"{name}_rows": len(rows) for name, rows in index.items()}

    def use_model(self, model) -> None:
        self.tokenizer, self.max_length = model.tokenizer, model.max_length

    def labels(self, split: str) -> np.ndarray:
        """(N, L) 0/1 targets of a split, in row order."""
        return self.splits[split][1]

    def texts(self, split: str) -> list[str]:
        return self.splits[split][0][self.text_column].astype(str).tolist()

    def records(self) -> pd.DataFrame:
        """One row per kept example for `lokal audit`: the label set joined by |."""
        parts = {name: frame.assign(_labels=joined_label_sets(targets, self.class_names))
                 for name, (frame, targets) in self.splits.items()}
        return make_records(parts, {"id": "_id", "label": "_labels", "text": self.text_column})

    # -- loading -------------------------------------------------------------------------------
    def _clean(self, frame: pd.DataFrame, targets: np.ndarray, dedup: bool) -> tuple[pd.DataFrame, np.ndarray]:
        """Empty texts go; with dedup, copies of a text keep one row (from split tables the test,
        then val copy: other copies are leakage, counted and logged), and copies with different
        label sets are dropped (which set is right is unknown)."""
        text = frame[self.text_column]
        keep = ~(text.isna() | (text.astype(str).str.strip() == "")).to_numpy()
        self.stats["empty_texts_dropped"] = int((~keep).sum())
        if dedup:
            key = pd.Series(fold_text(text.fillna("")).to_numpy())
            label_sets = pd.Series([row.tobytes() for row in targets])
            conflicting = key.map(label_sets.groupby(key).nunique()).to_numpy() > 1
            first, leaked = first_copies(key, frame)
            self.stats["conflicting_dropped"] = int((keep & conflicting).sum())
            self.stats["duplicates_dropped"] = int((keep & ~conflicting & ~first & ~leaked).sum())
            if FILE_SPLIT in frame.columns:
                self.stats |= report_leaks(frame, keep & leaked & ~conflicting, "exact", self.where)
            keep &= first & ~conflicting
        if not keep.any():
            raise LokalError(f"{self.where}: no usable rows (empty texts in column {self.text_column!r}?)")
        self.stats["rows"] = int(keep.sum())
        return frame[keep].reset_index(drop=True), targets[keep]

    # -- Lightning hooks -------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        from lokal.data.cache import encode_texts

        if self.tokenizer is None:
            raise RuntimeError("call use_model(model) before setup: the tokenizer comes from the model")
        if hasattr(self, "datasets"):
            return
        cache_dir = self.settings.cache.folder
        source = source_identity(self.path, asdict(self.settings.files)) if cache_dir else ""
        self.datasets = {}
        for name in self.splits:
            rows = encode_texts(self.tokenizer, self.texts(name), self.max_length, cache_dir, source)
            self.datasets[name] = [row | {"label": target.astype(np.float32).tolist(), "index": i}
                                   for i, (row, target) in enumerate(zip(rows, self.labels(name), strict=True))]

    def _loader(self, split: str, train: bool) -> DataLoader:
        from lokal.data.augment import TextCollate

        return length_grouped_loader(self.datasets[split], train, self.settings.split.seed,
                                     collate_fn=TextCollate(self.tokenizer, self.max_length),
                                     **self.settings.loader.kwargs())


def _given(frame: pd.DataFrame, split_column: str | None, where: str) -> np.ndarray | None:
    """Each row's split from the split column or the split table it came from; None: split by seed."""
    if split_column:
        return given_splits(frame[split_column], split_column, where)
    return frame[FILE_SPLIT].to_numpy() if FILE_SPLIT in frame.columns else None


def read_columns(content: dict[str, str], split_column: str | None, label_column: str | None,
                 label_columns: list[str] | None) -> dict[str, str]:
    """Config key -> column for everything a multi-label table module reads."""
    columns = content | ({"split_column": split_column} if split_column else {})
    if label_columns:
        return columns | {f"label_columns[{i}]": column for i, column in enumerate(label_columns)}
    return columns | {"label_column": label_column}


def label_targets(frame: pd.DataFrame, label_column: str | None, label_columns: list[str] | None,
                  separator: str | None, labels: list[str] | None, where: str) -> tuple[list[str], np.ndarray]:
    """(label names, (N, L) 0/1 targets) from a column of label sets or from 0/1 columns."""
    if label_columns:
        return list(label_columns), indicator_targets(frame, list(label_columns), where)
    sets = split_label_sets(frame[label_column], label_column, separator, where)
    found = sorted({label for row in sets for label in row})
    names = [str(name) for name in labels] if labels else found
    unknown = [(row_id, sorted(row - set(names))) for row_id, row in zip(frame["_id"], sets, strict=True)
               if row - set(names)]
    if unknown:
        shown = ", ".join(f"{i} {u}" for i, u in unknown[:10])
        raise LokalError(f"{where}: {len(unknown)} row(s) have a label not in data.labels {names}: {shown}; fix "
                         "those labels or add them to data.labels")
    targets = np.array([[name in row for name in names] for row in sets], dtype=np.int64).reshape(len(sets), -1)
    return names, targets


def joined_label_sets(rows: np.ndarray, names: list[str]) -> list[str]:
    """Each row of 0/1 (or boolean) targets as its label names joined by |: "telco|complaint"."""
    return ["|".join(name for name, on in zip(names, row, strict=True) if on) for row in rows]


def split_label_sets(values: pd.Series, column: str, separator: str | None, where: str) -> list[set[str]]:
    """Each cell as a set of labels; the separator found among | ; , unless given."""
    cells = values.fillna("").astype(str)
    if separator is None:
        counts = {sep: int(cells.str.contains(sep, regex=False).sum()) for sep in SEPARATORS}
        separator = max(counts, key=counts.get)
        if counts[separator] == 0:
            raise LokalError(f"{where}: no cell of column {column!r} holds more than one label (looked for "
                             f"{' '.join(SEPARATORS)}), e.g. {cells.iloc[0]!r}. Set data.label_separator, give one "
                             "0/1 column per label with data.label_columns, or for one label per row use "
                             "data=text_csv")
        log.info("%s: labels in column %r separated by %r", where, column, separator)
    return [{part.strip() for part in cell.split(separator) if part.strip()} for cell in cells]


def indicator_targets(frame: pd.DataFrame, columns: list[str], where: str) -> np.ndarray:
    """0/1 (or true/false) columns as targets; anything else is an error naming the column and rows."""
    values = frame[columns].replace({"true": 1, "false": 0, "True": 1, "False": 0, True: 1, False: 0})
    numeric = values.apply(pd.to_numeric, errors="coerce")
    for column in columns:
        bad = ~numeric[column].isin([0, 1])
        if bad.any():
            rows = ", ".join(frame["_id"][bad].head(5))
            raise LokalError(f"{where}: column {column!r} (data.label_columns) must hold 0 or 1, but {rows} hold "
                             f"{frame[column][bad].head(3).tolist()}")
    return numeric.to_numpy(dtype=np.int64)


class MultiLabelFilesDataModule(LabelledFilesDataModule):
    """A table of image files with several labels each: a file column (paths relative to `root`,
    by default the table's folder) and a column of label sets or one 0/1 column per label. The
    file checks, transforms, cache and loaders are the single-label image modules'."""

    task = "multi_label"

    settings = DataSettings(SplitSettings(), LoaderSettings(), CacheSettings(), files=SplitFileSettings())  # no classes

    def __init__(self, path: str | None, file_column: str = "file", label_column: str | None = "labels",
                 label_columns: list[str] | None = None, label_separator: str | None = None,
                 labels: list[str] | None = None, root: str | None = None, table: str | None = None,
                 encoding: str = "utf-8", split_column: str | None = None, bad_files: str = "fail",
                 augment: dict | None = None, **options) -> None:
        """`options`: the shared settings (`settings`: split, loader, cache and split-table keys)."""
        from lokal.data.files import table_modality
        from lokal.data.tables import require_values, with_paths

        super().__init__(bad_files, **options)
        where = describe_source(path, asdict(self.settings.files))
        columns = read_columns({"file_column": file_column}, split_column, label_column, label_columns)
        frame = read_rows(path, table, encoding, columns, asdict(self.settings.files),
                          labels=tuple(label_columns or [label_column]))
        require_values(frame, {"file_column": file_column}, where)
        self.root, frame = with_paths(frame.assign(_id=frame[file_column].astype(str).str.strip()), root,
                                      path or self.settings.files.train_path)
        if table_modality(frame, file_column, where) != "image":
            raise LokalError(f"{where}: multi-label tables read images so far; for audio labels use data=file_table")
        self.path, self.split_column, self.content = path, split_column, ImageFiles(augment)
        self.label_options = (label_column, label_columns, label_separator, labels)
        self._prepare(frame, where)

    def _prepare(self, frame: pd.DataFrame, where: str) -> None:
        """Check the files, read the label sets, split by iterative stratification."""
        frame = self._check_files(frame, where).reset_index(drop=True)
        self.class_names, targets = label_targets(frame, *self.label_options, where)
        index = multilabel_split_rows(targets, self.class_names, where=where,
                                      given=_given(frame, self.split_column, where),
                                      from_files=FILE_SPLIT in frame.columns, **asdict(self.settings.split))
        self.targets = {name: targets[rows] for name, rows in index.items()}
        vectors = [torch.as_tensor(row, dtype=torch.float32) for row in targets]  # (L,) each: batches stack to (B, L)
        frame = frame.assign(_y=vectors, _label=joined_label_sets(targets, self.class_names))
        self.files_by_split = {name: frame.iloc[rows] for name, rows in index.items()}
        self._use_parts(self.files_by_split)

    def labels(self, split: str) -> np.ndarray:
        """(N, L) 0/1 targets of a split, in row order."""
        return self.targets[split]
