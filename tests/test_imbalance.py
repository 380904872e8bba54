"""Imbalance handling end to end (the pieces are unit-tested in test_losses.py): on labels
90 / 9 / 1 %, `data.balance=true` makes the training loaders of both data modules draw every
class about equally often, with the 1 % class in every batch of 64; the configured loss is
built with the training split's class counts."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lokal.data.base import balanced_sampler
from lokal.training.losses import class_weights
from tests.conftest import compose

SHARES = {"common": 0.90, "rare": 0.09, "minority": 0.01}
BATCH = 64
P_MIN = 1e-3  # a chi-square test at this level fails a truly balanced draw once in 1,000 seeds


def imbalanced_labels(n: int) -> list[int]:
    return np.repeat(np.arange(len(SHARES)), [round(n * s) for s in SHARES.values()]).tolist()


def uniform_p_value(drawn: list[int]) -> float:
    """Chi-square test of the drawn class counts against 'every class equally often'."""
    from scipy.stats import chisquare

    counts = np.bincount(drawn, minlength=len(SHARES))
    return chisquare(counts).pvalue


@pytest.mark.parametrize("seed", range(5))
def test_sampler_draws_every_class_equally_often_and_the_minority_in_every_batch(seed):
    labels = imbalanced_labels(10_000)
    drawn = [labels[i] for i in balanced_sampler(labels, seed=seed)]  # one epoch: len(labels) draws
    assert len(drawn) == len(labels)
    assert uniform_p_value(drawn) > P_MIN, Counter(drawn)
    batches = [drawn[i:i + BATCH] for i in range(0, len(drawn) - BATCH + 1, BATCH)]
    assert all(2 in batch for batch in batches)  # P(a batch of 64 misses a 1/3 class) = (2/3)^64 ~ 5e-12
    assert uniform_p_value(labels) < 1e-100  # the test has power: the raw labels fail it


def text_module(tmp_path, balance: bool):
    from transformers import AutoTokenizer

    from lokal.assets.shipped import minilm
    from lokal.data.text import TextDataModule

    labels = imbalanced_labels(1000)
    names = list(SHARES)
    path = tmp_path / "texts.csv"
    pd.DataFrame({"text": [f"review number {i}" for i in range(len(labels))],
                  "label": [names[y] for y in labels]}).to_csv(path, index=False)
    datamodule = TextDataModule(str(path), balance=balance, batch_size=BATCH)
    datamodule.use_model(SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(str(minilm())), max_length=8))
    return datamodule


def image_module(tmp_path, balance: bool):
    from lokal.data.image import ImageFolderDataModule

    labels = imbalanced_labels(1000)  # 900 / 90 / 10
    for i, y in enumerate(labels):
        folder = tmp_path / "images" / list(SHARES)[y]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 40 * y, np.uint8), mode="L").save(folder / f"{i}.png")
    datamodule = ImageFolderDataModule(str(tmp_path / "images"), augment={}, balance=balance, batch_size=BATCH)
    config = {"input_size": (3, 8, 8), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
              "crop_pct": 1.0}
    datamodule.use_model(SimpleNamespace(data_config=config))
    return datamodule


def training_labels(datamodule) -> list[list[int]]:
    datamodule.setup("fit")
    return [batch["label"].tolist() for batch in datamodule.train_dataloader()]


@pytest.mark.parametrize("make", [text_module, image_module], ids=["text", "image"])
def test_data_balance_true_balances_every_training_batch(make, tmp_path):
    batches = training_labels(make(tmp_path, balance=True))
    drawn = [y for batch in batches for y in batch]
    assert uniform_p_value(drawn) > P_MIN, Counter(drawn)
    assert all(2 in batch for batch in batches if len(batch) == BATCH), batches


@pytest.mark.parametrize("make", [text_module, image_module], ids=["text", "image"])
def test_without_balance_training_keeps_the_data_s_imbalance(make, tmp_path):
    drawn = [y for batch in training_labels(make(tmp_path, balance=False)) for y in batch]
    assert uniform_p_value(drawn) < 1e-6
    assert Counter(drawn)[0] > 0.8 * len(drawn)


@pytest.fixture
def uneven_splits(tmp_path):
    """Given splits whose class mix differs: train 40 / 10, val and test 5 / 5 each."""
    sizes = {"train": (40, 10), "val": (5, 5), "test": (5, 5)}
    for split, counts in sizes.items():
        for name, n in zip(("cat", "dog"), counts, strict=True):
            folder = tmp_path / "pets" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8), 9 * i, np.uint8), mode="L").save(folder / f"{i}.png")
    return tmp_path / "pets"


@pytest.mark.parametrize("loss", ["loss=cross_entropy", "loss=focal"])
def test_class_weighted_losses_are_built_from_the_training_split_counts(loss, uneven_splits, run_dir):
    from hydra.utils import instantiate

    from lokal.tasks.classification import class_counts

    cfg = compose(["data=image_folder", f"data.root={uneven_splits}", loss, "loss.class_weights_mode=balanced"],
                  run_dir)
    built = instantiate(cfg.loss)(class_counts=class_counts(instantiate(cfg.data)))
    assert torch.allclose(built.weight, class_weights([40, 10], "balanced"))  # 0.625, 2.5
    assert not torch.allclose(built.weight, class_weights([50, 20], "balanced"))  # not all splits' counts
