"""What every lokal data module shares: its settings (lokal.data.settings), the Lightning
loader hooks, the balanced sampler and the records() table `lokal audit` reads."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import pandas as pd
from torch.utils.data import DataLoader

from lokal.data.settings import DataSettings


def make_records(parts: dict[str, pd.DataFrame], columns: dict[str, str]) -> pd.DataFrame:
    """Contract 1 (one row per kept example, for `lokal audit`): `columns` maps each record
    column (id, label, text or path, group, metadata) to the module's own column."""
    frames = []
    for name, part in parts.items():
        record = pd.DataFrame({out: part[col].to_numpy() for out, col in columns.items()})
        record.insert(1, "split", name)  # columns: id, split, label, ...
        frames.append(record)
    return pd.concat(frames, ignore_index=True)


def record_extras(group_column: str | None, metadata_columns: list[str]) -> dict[str, str]:
    """records() columns beyond id/split/label/content: group (if set) and the metadata."""
    return ({"group": "_group"} if group_column else {}) | {column: column for column in metadata_columns}


def balanced_sampler(labels: Sequence[int], seed: int):
    """Draw training examples with probability 1 / (size of their class): every class
    appears about equally often per epoch (with replacement), whatever the imbalance.
    (In training, lokal.data.resumable re-seeds its generator every epoch.)"""
    import torch
    from torch.utils.data import WeightedRandomSampler

    labels = torch.as_tensor(labels)
    weights = 1.0 / torch.bincount(labels).float()[labels]
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True,
                                 generator=torch.Generator().manual_seed(seed))


class SplitDataModule(L.LightningDataModule):
    """Shared settings and loader hooks. A subclass states the settings groups it takes and its
    defaults (`settings`), passes the flat keys it does not name itself on to `__init__`
    (`**options`: batch_size=16, folds=5, ...), and says how to load one split with
    `_loader(split, train)`."""

    settings = DataSettings()  # the class's groups and defaults; an instance's, with its options

    def __init__(self, **options) -> None:
        super().__init__()
        self.settings = self.settings.take(options, type(self))

    def _loader(self, split: str, train: bool) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
