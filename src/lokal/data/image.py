"""An image folder (one subfolder per class, split or not) as a LightningDataModule."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from lokal.data.augment import BatchMixup, MixupConfig, from_config
from lokal.data.base import SplitDataModule, balanced_sampler, make_records, record_extras
from lokal.data.cache import ImageCache, cache_folder, digest, file_identity
from lokal.data.checks import IMAGE_EXTENSIONS, check_file, load_rgb, modality_of
from lokal.data.resumable import resumable_loader
from lokal.data.splits import known_classes, split_rows
from lokal.errors import LokalError

log = logging.getLogger(__name__)

EXTENSIONS = IMAGE_EXTENSIONS
BAD_FILES = ("fail", "skip", "keep")
LAYOUT_HELP = """expected one of these layouts:
  DIR/train/CLASS/*.jpeg   (+ optional DIR/val/CLASS/, DIR/test/CLASS/; missing splits are carved from train)
  DIR/CLASS/*.jpeg         (split stratified by seed)
e.g. the chest X-ray set: DIR/train/NORMAL/x.jpeg, DIR/train/PNEUMONIA/y.jpeg, DIR/test/..."""


class LabelledFilesDataModule(SplitDataModule):
    """Labelled image (or audio) files, wherever they are listed. A subclass lists them as a
    frame (`_id`, `path`, `_label`, optional `_given` split, `_group`, metadata columns) and
    calls `_prepare`; the file checks, classes, splits, records(), transforms and loaders
    are shared, so a folder of images and a CSV of image paths train the same way."""

    modality = "image"
    audio = None  # a lokal.data.audio_files.AudioFiles when the files are audio: Whisper features, not timm's
    group_column: str | None = None
    metadata_columns: tuple[str, ...] | list[str] = ()

    def __init__(
        self,
        augment: dict | None,
        balance: bool,
        classes: list[str] | None,
        bad_files: str,
        folds: int,
        fold: int,
        val_fraction: float,
        test_fraction: float,
        seed: int,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        mixup: dict | None = None,
        cache: bool = True,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if bad_files not in BAD_FILES:
            raise LokalError(f"data.bad_files={bad_files!r}: use fail (stop and list them), skip (leave them out "
                             "and log each) or keep (no check)")
        self.augment, self.balance = dict(augment or {}), balance
        self.given_classes, self.bad_files = classes, bad_files
        self.folds, self.fold = folds, fold
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.mixup_config = from_config(MixupConfig, mixup, "mixup")
        self.mixup: BatchMixup | None = None  # built in setup, once the classes are known
        self.cache_dir = cache_folder(cache, cache_dir)
        self.data_config: dict | None = None
        self.stats: dict[str, int] = {}
        self.image_modes: dict[str, int] = {}

    def _prepare(self, frame: pd.DataFrame, where: str) -> None:
        """Check the files, fix the classes, split: everything but the listing."""
        frame = self._check_files(frame, where).reset_index(drop=True)
        self.class_names = known_classes(frame["_label"], self.given_classes, frame["_id"], where)
        index = split_rows(frame["_label"], self.val_fraction, self.test_fraction, self.seed, where,
                           groups=frame.get("_group"), given=frame.get("_given"), folds=self.folds, fold=self.fold)
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
        """Decode every file once, up front: a truncated JPEG found in epoch 3 wastes the
        first two. fail lists the bad files and stops; skip leaves them out, one log line
        each; keep checks nothing (`lokal audit` checks them itself)."""
        if self.bad_files == "keep":
            return frame
        memo = self.cache_dir / "file_checks" / f"{digest(where)}.json" if self.cache_dir else None
        found = inspect_files(frame["path"].tolist(), memo)
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
        if self.audio is not None:  # the window and log-mel come from the model's feature extractor
            self.audio.use_model(model)
            self._use_parts(self.audio.fit_lengths(self.files_by_split))
            self.stats |= self.audio.stats
            return
        self.data_config = model.data_config

    def labels(self, split: str) -> list[int]:
        return [y for _, y in self.splits[split]]

    def records(self) -> pd.DataFrame:
        """One row per kept file (id = path relative to the data root, or as the table wrote it)."""
        return make_records(self.parts, {"id": "_id", "label": "_label", "path": "path"}
                            | record_extras(self.group_column, list(self.metadata_columns)))

    def _transform(self, train: bool):
        import timm

        extra = self.augment if train else {}
        return timm.data.create_transform(**self.data_config, is_training=train, **extra)

    def setup(self, stage: str | None = None) -> None:
        if self.audio is not None:
            self.datasets = self.audio.datasets(self.parts)
            return
        if self.data_config is None:
            raise RuntimeError("call use_model(model) before setup: input size and normalisation come from the model")
        from lokal.data.cache import eval_resize

        cache = ImageCache(self.cache_dir, eval_resize(self.data_config)) if self.cache_dir else None
        self.datasets = {name: ImageDataset(items, self._transform(train=name == "train"), cache)
                         for name, items in self.splits.items()}
        self.mixup = BatchMixup(self.mixup_config, len(self.class_names)) if self.mixup_config else None

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """mixup/CutMix here, not in the loader: it mixes whole batches, on the GPU once the
        batch is there; the LightningModule just sees soft labels. `trainer.training` is False
        in sanity checks, validation, test and predict, so those batches stay untouched."""
        if self.mixup is not None and self.trainer is not None and self.trainer.training:
            return self.mixup(batch)
        return batch

    def _loader(self, split: str, train: bool) -> DataLoader:
        from torch.utils.data import RandomSampler

        dataset = self.datasets[split]
        settings = {"batch_size": self.batch_size, "num_workers": self.num_workers, "pin_memory": self.pin_memory,
                    "persistent_workers": self.num_workers > 0}
        if not train:
            return DataLoader(dataset, **settings)
        if self.balance:
            sampler = balanced_sampler(self.labels(split), self.seed)
        else:
            sampler = RandomSampler(dataset, generator=torch.Generator())
        return resumable_loader(dataset, sampler, self.seed, **settings)


class ImageFolderDataModule(LabelledFilesDataModule):
    """Images in class folders, split (DIR/train/CLASS/) or not (DIR/CLASS/). Any mode loads
    (greyscale, RGBA, palette, 16-bit X-rays) as 8-bit RGB. With data.folds >= 2 the
    train/val/test folders of a split layout are pooled into one set and k-fold splits that."""

    extensions, noun, layout_help = EXTENSIONS, "images", LAYOUT_HELP  # an audio folder scans for its own

    def __init__(
        self,
        root: str | None,
        augment: dict | None = None,
        balance: bool = False,
        classes: list[str] | None = None,
        bad_files: str = "fail",
        folds: int = 0,
        fold: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        seed: int = 42,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        mixup: dict | None = None,
        cache: bool = True,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(augment, balance, classes, bad_files, folds, fold, val_fraction, test_fraction, seed,
                         batch_size, num_workers, pin_memory, mixup=mixup, cache=cache, cache_dir=cache_dir)
        self.root = _check_root(root, self.layout_help)
        self.files = self._find_files()  # split -> list of (path, class name)
        self._prepare(self._listing(), str(self.root))

    def _find_files(self) -> dict[str, list[tuple[Path, str]]]:
        if (self.root / "train").is_dir():
            splits = [s for s in ("train", "val", "test") if (self.root / s).is_dir()]
            files = {split: self._scan(self.root / split) for split in splits}
            if not self.folds:
                _check_split_classes(self.root, files, self.noun)
            return files
        return {"all": self._scan(self.root)}

    def _scan(self, folder: Path) -> list[tuple[Path, str]]:
        return _scan(folder, self.extensions, self.noun, self.layout_help)

    def _listing(self) -> pd.DataFrame:
        """One row per file; the folder's own splits become `_given` unless k-fold pools them."""
        rows = [(f.relative_to(self.root).as_posix(), str(f.absolute()), c, split)
                for split, files in self.files.items() for f, c in files]
        frame = pd.DataFrame(rows, columns=["_id", "path", "_label", "_given"])
        if self.folds and "train" in self.files:
            log.info("data.folds=%d: pooling %s of %s for k-fold", self.folds, "/".join(self.files), self.root)
        return frame.drop(columns="_given") if self.folds or "all" in self.files else frame


class ImageDataset(Dataset):
    """(path, label) items as transformed images; decoded via the cache when there is one."""

    def __init__(self, items: list[tuple[Path, int]], transform, cache: ImageCache | None = None) -> None:
        self.items, self.transform, self.cache = items, transform, cache

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        from PIL import UnidentifiedImageError

        path, label = self.items[i]
        try:
            image = self.cache.load(path) if self.cache else load_rgb(path)  # any mode, as 8-bit RGB
        except (OSError, UnidentifiedImageError) as err:
            raise LokalError(f"{path}: not a readable image ({err}); remove or replace the file") from err
        return {"image": self.transform(image), "label": label, "index": i}  # index: the item's place in its split


def _check_root(root: str | None, layout: str = LAYOUT_HELP) -> Path:
    if not root:
        raise LokalError(f"data.root is not set: pass data.root=DIR, {layout}")
    path = Path(root)
    if not path.is_dir():
        raise LokalError(f"data.root={root} is not a folder; {layout}")
    return path


def _check_split_classes(root: Path, files: dict[str, list[tuple[Path, str]]], noun: str = "images") -> None:
    """A class folder in val/ or test/ but not in train/ (a typo, "Normal" vs "NORMAL") would
    be scored but never learned."""
    trained = {c for _, c in files["train"]}
    for split in ("val", "test"):
        for name in sorted({c for _, c in files.get(split, [])} - trained):
            raise LokalError(f"{root / split / name}: class {name!r} has no training {noun} ({root / 'train' / name} "
                             f"is missing); add {root / 'train' / name} or rename/remove {root / split / name}")


def inspect_files(paths: list[str], memo: Path | None = None) -> list[tuple[str | None, str | None]]:
    """(reason it is unusable or None, image mode or None) per file, decoded in threads
    (PIL decodes outside the GIL). Decoding 5,856 X-rays takes ~1.5 min on 2 cores, so the
    answers for unchanged files (same path, size, mtime) are kept in `memo`, a JSON file:
    restarts and k-fold runs decode each file once."""
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


def _scan(folder: Path, extensions: tuple[str, ...] = EXTENSIONS, noun: str = "images",
          layout: str = LAYOUT_HELP) -> list[tuple[Path, str]]:
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [(f, d.name) for d in class_dirs for f in sorted(d.rglob("*")) if f.suffix.lower() in extensions]
    if len(class_dirs) < 2 or not files:
        found = ", ".join(d.name for d in class_dirs) or "no subfolders"
        raise LokalError(f"{folder}: found {found} with {len(files)} {noun}; {layout}")
    empty = [d.name for d in class_dirs if not any(c == d.name for _, c in files)]
    if empty:
        raise LokalError(f"{folder}: class folder(s) {empty} hold no {noun} ({', '.join(extensions)}); {layout}")
    return files
