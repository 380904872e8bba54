"""A table of texts and labels (CSV, TSV, JSONL, Parquet, SQLite) as a LightningDataModule."""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from lokal.data.augment import TextAugment, from_config
from lokal.data.base import SplitDataModule, balanced_sampler, make_records, record_extras
from lokal.data.resumable import length_grouped_loader
from lokal.data.settings import (
    CacheSettings,
    DataSettings,
    LabelSettings,
    LoaderSettings,
    SplitFileSettings,
    SplitSettings,
)
from lokal.data.splits import known_classes, split_rows
from lokal.data.tables import (
    FILE_SPLIT,
    KEEP_ORDER,
    LABEL,
    describe_source,
    first_copies,
    fold_text,
    map_labels,
    read_rows,
    report_leaks,
    source_identity,
    tag_rows,
    wanted_columns,
)
from lokal.errors import LokalError

log = logging.getLogger(__name__)
DEDUP = (True, False, "near")  # near: also near copies (lokal audit's MinHash search)
PII = (None, "redact", "drop")


class TextDataModule(SplitDataModule):
    """Reads the table (or one table per split) once, drops empty and duplicate texts (a text in
    two split tables keeps its evaluation copy), splits by seed (stratified, or group-aware,
    user-given or k-fold), tokenises once."""

    modality = "text"

    settings = DataSettings(SplitSettings(), LoaderSettings(), CacheSettings(), LabelSettings(), SplitFileSettings())

    def __init__(
        self,
        path: str | None,
        text_column: str = "text",
        label_column: str = "label",
        table: str | None = None,
        label_names: dict | None = None,
        label_map: dict | None = None,
        dedup: bool | str = True,
        pii: str | None = None,
        group_column: str | None = None,
        metadata_columns: list[str] | None = None,
        split_column: str | None = None,
        encoding: str = "utf-8",
        normalize_slang: bool = False,
        augment: dict | None = None,
        **options,
    ) -> None:
        """`options`: the shared settings (`settings`: split, loader, cache, labels and split-table keys)."""
        super().__init__(**options)
        self.path, self.table, self.encoding = path, table, encoding
        self.where = describe_source(path, asdict(self.settings.files))
        self.text_column, self.label_column = text_column, label_column
        self.group_column, self.split_column = group_column, split_column
        self.metadata_columns = list(metadata_columns or [])
        self.label_names = {str(k): v for k, v in (label_names or {}).items()}
        self.label_map = dict(label_map or {})
        self.dedup, self.pii = check_choice("dedup", dedup, DEDUP), check_choice("pii", pii, PII)
        self.normalize_slang = normalize_slang
        self.augment = from_config(TextAugment, augment, "augment")  # EDA on training texts
        self.tokenizer, self.max_length = None, 128
        self.stats: dict[str, int] = {}
        self.frame = self._load()
        self.classes = known_classes(self.frame[LABEL], self.settings.labels.classes, self.frame["_id"], self.where)
        self.class_names = [self.label_names.get(c, c) for c in self.classes]
        self.splits = self._split()

    def use_model(self, model) -> None:
        self.tokenizer, self.max_length = model.tokenizer, model.max_length

    def labels(self, split: str) -> list[int]:
        return self.splits[split]["_y"].tolist()

    def texts(self, split: str) -> list[str]:
        return self.splits[split][self.text_column].astype(str).tolist()

    def records(self) -> pd.DataFrame:
        """One row per kept example (id "row N" = 0-based data row of the file), for `lokal audit`."""
        return make_records(self.splits, {"id": "_id", "label": LABEL, "text": self.text_column}
                            | record_extras(self.group_column, self.metadata_columns))

    # -- loading -------------------------------------------------------------
    def _load(self) -> pd.DataFrame:
        columns = wanted_columns({"text_column": self.text_column, "label_column": self.label_column},
                                 self.group_column, self.split_column, self.metadata_columns)
        frame = read_rows(self.path, self.table, self.encoding, columns, asdict(self.settings.files),
                          labels=(self.label_column,))
        frame = self._drop_empty(frame)
        if self.label_map:  # before dedup: "Negative" and "negative" on one text are one label, not a conflict
            frame[self.label_column] = map_labels(frame[self.label_column], self.label_map)
        self.stats["rows"] = len(frame)
        if self.pii:
            frame = self._handle_pii(frame)
        if self.dedup:
            frame = self._drop_duplicates(frame)
        if self.dedup == "near":
            frame = self._drop_near_duplicates(frame)
        return tag_rows(frame, self.label_column, self.group_column, self.split_column, self.where)

    def _drop_empty(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Rows with no text or no label teach nothing: drop and count them; none left is an error."""
        text = frame[self.text_column]
        empty = text.isna() | (text.astype(str).str.strip() == "")
        unlabelled = frame[self.label_column].isna() & ~empty
        self.stats |= {"empty_texts_dropped": int(empty.sum()), "missing_labels_dropped": int(unlabelled.sum())}
        dropped = ((empty, "empty text", self.text_column), (unlabelled, "no label", self.label_column))
        for rows, what, column in dropped:
            if rows.any():
                log.warning("%s: dropped %d rows with %s in column %r (e.g. %s)", self.where, int(rows.sum()), what,
                            column, ", ".join(f"row {r}" for r in frame["_row"][rows][:5]))
        kept = frame[~empty & ~unlabelled]
        if kept.empty:
            raise LokalError(f"{self.where}: no usable rows: {int(empty.sum())} have empty text in column "
                             f"{self.text_column!r} and {int(unlabelled.sum())} no label in column "
                             f"{self.label_column!r}; check data.text_column / data.label_column")
        return kept.assign(**{self.text_column: kept[self.text_column].astype(str)})

    def _drop_duplicates(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Drop texts equal after lowercasing and whitespace folding, before any split: a copy
        in both train and test would inflate the test score. From split tables the copy in
        test (then val) stays and copies in other tables are counted and logged as leakage."""
        key = fold_text(frame[self.text_column])
        labels_per_text = frame.groupby(key)[self.label_column].nunique()
        conflicting = key.isin(labels_per_text[labels_per_text > 1].index).to_numpy()
        first, leaked = first_copies(key, frame)
        kept = frame[first & ~conflicting]
        self.stats |= {"duplicates_dropped": int((~conflicting & ~first & ~leaked).sum()),
                       "conflicting_dropped": int(conflicting.sum())}
        if FILE_SPLIT in frame.columns:
            self.stats |= report_leaks(frame, leaked & ~conflicting, "exact", self.where)
        log.info("dropped %d duplicate rows and %d rows whose text has conflicting labels (%d kept)",
                 self.stats["duplicates_dropped"], self.stats["conflicting_dropped"], len(kept))
        return kept

    def _handle_pii(self, frame: pd.DataFrame) -> pd.DataFrame:
        """NIKs, phone numbers and emails (lokal.audit.pii) are redacted to [NIK] / [PHONE] /
        [EMAIL], or their rows dropped, before anything is split or trained on."""
        from lokal.audit.pii import redact_series

        texts = frame[self.text_column]
        redacted = redact_series(texts)
        changed = redacted != texts
        if self.pii == "drop":
            self.stats["pii_rows_dropped"] = int(changed.sum())
            return frame[~changed]
        self.stats["pii_rows_redacted"] = int(changed.sum())
        return frame.assign(**{self.text_column: redacted})

    def _drop_near_duplicates(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Near copies (the audit's MinHash search, the audit's threshold) keep their first row;
        a near-copy group with two labels is dropped whole, as exact conflicts are."""
        from lokal.audit.core import AuditSettings
        from lokal.audit.text import near_duplicate_groups

        groups = near_duplicate_groups(frame[self.text_column].tolist(), AuditSettings().text_threshold)
        labels = frame[self.label_column].to_numpy()
        splits = frame[FILE_SPLIT].to_numpy() if FILE_SPLIT in frame.columns else None
        drop: list[int] = []
        leaked = np.zeros(len(frame), dtype=bool)
        for group in groups:
            conflicting = len(set(labels[group])) > 1
            if splits is not None and not conflicting:  # the evaluation copy stays, as with exact copies
                group = sorted(group, key=lambda row: KEEP_ORDER[splits[row]])
                leaked[group[1:]] = splits[group[1:]] != splits[group[0]]
            drop += group if conflicting else group[1:]
        self.stats["near_duplicates_dropped"] = len(drop)
        if splits is not None:
            self.stats |= report_leaks(frame, leaked, "near", self.where)
        log.info("dropped %d near-duplicate rows (%d kept)", len(drop), len(frame) - len(drop))
        return frame.drop(frame.index[drop])

    def _split(self) -> dict[str, pd.DataFrame]:
        frame = self.frame
        index = split_rows(frame[LABEL], where=self.where, groups=frame.get("_group"), given=frame.get("_given"),
                           from_files=FILE_SPLIT in frame.columns, **asdict(self.settings.split))
        labels = frame[LABEL].map({name: i for i, name in enumerate(self.classes)}).to_numpy()
        frames = {name: frame.iloc[rows].assign(_y=labels[rows]) for name, rows in index.items()}
        self.stats |= {f"{name}_rows": len(f) for name, f in frames.items()}
        return frames

    # -- Lightning hooks ---------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            raise RuntimeError("call use_model(model) before setup: the tokenizer comes from the model")
        if not hasattr(self, "datasets"):
            self.datasets = {name: self._encode(frame, train=name == "train") for name, frame in self.splits.items()}

    def _encode(self, frame: pd.DataFrame, train: bool = False) -> list[dict]:
        """Token ids per row, read from the cache when this data version was tokenised before.
        Slang normalisation applies to every split: the model must see the same words at test
        time. With augment, training rows keep their text for the collate function to augment
        and tokenise afresh each epoch (their cached ids still give lengths for batching)."""
        from lokal.data.augment import normalize_slang
        from lokal.data.cache import encode_texts

        texts = frame[self.text_column].astype(str).tolist()
        if self.normalize_slang:
            texts = [normalize_slang(t) for t in texts]
        cache_dir = self.settings.cache.folder
        source = f"{source_identity(self.path, asdict(self.settings.files))}|{self.table}" if cache_dir else ""
        rows = encode_texts(self.tokenizer, texts, self.max_length, cache_dir, source)
        keep = train and self.augment is not None
        # "index": the row's place in its split, so predictions from length-sorted batches can be put back in order
        return [row | {"label": y, "index": i} | ({"text": text} if keep else {})
                for i, (row, text, y) in enumerate(zip(rows, texts, frame["_y"], strict=True))]

    def _loader(self, split: str, train: bool) -> DataLoader:
        """Batches of similar length (lokal.data.resumable.length_grouped_loader). With
        `balance`, training draws classes equally often instead (lengths then mix)."""
        seed = self.settings.split.seed
        sampler = balanced_sampler(self.labels(split), seed) if train and self.settings.labels.balance else None
        return length_grouped_loader(self.datasets[split], train, seed, sampler=sampler,
                                     collate_fn=self._collate(train), **self.settings.loader.kwargs())

    def _collate(self, train: bool):
        from lokal.data.augment import TextCollate
        from lokal.data.cache import quiet_tokenizer_fork

        augment = self.augment if train else None
        if augment is not None and self.settings.loader.num_workers:
            quiet_tokenizer_fork()
        return TextCollate(self.tokenizer, self.max_length, augment)


def check_choice(key: str, value, choices: tuple) -> object:
    """A config value from a fixed set, or an error listing the set."""
    if value not in choices:
        raise LokalError(f"data.{key}={value!r}: choose one of {', '.join(map(repr, choices))}")
    return value
