"""An image folder (one subfolder per class, split or not) as a LightningDataModule."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from lokal import LokalError
from lokal.data import SplitDataModule, balanced_sampler, stratified_split

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LAYOUT_HELP = """expected one of these layouts:
  DIR/train/CLASS/*.jpeg   (+ optional DIR/val/CLASS/, DIR/test/CLASS/; missing splits are carved from train)
  DIR/CLASS/*.jpeg         (split stratified by seed)
e.g. the chest X-ray set: DIR/train/NORMAL/x.jpeg, DIR/train/PNEUMONIA/y.jpeg, DIR/test/..."""


class ImageFolderDataModule(SplitDataModule):
    """Images in class folders; greyscale and RGB both load (converted to RGB for the model)."""

    modality = "image"

    def __init__(
        self,
        root: str | None,
        augment: dict | None = None,
        balance: bool = False,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        seed: int = 42,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.root = _check_root(root)
        self.augment, self.balance = dict(augment or {}), balance
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.data_config: dict | None = None
        self.files = self._find_files()  # split -> list of (path, class name)
        self.class_names = sorted({c for files in self.files.values() for _, c in files})
        self.splits = self._split()
        self.stats = {f"{name}_rows": len(items) for name, items in self.splits.items()}

    def use_model(self, model) -> None:
        self.data_config = model.data_config

    def labels(self, split: str) -> list[int]:
        return [y for _, y in self.splits[split]]

    def _find_files(self) -> dict[str, list[tuple[Path, str]]]:
        if (self.root / "train").is_dir():
            splits = [s for s in ("train", "val", "test") if (self.root / s).is_dir()]
            return {split: _scan(self.root / split) for split in splits}
        return {"all": _scan(self.root)}

    def _split(self) -> dict[str, list[tuple[Path, int]]]:
        """Use the folder's own splits; carve the missing ones from train (stratified by seed)."""
        labelled = {s: [(p, self.class_names.index(c)) for p, c in f] for s, f in self.files.items()}
        pool = labelled.pop("train", None) or labelled.pop("all")
        val_fraction = 0.0 if "val" in labelled else self.val_fraction
        test_fraction = 0.0 if "test" in labelled else self.test_fraction
        names = [self.class_names[y] for _, y in pool]
        index = stratified_split(names, val_fraction, test_fraction, self.seed, str(self.root))
        carved = {name: [pool[i] for i in rows] for name, rows in index.items()}
        return carved | labelled

    def _transform(self, train: bool):
        import timm

        extra = self.augment if train else {}
        return timm.data.create_transform(**self.data_config, is_training=train, **extra)

    def setup(self, stage: str | None = None) -> None:
        if self.data_config is None:
            raise RuntimeError("call use_model(model) before setup: input size and normalisation come from the model")
        self.datasets = {
            name: ImageDataset(items, self._transform(train=name == "train")) for name, items in self.splits.items()
        }

    def _loader(self, split: str, train: bool) -> DataLoader:
        sampler = balanced_sampler(self.labels(split), self.seed) if train and self.balance else None
        return DataLoader(self.datasets[split], batch_size=self.batch_size, sampler=sampler,
                          shuffle=train and sampler is None,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)


class ImageDataset(Dataset):
    def __init__(self, items: list[tuple[Path, int]], transform) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        from PIL import Image, UnidentifiedImageError

        path, label = self.items[i]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")  # greyscale X-rays and RGBA PNGs alike
        except (OSError, UnidentifiedImageError) as err:
            raise LokalError(f"{path}: not a readable image ({err}); remove or replace the file") from err
        return {"image": self.transform(image), "label": label}


def _check_root(root: str | None) -> Path:
    if not root:
        raise LokalError(f"data.root is not set: pass data.root=DIR, {LAYOUT_HELP}")
    path = Path(root)
    if not path.is_dir():
        raise LokalError(f"data.root={root} is not a folder; {LAYOUT_HELP}")
    return path


def _scan(folder: Path) -> list[tuple[Path, str]]:
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [(f, d.name) for d in class_dirs for f in sorted(d.rglob("*")) if f.suffix.lower() in EXTENSIONS]
    if len(class_dirs) < 2 or not files:
        found = ", ".join(d.name for d in class_dirs) or "no subfolders"
        raise LokalError(f"{folder}: found {found} with {len(files)} images; {LAYOUT_HELP}")
    empty = [d.name for d in class_dirs if not any(c == d.name for _, c in files)]
    if empty:
        raise LokalError(f"{folder}: class folder(s) {empty} hold no images ({', '.join(EXTENSIONS)}); {LAYOUT_HELP}")
    return files
