"""Labelled files, listed by class folders or by a table, as a LightningDataModule: every file
checked once, classes fixed, rows split (held out, user-given or k-fold), records for
`lokal audit`, shuffled or balanced loaders. What a model reads from a file is its content's
business (`FileContent`): lokal.data.image.ImageFiles (timm transforms, mixup) or
lokal.data.audio_files.AudioFiles (Whisper's log-mel, audio augmentation), so a folder of
images, a folder of recordings and a table of either train the same way."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from lokal.data.base import SplitDataModule, balanced_sampler, make_records, record_extras
from lokal.data.cache import digest, file_identity
from lokal.data.checks import check_file, modality_of
from lokal.data.resumable import resumable_loader
from lokal.data.settings import CacheSettings, DataSettings, LabelSettings, LoaderSettings, SplitSettings
from lokal.data.splits import known_classes, split_rows
from lokal.errors import LokalError

log = logging.getLogger(__name__)
BAD_FILES = {"fail": "stop and list them", "skip": "leave them out and log each", "keep": "no check"}


class FileContent(Protocol):
    """What one kind of file (image, audio) brings: how the model reads it."""

    modality: str
    stats: dict[str, int]  # counts to report, e.g. long clips split

    def use_model(self, model) -> None: ...  # input size, normalisation, feature extractor

    def fit(self, parts: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]: ...  # rows to train on, per split

    def datasets(self, parts: dict[str, pd.DataFrame], classes: int,
                 cache_dir: Path | None) -> dict[str, Dataset]: ...

    def training_batch(self, batch: dict) -> dict: ...  # a training batch on the device (e.g. mixed up)


class LabelledFilesDataModule(SplitDataModule):
    """Labelled files, wherever they are listed. A subclass sets `content`, lists the files as a
    frame (`_id`, `path`, `_label`, optional `_given` split, `_group`, metadata columns) and calls
    `_prepare`; the file checks, classes, splits, records() and loaders are shared."""

    settings = DataSettings(SplitSettings(), LoaderSettings(), CacheSettings(), LabelSettings())
    content: FileContent
    group_column: str | None = None
    metadata_columns: tuple[str, ...] | list[str] = ()

    def __init__(self, bad_files: str = "fail", **options) -> None:
        super().__init__(**options)
        self.bad_files = check_bad_files(bad_files)
        self.stats: dict[str, int] = {}
        self.image_modes: dict[str, int] = {}

    @property
    def modality(self) -> str:
        return self.content.modality

    def _prepare(self, frame: pd.DataFrame, where: str) -> None:
        """Check the files, fix the classes, split: everything but the listing."""
        frame = self._check_files(frame, where).reset_index(drop=True)
        self.class_names = known_classes(frame["_label"], self.settings.labels.classes, frame["_id"], where)
        index = split_rows(frame["_label"], where=where, groups=frame.get("_group"), given=frame.get("_given"),
                           from_files="_file_split" in frame.columns, **asdict(self.settings.split))
        labels = frame["_label"].map({name: i for i, name in enumerate(self.class_names)}).to_numpy()
        self.files_by_split = {name: frame.iloc[rows].assign(_y=labels[rows]) for name, rows in index.items()}
        self._use_parts(self.files_by_split)

    def _use_parts(self, parts: dict[str, pd.DataFrame]) -> None:
        """The rows each split trains on: one per file (audio: per chunk of a long clip)."""
        self.parts = parts
        self.splits = {name: list(zip(part["path"].map(Path), part["_y"].tolist(), strict=True))
                       for name, part in self.parts.items()}
        self.stats |= {f"{name}_rows": len(items) for name, items in self.splits.items()}

    def _check_files(self, frame: pd.DataFrame, where: str) -> pd.DataFrame:
        """Read every file once, up front: a truncated JPEG found in epoch 3 wastes the first
        two. fail lists the bad files and stops; skip leaves them out, one log line each; keep
        checks nothing (`lokal audit` checks them itself)."""
        if self.bad_files == "keep":
            return frame
        cache_dir = self.settings.cache.folder
        found = inspect_files(frame["path"].tolist(), cache_dir / "file_checks" / f"{digest(where)}.json"
                              if cache_dir else None)
        reasons = pd.Series([reason for reason, _ in found], index=frame.index, dtype=object)
        self.image_modes = dict(sorted(Counter(mode for _, mode in found if mode).items()))
        self.stats |= {f"image_mode_{mode}": n for mode, n in self.image_modes.items()}
        bad = reasons.notna()
        names = file_names(frame)
        if bad.any() and self.bad_files == "fail":
            raise LokalError(bad_files_message(names[bad], reasons[bad], where))
        for name, reason in zip(names[bad], reasons[bad], strict=True):
            log.warning("%s: %s; left out (data.bad_files=skip)", name, reason)
        self.stats["bad_files"] = int(bad.sum())
        if bad.all():
            raise LokalError(f"{where}: none of the {len(frame)} files is usable (see the log); check data paths")
        return frame[~bad]

    def use_model(self, model) -> None:
        self.content.use_model(model)
        self._use_parts(self.content.fit(self.files_by_split))
        self.stats |= self.content.stats

    def labels(self, split: str) -> list[int]:
        return [y for _, y in self.splits[split]]

    def records(self) -> pd.DataFrame:
        """One row per kept file (id = path relative to the data root, or as the table wrote it)."""
        return make_records(self.parts, {"id": "_id", "label": "_label", "path": "path"}
                            | record_extras(self.group_column, list(self.metadata_columns)))

    def setup(self, stage: str | None = None) -> None:
        self.datasets = self.content.datasets(self.parts, len(self.class_names), self.settings.cache.folder)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Training batches only (`trainer.training` is False in sanity checks, validation, test
        and predict): mixup mixes whole batches, on the GPU once the batch is there."""
        if self.trainer is not None and self.trainer.training:
            return self.content.training_batch(batch)
        return batch

    def _loader(self, split: str, train: bool) -> DataLoader:
        from torch.utils.data import RandomSampler

        dataset, loader, seed = self.datasets[split], self.settings.loader, self.settings.split.seed
        options = loader.kwargs() | {"persistent_workers": loader.num_workers > 0}
        if not train:
            return DataLoader(dataset, **options)
        if self.settings.labels is not None and self.settings.labels.balance:
            sampler = balanced_sampler(self.labels(split), seed)
        else:
            sampler = RandomSampler(dataset, generator=torch.Generator())
        return resumable_loader(dataset, sampler, seed, **options)


class FolderDataModule(LabelledFilesDataModule):
    """Files in class folders, split (DIR/train/CLASS/) or not (DIR/CLASS/). With data.folds >= 2
    the train/val/test folders of a split layout are pooled into one set and k-fold splits that.
    A subclass names what it scans for: `extensions`, `noun` and `layout_help` (for messages)."""

    extensions: tuple[str, ...]
    noun: str
    layout_help: str

    def __init__(self, root: str | None, content: FileContent, bad_files: str = "fail", **options) -> None:
        super().__init__(bad_files, **options)
        self.content = content
        self.root = check_root(root, self.layout_help)
        self.files = self._find_files()  # split -> list of (path, class name)
        self._prepare(self._listing(), str(self.root))

    def _find_files(self) -> dict[str, list[tuple[Path, str]]]:
        if (self.root / "train").is_dir():
            splits = [s for s in ("train", "val", "test") if (self.root / s).is_dir()]
            files = {split: self._scan(self.root / split) for split in splits}
            if not self.settings.split.folds:
                check_split_classes(self.root, files, self.noun)
            return files
        return {"all": self._scan(self.root)}

    def _scan(self, folder: Path) -> list[tuple[Path, str]]:
        """(file, class) for every file with one of `extensions` in the class folders of `folder`."""
        class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        files = [(f, d.name) for d in class_dirs for f in sorted(d.rglob("*")) if f.suffix.lower() in self.extensions]
        if len(class_dirs) < 2 or not files:
            found = ", ".join(d.name for d in class_dirs) or "no subfolders"
            raise LokalError(f"{folder}: found {found} with {len(files)} {self.noun}; {self.layout_help}")
        empty = [d.name for d in class_dirs if not any(c == d.name for _, c in files)]
        if empty:
            raise LokalError(f"{folder}: class folder(s) {empty} hold no {self.noun} ({', '.join(self.extensions)}); "
                             f"{self.layout_help}")
        return files

    def _listing(self) -> pd.DataFrame:
        """One row per file; the folder's own splits become `_given` unless k-fold pools them."""
        rows = [(f.relative_to(self.root).as_posix(), str(f.absolute()), c, split)
                for split, files in self.files.items() for f, c in files]
        frame = pd.DataFrame(rows, columns=["_id", "path", "_label", "_given"])
        folds = self.settings.split.folds
        if folds and "train" in self.files:
            log.info("data.folds=%d: pooling %s of %s for k-fold", folds, "/".join(self.files), self.root)
        return frame.drop(columns="_given") if folds or "all" in self.files else frame


def check_bad_files(value: str, allowed: tuple[str, ...] = tuple(BAD_FILES)) -> str:
    """data.bad_files, one of `allowed`, or a LokalError saying what each choice does."""
    if value not in allowed:
        choices = [f"{choice} ({BAD_FILES[choice]})" for choice in allowed]
        raise LokalError(f"data.bad_files={value!r}: use {', '.join(choices[:-1])} or {choices[-1]}")
    return value


def check_root(root: str | None, layout: str) -> Path:
    if not root:
        raise LokalError(f"data.root is not set: pass data.root=DIR, {layout}")
    path = Path(root)
    if not path.is_dir():
        raise LokalError(f"data.root={root} is not a folder; {layout}")
    return path


def check_split_classes(root: Path, files: dict[str, list[tuple[Path, str]]], noun: str) -> None:
    """A class folder in val/ or test/ but not in train/ (a typo, "Normal" vs "NORMAL") would
    be scored but never learned."""
    trained = {c for _, c in files["train"]}
    for split in ("val", "test"):
        for name in sorted({c for _, c in files.get(split, [])} - trained):
            raise LokalError(f"{root / split / name}: class {name!r} has no training {noun} ({root / 'train' / name} "
                             f"is missing); add {root / 'train' / name} or rename/remove {root / split / name}")


def inspect_files(paths: list[str], memo: Path | None = None) -> list[tuple[str | None, str | None]]:
    """(reason it is unusable or None, image mode or None) per file, read in threads (PIL
    decodes outside the GIL). Decoding 5,856 X-rays takes ~1.5 min on 2 cores, so the answers
    for unchanged files (same path, size, mtime) are kept in `memo`, a JSON file: restarts and
    k-fold runs read each file once."""
    from concurrent.futures import ThreadPoolExecutor

    known = _read_memo(memo)
    keys = [_identity(path) for path in paths]
    todo = [i for i, key in enumerate(keys) if key is None or key not in known]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        fresh = dict(zip(todo, pool.map(_inspect, [paths[i] for i in todo]), strict=True))
    if memo and any(keys[i] for i in todo):
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")  # write then rename: parallel runs never read half a file
        tmp.write_text(json.dumps(known | {keys[i]: fresh[i] for i in todo if keys[i]}))
        os.replace(tmp, memo)
    return [fresh[i] if i in fresh else tuple(known[key]) for i, key in enumerate(keys)]


def _read_memo(memo: Path | None) -> dict[str, list]:
    try:
        return json.loads(memo.read_text()) if memo and memo.is_file() else {}
    except (OSError, ValueError):  # unreadable memo: check everything again
        return {}


def _identity(path: str) -> str | None:
    try:
        return file_identity(path)
    except OSError:  # missing: never remembered, so a file put back later is checked
        return None


def _inspect(path: str) -> tuple[str | None, str | None]:
    from PIL import Image

    from lokal.data.audio import audio_problem

    reason = check_file(path)
    if reason == "file not found":
        return f"file not found (looked for {path})", None
    if reason and modality_of(path) == "audio":  # says why libsndfile refuses a 0 Hz header
        return audio_problem(path) or reason, None
    if reason or modality_of(path) != "image":
        return reason, None
    with Image.open(path) as img:
        return None, img.mode


def file_names(frame: pd.DataFrame) -> pd.Series:
    """How a file is named in messages: its id, after the table row when it came from a table."""
    if "_row" in frame:
        return "row " + frame["_row"].astype(str) + ": " + frame["_id"]
    return frame["_id"]


def bad_files_message(names: pd.Series, reasons: pd.Series, where: str, shown: int = 10) -> str:
    lines = [f"  {name}: {reason}" for name, reason in zip(names[:shown], reasons[:shown], strict=True)]
    more = [f"  ... and {len(names) - shown} more"] if len(names) > shown else []
    return "\n".join([f"{where}: {len(names)} unusable file(s):", *lines, *more,
                      "remove them or set data.bad_files=skip (leaves them out and logs each)"])
