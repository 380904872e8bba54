"""Images: an image folder (one subfolder per class, split or not) as a LightningDataModule, and
`ImageFiles`, what images bring to any labelled files (a folder, a table): timm's transforms
from the model's data config, the decoded-image cache, mixup/CutMix on training batches."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import Dataset

from lokal.data.augment import BatchMixup, MixupConfig, from_config
from lokal.data.cache import ImageCache
from lokal.data.checks import IMAGE_EXTENSIONS, load_rgb
from lokal.data.labelled_files import FolderDataModule
from lokal.errors import LokalError

LAYOUT_HELP = """expected one of these layouts:
  DIR/train/CLASS/*.jpeg   (+ optional DIR/val/CLASS/, DIR/test/CLASS/; missing splits are carved from train)
  DIR/CLASS/*.jpeg         (split stratified by seed)
e.g. the chest X-ray set: DIR/train/NORMAL/x.jpeg, DIR/train/PNEUMONIA/y.jpeg, DIR/test/..."""


class ImageFiles:
    """What images need from the model: its input size and normalisation (timm's data config).
    Training images get `augment` (timm.data.create_transform options), training batches
    mixup/CutMix (`mixup`: MixupConfig options); None for none."""

    modality = "image"

    def __init__(self, augment: dict | None = None, mixup: dict | None = None) -> None:
        self.augment = dict(augment or {})
        self.mixup_config = from_config(MixupConfig, mixup, "mixup")
        self.mixup: BatchMixup | None = None  # built with the datasets, once the classes are known
        self.data_config: dict | None = None
        self.stats: dict[str, int] = {}

    def use_model(self, model) -> None:
        self.data_config = model.data_config

    def fit(self, parts: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        return parts  # one row per image

    def transform(self, train: bool):
        import timm

        extra = self.augment if train else {}
        return timm.data.create_transform(**self.data_config, is_training=train, **extra)

    def datasets(self, parts: dict[str, pd.DataFrame], classes: int, cache_dir: Path | None) -> dict[str, Dataset]:
        """One dataset per split, decoded through the cache when there is one; only training augments."""
        from lokal.data.cache import eval_resize

        if self.data_config is None:
            raise RuntimeError("call use_model(model) before setup: input size and normalisation come from the model")
        cache = ImageCache(cache_dir, eval_resize(self.data_config)) if cache_dir else None
        self.mixup = BatchMixup(self.mixup_config, classes) if self.mixup_config else None
        return {name: ImageDataset(list(zip(part["path"].map(Path), part["_y"].tolist(), strict=True)),
                                   self.transform(train=name == "train"), cache)
                for name, part in parts.items()}

    def training_batch(self, batch: dict) -> dict:
        """mixup/CutMix here, not in the loader: it mixes whole batches, on the GPU once the batch
        is there; the LightningModule just sees soft labels."""
        return self.mixup(batch) if self.mixup is not None else batch


class ImageFolderDataModule(FolderDataModule):
    """Images in class folders, split (DIR/train/CLASS/) or not (DIR/CLASS/). Any mode loads
    (greyscale, RGBA, palette, 16-bit X-rays) as 8-bit RGB. With data.folds >= 2 the
    train/val/test folders of a split layout are pooled into one set and k-fold splits that."""

    extensions, noun, layout_help = IMAGE_EXTENSIONS, "images", LAYOUT_HELP

    def __init__(self, root: str | None, augment: dict | None = None, mixup: dict | None = None,
                 bad_files: str = "fail", **options) -> None:
        """`options`: the shared settings (`settings`: split, loader, cache and labels keys)."""
        super().__init__(root, ImageFiles(augment, mixup), bad_files, **options)


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
