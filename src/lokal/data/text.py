"""A table of texts and labels (CSV, TSV, JSONL, Parquet, SQLite) as a LightningDataModule."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from lokal import LokalError
from lokal.data import SplitDataModule, balanced_sampler, stratified_split

log = logging.getLogger(__name__)
READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet", ".db": "sqlite", ".sqlite": "sqlite"}


class TextDataModule(SplitDataModule):
    """Reads the table once, drops duplicate texts, splits stratified by seed, tokenises once."""

    modality = "text"

    def __init__(
        self,
        path: str | None,
        text_column: str = "text",
        label_column: str = "label",
        table: str | None = None,
        label_names: dict | None = None,
        dedup: bool = True,
        balance: bool = False,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        seed: int = 42,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.path, self.table = path, table
        self.text_column, self.label_column = text_column, label_column
        self.label_names = {str(k): v for k, v in (label_names or {}).items()}
        self.dedup, self.balance, self.seed = dedup, balance, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.batch_size, self.num_workers = batch_size, num_workers
        self.tokenizer, self.max_length = None, 128
        self.stats: dict[str, int] = {}
        self.frame = self._load()
        self.classes = sorted(self.frame[label_column].astype(str).unique())
        self.class_names = [self.label_names.get(c, c) for c in self.classes]
        self.splits = self._split()

    def use_model(self, model) -> None:
        self.tokenizer, self.max_length = model.tokenizer, model.max_length

    def labels(self, split: str) -> list[int]:
        return self.splits[split]["_y"].tolist()

    def texts(self, split: str) -> list[str]:
        return self.splits[split][self.text_column].astype(str).tolist()

    # -- loading -------------------------------------------------------------
    def _load(self) -> pd.DataFrame:
        frame = read_table(self.path, self.table)
        require_columns(frame, {"text_column": self.text_column, "label_column": self.label_column}, self.path)
        frame = frame[[self.text_column, self.label_column]].dropna()
        frame = frame[frame[self.text_column].astype(str).str.strip() != ""]
        self.stats["rows"] = len(frame)
        if self.dedup:
            frame = self._drop_duplicates(frame)
        return frame.reset_index(drop=True)

    def _drop_duplicates(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Drop texts equal after lowercasing and whitespace folding, before any split: a copy
        in both train and test would inflate the test score."""
        key = fold_text(frame[self.text_column])
        labels_per_text = frame.groupby(key)[self.label_column].nunique()
        conflicting = key.isin(labels_per_text[labels_per_text > 1].index)
        kept = frame[~key.duplicated() & ~conflicting]
        self.stats |= {"duplicates_dropped": int((~conflicting).sum() - len(kept)),
                       "conflicting_dropped": int(conflicting.sum())}
        log.info("dropped %d duplicate rows and %d rows whose text has conflicting labels (%d kept)",
                 self.stats["duplicates_dropped"], self.stats["conflicting_dropped"], len(kept))
        return kept

    def _split(self) -> dict[str, pd.DataFrame]:
        names = self.frame[self.label_column].astype(str)
        labels = names.map(self.classes.index).to_numpy()
        index = stratified_split(names.tolist(), self.val_fraction, self.test_fraction, self.seed, str(self.path))
        frames = {name: self.frame.iloc[rows].assign(_y=labels[rows]) for name, rows in index.items()}
        self.stats |= {f"{name}_rows": len(f) for name, f in frames.items()}
        return frames

    # -- Lightning hooks ---------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            raise RuntimeError("call use_model(model) before setup: the tokenizer comes from the model")
        if not hasattr(self, "datasets"):
            self.datasets = {name: self._encode(frame) for name, frame in self.splits.items()}

    def _encode(self, frame: pd.DataFrame) -> list[dict]:
        texts = frame[self.text_column].astype(str).tolist()
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        return [
            {"input_ids": ids, "attention_mask": mask, "label": y}
            for ids, mask, y in zip(encoded["input_ids"], encoded["attention_mask"], frame["_y"], strict=True)
        ]

    def _collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad([{k: r[k] for k in ("input_ids", "attention_mask")} for r in rows],
                                   return_tensors="pt")
        return {**batch, "label": torch.tensor([r["label"] for r in rows])}

    def _loader(self, split: str, train: bool) -> DataLoader:
        """Batches of similar length: padding a 40-token batch to its one 128-token text
        tripled the step time on the shipped corpus. Training order stays random across
        groups (HF's LengthGroupedSampler); evaluation goes shortest first. With `balance`,
        training draws classes equally often instead (lengths then mix)."""
        from transformers.trainer_pt_utils import LengthGroupedSampler

        rows = self.datasets[split]
        lengths = [len(r["input_ids"]) for r in rows]
        if train and self.balance:
            sampler = balanced_sampler(self.labels(split), self.seed)
        elif train:
            generator = torch.Generator().manual_seed(self.seed)
            sampler = LengthGroupedSampler(self.batch_size, lengths=lengths, generator=generator)
        else:
            sampler = sorted(range(len(rows)), key=lengths.__getitem__)
        return DataLoader(rows, batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=self._collate)


def read_table(path: str | None, table: str | None = None) -> pd.DataFrame:
    """Read CSV/TSV/JSONL/Parquet/SQLite into a frame, with a clear error for anything else."""
    if not path:
        raise LokalError("data.path is not set: give a CSV/TSV/JSONL/Parquet file, e.g. data.path=reviews.csv")
    file = Path(path)
    if not file.is_file():
        raise LokalError(f"data.path={path} does not exist (looked in {file.resolve().parent})")
    kind = READERS.get(file.suffix.lower())
    if kind is None:
        raise LokalError(f"{path}: unsupported file type {file.suffix!r}; use one of {', '.join(READERS)}")
    try:
        if kind == "sqlite":
            return _read_sqlite(file, table)
        if kind == "jsonl":
            return pd.read_json(file, lines=True)
        if kind == "parquet":
            return pd.read_parquet(file)
        return pd.read_csv(file, sep="\t" if kind == "tsv" else ",")
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise LokalError(f"{path}: cannot be read as {kind} ({err}); check its format and encoding (UTF-8)") from err


def _read_sqlite(file: Path, table: str | None) -> pd.DataFrame:
    import sqlite3

    with sqlite3.connect(f"file:{file}?mode=ro", uri=True) as conn:  # read-only: never touch user data
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
        if table not in tables:
            raise LokalError(f"{file}: set data.table to one of the tables {tables}")
        return pd.read_sql_query(f'select * from "{table}"', conn)


def require_columns(frame: pd.DataFrame, columns: dict[str, str], path) -> None:
    """`columns` maps a config key (e.g. text_column) to the column it names."""
    for column in columns.values():
        if column not in frame.columns:
            keys = " / ".join(f"data.{key}" for key in columns)
            raise LokalError(f"{path}: no column {column!r}; columns are {list(frame.columns)}. "
                             f"Set {keys} to the right names")


def fold_text(texts: pd.Series) -> pd.Series:
    """The duplicate key: lowercased, runs of whitespace folded to one space."""
    return texts.astype(str).str.lower().str.split().str.join(" ")
