"""Recordings and their transcripts (a CSV/TSV/JSONL/Parquet/SQLite table: file path + text per row)
as a LightningDataModule for Whisper speech recognition.

Every file is checked up front (a broken recording found in epoch 3 wastes the first two) and
its length read from the header; the audio itself is decoded, resampled to 16 kHz and turned
into Whisper's log-mel per item, so an hour of speech never sits in memory. Training items get
waveform augmentation first (speed, shift, noise) and SpecAugment on the log-mel after.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from lokal.audit.images import file_sha256
from lokal.data.audio import SAMPLE_RATE, LengthPolicy, audio_problem, load_audio
from lokal.data.audio_augment import AudioAugment, SpecAugment
from lokal.data.base import SplitDataModule, make_records
from lokal.data.labelled_files import bad_files_message, check_bad_files
from lokal.data.resumable import resumable_loader
from lokal.data.settings import DataSettings, HoldoutSettings, LoaderSettings, SplitFileSettings
from lokal.data.splits import split_rows
from lokal.data.tables import describe_source, read_rows, require_values, tag_rows, wanted_columns, with_paths
from lokal.errors import LokalError

log = logging.getLogger(__name__)
IGNORE = -100  # label of positions the loss skips (padding): PyTorch's and HF's ignore_index


class SpeechDataModule(SplitDataModule):
    """One row per recording: `file_column` (relative to `root`, by default the table's folder)
    and `text_column`. Rows with a blank transcript are dropped and counted; recordings longer
    than Whisper's 30 s window are skipped and named (a transcript cannot be cut without word
    timings). Split by seed, by `group_column` (a speaker never in two splits) or `split_column`."""

    modality = "audio"
    task = "speech_recognition"

    settings = DataSettings(HoldoutSettings(val_fraction=0.1, test_fraction=0.1), LoaderSettings(batch_size=8),
                            files=SplitFileSettings())

    def __init__(
        self,
        path: str | None,
        file_column: str = "file",
        text_column: str = "text",
        root: str | None = None,
        table: str | None = None,
        encoding: str = "utf-8",
        group_column: str | None = None,
        split_column: str | None = None,
        metadata_columns: list[str] | None = None,
        dedup: bool = True,
        bad_files: str = "fail",
        max_seconds: float = 30.0,
        augment: dict | None = None,
        spec_augment: dict | None = None,
        **options,
    ) -> None:
        """`options`: the shared settings (`settings`: split and loader keys; no k-fold)."""
        super().__init__(**options)
        self.path, self.table, self.encoding = path, table, encoding
        self.where = describe_source(path, asdict(self.settings.files))
        self.file_column, self.text_column = file_column, text_column
        self.group_column, self.split_column = group_column, split_column
        self.metadata_columns = list(metadata_columns or [])
        self.dedup, self.bad_files = dedup, check_bad_files(bad_files, ("fail", "skip"))
        self.length_policy = LengthPolicy("skip", max_seconds)
        self.augment = AudioAugment(**dict(augment or {}))
        self.spec_augment = SpecAugment(**dict(spec_augment or {}))
        self.feature_extractor = self.tokenizer = None
        self.max_label_tokens = 448
        self.class_names: list[str] = []  # no classes: transcripts are the targets
        self.stats: dict[str, int] = {}
        self.root, frame = with_paths(self._listing(), root, path or self.settings.files.train_path)
        self.parts = self._split(self._keep_usable(frame))

    # -- reading the table -------------------------------------------------------------------
    def _listing(self) -> pd.DataFrame:
        columns = wanted_columns({"file_column": self.file_column, "text_column": self.text_column},
                                 self.group_column, self.split_column, self.metadata_columns)
        frame = read_rows(self.path, self.table, self.encoding, columns, asdict(self.settings.files),
                          labels=(self.text_column,))
        self.stats["rows"] = len(frame)
        require_values(frame, {"file_column": self.file_column}, self.where)
        files = frame[self.file_column].astype(str).str.strip()
        texts = frame[self.text_column].fillna("").astype(str).str.strip()
        blank = texts == ""
        self.stats["empty_dropped"] = int(blank.sum())
        if blank.all():
            raise LokalError(f"{self.where}: every row has an empty {self.text_column!r} (data.text_column); "
                             "a transcript per recording is needed")
        frame = frame.assign(_text=texts)[~blank]
        frame = tag_rows(frame.assign(_label="speech"), "_label", self.group_column, self.split_column, self.where)
        return frame.assign(_id=files[~blank].to_numpy())

    def _split(self, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
        index = split_rows(np.full(len(frame), "speech"), where=self.where, groups=frame.get("_group"),
                           given=frame.get("_given"), **asdict(self.settings.split))
        parts = {name: frame.iloc[rows].reset_index(drop=True) for name, rows in index.items()}
        self.stats |= {f"{name}_rows": len(part) for name, part in parts.items()}
        return parts

    def _keep_usable(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Check every file (found, audio, not empty, a readable rate), drop clips over max_seconds
        and exact duplicate recordings; a LokalError listing the bad files unless bad_files=skip."""
        import soundfile

        reasons = [audio_problem(path) for path in frame["path"]]
        bad = np.array([r is not None for r in reasons])
        names = "row " + frame["_row"].astype(str) + ": " + frame["_id"]
        if bad.any() and self.bad_files == "fail":
            raise LokalError(bad_files_message(names[bad], pd.Series(reasons, index=frame.index)[bad], self.where))
        for name, reason in zip(names[bad], pd.Series(reasons, index=frame.index)[bad], strict=True):
            log.warning("%s: %s; left out (data.bad_files=skip)", name, reason)
        self.stats["bad_files"] = int(bad.sum())
        frame = frame[~bad]
        seconds = np.array([soundfile.info(p).duration for p in frame["path"]])
        too_long = seconds > self.length_policy.max_seconds
        self.length_policy.skipped += frame["_id"][too_long].tolist()
        if too_long.any():
            log.warning("%s", self.length_policy.summary())
        self.stats["too_long_skipped"] = int(too_long.sum())
        frame = frame[~too_long].assign(_seconds=seconds[~too_long])
        if self.dedup:
            key = frame["path"].map(file_sha256) + "\0" + frame["_text"].str.lower()
            self.stats["duplicates_dropped"] = int(key.duplicated().sum())
            frame = frame[~key.duplicated().to_numpy()]
        if frame.empty:
            raise LokalError(f"{self.where}: no usable recording is left (see the log); check data.root and the files")
        return frame.reset_index(drop=True)

    # -- what the rest of lokal reads ----------------------------------------------------------
    def use_model(self, model) -> None:
        self.feature_extractor, self.tokenizer = model.feature_extractor, model.tokenizer
        self.max_label_tokens = model.max_label_tokens
        self._fit_window(float(self.feature_extractor.chunk_length))

    def _fit_window(self, seconds: float) -> None:
        """A model hearing less than data.max_seconds (a checkpoint with a shorter window) would
        silently cut longer clips off mid-sentence: those are left out and named instead."""
        for name, part in self.parts.items():
            too_long = part["_seconds"] > seconds
            if too_long.any():
                log.warning("%s: %d recording(s) longer than the model's %g s window left out: %s", name,
                            int(too_long.sum()), seconds, ", ".join(part["_id"][too_long][:10]))
                self.stats["too_long_skipped"] += int(too_long.sum())
                self.parts[name] = part[~too_long].reset_index(drop=True)
                self.stats[f"{name}_rows"] = len(self.parts[name])
                if self.parts[name].empty:
                    raise LokalError(f"{self.where}: no {name} recording fits the model's {seconds:g} s window")

    def texts(self, split: str) -> list[str]:
        return self.parts[split]["_text"].tolist()

    def files(self, split: str) -> list[str]:
        return self.parts[split]["_id"].tolist()

    def records(self) -> pd.DataFrame:
        """One row per kept recording, for `lokal audit`: the path and its transcript."""
        return make_records(self.parts, {"id": "_id", "label": "_label", "path": "path", "text": "_text"})

    # -- encoding --------------------------------------------------------------------------------
    def label_ids(self, text: str) -> list[int]:
        """Token ids the decoder learns: the prefix tokens (language, task, no-timestamps), the text,
        end-of-text; without the start token, which the model puts in front itself (shifting right)."""
        ids = self.tokenizer(text).input_ids
        start = self.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
        return ids[1:] if ids and ids[0] == start else ids

    def setup(self, stage: str | None = None) -> None:
        if self.feature_extractor is None:
            raise RuntimeError("call use_model(model) before setup: features and tokens come from the model")
        if hasattr(self, "datasets"):
            return
        self.datasets = {}
        for name, part in self.parts.items():
            labels = [self.label_ids(t) for t in part["_text"]]
            keep = np.array([len(ids) <= self.max_label_tokens for ids in labels])
            if not keep.all():
                rows = ", ".join(part["_id"][~keep][:5])
                log.warning("%s: %d transcript(s) longer than the decoder's %d tokens left out (%s)", name,
                            int((~keep).sum()), self.max_label_tokens, rows)
                self.stats[f"{name}_too_many_tokens"] = int((~keep).sum())
                part = self.parts[name] = part[keep].reset_index(drop=True)
                labels = [ids for ids, k in zip(labels, keep, strict=True) if k]
            train = name == "train"
            self.datasets[name] = SpeechDataset(part["path"].tolist(), part["_text"].tolist(), labels,
                                                self.feature_extractor, self.augment if train else None,
                                                self.spec_augment if train else None)

    def _loader(self, split: str, train: bool) -> DataLoader:
        from torch.utils.data import RandomSampler

        dataset, loader = self.datasets[split], self.settings.loader
        options = loader.kwargs() | {"collate_fn": collate, "persistent_workers": loader.num_workers > 0}
        if train:
            return resumable_loader(dataset, RandomSampler(dataset, generator=torch.Generator()),
                                    self.settings.split.seed, **options)
        return DataLoader(dataset, **options)


class SpeechDataset(Dataset):
    """Item i: Whisper's log-mel of recording i (augmented in training) and its label ids."""

    def __init__(self, paths: list[str], texts: list[str], labels: list[list[int]], feature_extractor,
                 augment: AudioAugment | None = None, spec_augment: SpecAugment | None = None) -> None:
        self.paths, self.texts, self.labels = paths, texts, labels
        self.feature_extractor, self.augment, self.spec_augment = feature_extractor, augment, spec_augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        audio = load_audio(self.paths[i])
        # torch's seed is set per sample by the training loader (lokal.data.resumable): reproducible draws
        rng = np.random.default_rng(torch.initial_seed())
        if self.augment is not None:
            audio = self.augment(audio, rng)
        features = self.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
        if self.spec_augment is not None:
            features = self.spec_augment(features, rng)
        return {"input_features": torch.from_numpy(features), "labels": self.labels[i], "text": self.texts[i],
                "index": i}


def collate(items: list[dict]) -> dict:
    """Features stacked (B, mels, frames); labels right-padded with -100 (B, T); texts and indices as lists."""
    width = max(len(item["labels"]) for item in items)
    labels = torch.tensor([item["labels"] + [IGNORE] * (width - len(item["labels"])) for item in items])
    return {"input_features": torch.stack([item["input_features"] for item in items]), "labels": labels,
            "text": [item["text"] for item in items], "index": torch.tensor([item["index"] for item in items])}

