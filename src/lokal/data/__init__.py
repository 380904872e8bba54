"""LightningDataModules for local datasets, and the split logic they share."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from lokal import LokalError


def stratified_split(
    labels: Sequence, val_fraction: float, test_fraction: float, seed: int, where: str
) -> dict[str, np.ndarray]:
    """Indices for train/val/test with the class mix of `labels` (class names) kept in every split."""
    from sklearn.model_selection import train_test_split

    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= frac < 1:
            raise LokalError(f"data.{name}={frac} must be in [0, 1)")
    if val_fraction + test_fraction >= 1:
        total = val_fraction + test_fraction
        raise LokalError(f"data.val_fraction + data.test_fraction = {total} leaves no training data")
    labels = np.asarray(labels)
    _check_class_sizes(labels, val_fraction, test_fraction, where)
    index = np.arange(len(labels))
    held_out = val_fraction + test_fraction
    if held_out == 0:
        return {"train": index, "val": index[:0], "test": index[:0]}
    try:
        train, rest = train_test_split(index, test_size=held_out, stratify=labels, random_state=seed)
        if val_fraction == 0 or test_fraction == 0:
            key = "test" if val_fraction == 0 else "val"
            return {"train": train, "val": rest[:0], "test": rest[:0]} | {key: rest}
        val, test = train_test_split(
            rest, test_size=test_fraction / held_out, stratify=labels[rest], random_state=seed
        )
    except ValueError as err:  # sklearn: too few rows for a stratified split of this size
        raise LokalError(f"{where}: cannot split {len(labels)} rows stratified by label ({err}); "
                         "add data or lower data.val_fraction / data.test_fraction") from err
    return {"train": train, "val": val, "test": test}


def _check_class_sizes(labels: np.ndarray, val_fraction: float, test_fraction: float, where: str) -> None:
    need = 1 + (val_fraction > 0) + (test_fraction > 0)
    small = {label: n for label, n in Counter(labels.tolist()).items() if n < need + 1}
    if small:
        raise LokalError(
            f"{where}: class(es) {small} have too few examples to split into train/val/test; "
            f"add examples (at least {need + 1} per class) or remove that class"
        )


def balanced_sampler(labels: Sequence[int], seed: int):
    """Draw training examples with probability 1 / (size of their class): every class
    appears about equally often per epoch (with replacement), whatever the imbalance."""
    import torch
    from torch.utils.data import WeightedRandomSampler

    labels = torch.as_tensor(labels)
    weights = 1.0 / torch.bincount(labels).float()[labels]
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True,
                                 generator=torch.Generator().manual_seed(seed))


class SplitDataModule(L.LightningDataModule):
    """Shared loader hooks: a subclass says how to load one split with `_loader(split, train)`."""

    def _loader(self, split: str, train: bool) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
