"""Caches per dataset version: a hit gives exactly what decoding/tokenising gives, a changed
file or setting misses, a corrupt or half-written cache file is rebuilt, workers share it."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from lokal.data.cache import ImageCache, encode_texts, eval_resize, file_identity, tokenize
from lokal.data.checks import load_rgb
from lokal.data.image import ImageDataset, ImageFolderDataModule
from tests.conftest import make_image_folder

DATA_CONFIG = {"input_size": (3, 64, 64), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3,
               "crop_pct": 0.875, "crop_mode": "center"}
TEXTS = ["sinyal lemot banget dari pagi", "pelayanan cepat dan ramah", "mantul", "kecewa berat sama paketnya"]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from lokal.assets.shipped import minilm

    return AutoTokenizer.from_pretrained(str(minilm()))


def token_files(folder):
    return sorted((folder / "tokens").glob("*.npz"))


# -- texts ---------------------------------------------------------------------------------------
def test_token_cache_hit_equals_tokenising(tokenizer, tmp_path):
    first = encode_texts(tokenizer, TEXTS, 16, tmp_path, source="a.csv|1|2")
    assert first == tokenize(tokenizer, TEXTS, 16) and len(token_files(tmp_path)) == 1
    assert encode_texts(tokenizer, TEXTS, 16, tmp_path, source="a.csv|1|2") == first
    assert len(token_files(tmp_path)) == 1  # a hit writes nothing


@pytest.mark.parametrize("change", ["texts", "max_length", "source"])
def test_token_cache_misses_when_anything_it_depends_on_changes(tokenizer, tmp_path, change):
    encode_texts(tokenizer, TEXTS, 16, tmp_path, source="a.csv|1|2")
    texts = TEXTS[:-1] + ["kecewa berat"] if change == "texts" else TEXTS
    max_length = 4 if change == "max_length" else 16
    source = "a.csv|1|3" if change == "source" else "a.csv|1|2"
    rows = encode_texts(tokenizer, texts, max_length, tmp_path, source=source)
    assert rows == tokenize(tokenizer, texts, max_length) and len(token_files(tmp_path)) == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_corrupt_token_cache_is_rebuilt(tokenizer, tmp_path, damage):
    encode_texts(tokenizer, TEXTS, 16, tmp_path)
    (file,) = token_files(tmp_path)
    data = file.read_bytes()
    file.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a cache" * 10, "empty": b""}[damage])
    assert encode_texts(tokenizer, TEXTS, 16, tmp_path) == tokenize(tokenizer, TEXTS, 16)
    assert file.read_bytes() == data  # rewritten whole


def test_the_text_module_reads_its_cache(tmp_path):
    import pandas as pd

    from lokal.data.text import TextDataModule

    path = tmp_path / "t.csv"
    pd.DataFrame({"text": [f"ulasan nomor {i}" for i in range(30)], "label": [i % 2 for i in range(30)]}).to_csv(path)
    tokenizer = CountingTokenizer()
    datasets = []
    for _ in range(2):
        data = TextDataModule(str(path), cache_dir=str(tmp_path / "cache"))
        data.use_model(SimpleNamespace(tokenizer=tokenizer, max_length=16))
        data.setup()
        datasets.append(data.datasets)
    assert datasets[0] == datasets[1] and tokenizer.calls == 3  # three splits tokenised once, then read
    os.utime(path, ns=(1, 1))  # the file "changed": everything is tokenised again
    data = TextDataModule(str(path), cache_dir=str(tmp_path / "cache"))
    data.use_model(SimpleNamespace(tokenizer=tokenizer, max_length=16))
    data.setup()
    assert tokenizer.calls == 6


class CountingTokenizer:
    """MiniLM's tokenizer, counting the calls that tokenise."""

    def __init__(self) -> None:
        from transformers import AutoTokenizer

        from lokal.assets.shipped import minilm

        self.inner, self.calls = AutoTokenizer.from_pretrained(str(minilm())), 0
        self.name_or_path = self.inner.name_or_path

    def __len__(self) -> int:
        return len(self.inner)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    def pad(self, *args, **kwargs):
        return self.inner.pad(*args, **kwargs)


# -- images ----------------------------------------------------------------------------------------
def write_photo(path, size=(200, 150), seed=0) -> None:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.BICUBIC).save(path, quality=90)


def eval_transform():
    import timm

    return timm.data.create_transform(**DATA_CONFIG, is_training=False)


def test_cached_images_are_bit_identical_to_decoding_for_evaluation(tmp_path):
    big, small, grey = tmp_path / "big.jpg", tmp_path / "small.png", tmp_path / "grey.png"
    write_photo(big, (200, 150))  # larger than the 73-pixel eval resize: stored shrunk
    write_photo(small, (40, 30), seed=1)  # smaller: stored as decoded, never enlarged
    Image.open(big).convert("I;16").save(grey)  # a 16-bit greyscale scan
    cache, transform = ImageCache(tmp_path / "cache", eval_resize(DATA_CONFIG)), eval_transform()
    assert min(cache.load(big).size) == 73 and cache.load(small).size == (40, 30)
    assert cache.load(grey).mode == "RGB" and np.load(cache.file_for(grey)).ndim == 2  # stored once for R=G=B
    for path in (big, small, grey):
        assert torch.equal(transform(cache.load(path)), transform(load_rgb(path)))


def test_a_changed_image_misses_the_cache(tmp_path):
    path = tmp_path / "x.jpg"
    write_photo(path, seed=0)
    cache = ImageCache(tmp_path / "cache", eval_resize(DATA_CONFIG))
    before = np.asarray(cache.load(path))
    write_photo(path, seed=1)
    os.utime(path, ns=(10**9, 10**9))  # same size is possible; the mtime always differs
    assert not np.array_equal(np.asarray(cache.load(path)), before)
    assert np.array_equal(np.asarray(cache.load(path)), np.asarray(cache.decode(path)))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "wrong shape"])
def test_a_corrupt_image_cache_file_is_rebuilt(tmp_path, damage):
    path = tmp_path / "x.jpg"
    write_photo(path)
    cache = ImageCache(tmp_path / "cache", eval_resize(DATA_CONFIG))
    expected = np.asarray(cache.load(path))
    file = cache.file_for(path)
    data = file.read_bytes()
    if damage == "wrong shape":
        np.save(file, np.zeros((4, 4, 2), np.uint8))
    else:
        file.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x93NUMPY garbage", "empty": b""}[damage])
    assert np.array_equal(np.asarray(cache.load(path)), expected)
    assert file.read_bytes() == data


def test_no_half_written_file_is_left_when_writing_fails(tmp_path, monkeypatch):
    from lokal.data import cache as cache_module

    path = tmp_path / "x.jpg"
    write_photo(path)
    cache = ImageCache(tmp_path / "cache", eval_resize(DATA_CONFIG))

    def killed(target, pixels):
        target.write_bytes(b"\x93NUMPY half")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "write_pixels", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.load(path)
    assert not any(cache.folder.iterdir())


def test_image_loaders_with_workers_use_the_cache(tmp_path):
    root = make_image_folder(tmp_path / "x", per_class=6)
    model = SimpleNamespace(data_config=DATA_CONFIG)
    batches = {}
    for cache in (False, True, True):  # no cache, cache built by the workers, cache read
        data = ImageFolderDataModule(str(root), cache=cache, cache_dir=str(tmp_path / "cache"), num_workers=2,
                                     batch_size=4)
        data.use_model(model)
        data.setup()
        batches.setdefault(cache, []).append([b["image"] for b in data.val_dataloader()])
    assert len(list((tmp_path / "cache" / "images").glob("*.npy"))) == data.stats["val_rows"] == 12
    for cached in batches[True]:
        assert all(map(torch.equal, cached, batches[False][0]))


def test_the_dataset_names_an_unreadable_image(tmp_path):
    from lokal.errors import LokalError

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    dataset = ImageDataset([(bad, 0)], eval_transform(), ImageCache(tmp_path / "cache", None))
    with pytest.raises(LokalError, match="bad.jpg"):
        dataset[0]
    assert file_identity(bad).endswith(f"|{bad.stat().st_size}|{bad.stat().st_mtime_ns}")
