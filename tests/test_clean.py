"""`lokal clean`: the original is never touched, the copy re-audits clean, and the manifest
names every row that was removed or redacted, with its reason."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from lokal.audit import analyse, run_audit
from lokal.audit.clean import plan, write_clean
from lokal.audit.source import from_path
from lokal.data import tables
from lokal.errors import LokalError
from tests.test_audit import NIK, planted_images, planted_texts, run_cli, topic_texts


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root with its sha256: equal digests, bit-identical trees."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_table(table: pd.DataFrame, path: Path) -> Path:
    """lokal's own writer for the table formats; SQLite (which lokal only reads) by hand."""
    if path.suffix in (".db", ".sqlite"):
        with sqlite3.connect(path) as conn:
            table.to_sql("reviews", conn, index=False)
        return path
    return tables.write_table(table, path)


def clean(source_path: Path, out: Path, *extra: str) -> dict:
    run_cli("clean", str(source_path), "--out", str(out), *extra)
    return json.loads((out / "manifest.json").read_text())


def test_clean_text_table_leaves_original_and_copy_audits_clean(tmp_path):
    table, plants = planted_texts()
    (tmp_path / "data").mkdir()
    source = write_table(table, tmp_path / "data" / "reviews.csv")
    before = tree_digest(tmp_path / "data")
    manifest = clean(source, tmp_path / "clean")
    assert tree_digest(tmp_path / "data") == before  # bit-identical
    copy = pd.read_csv(tmp_path / "clean" / "reviews.csv")
    assert list(copy.columns) == ["text", "label", "split"]
    again = run_audit(copy.assign(id=[f"row {i}" for i in range(len(copy))]), "text", label_errors=False)["summary"]
    assert again["exact_duplicate_groups"] == again["near_duplicate_groups"] == 0
    assert again["leakage_items"] == again["conflicting_label_items"] == 0
    assert again["pii_nik"] == again["pii_phone"] == again["pii_email"] == 0
    assert "[NIK]" in " ".join(copy["text"]) and NIK not in (tmp_path / "clean" / "reviews.csv").read_text()
    # the manifest accounts for every row that is gone, and for every redaction
    removed = {e["id"] for e in manifest["entries"] if e["action"] == "removed"}
    assert len(removed) == len(table) - len(copy) == manifest["removed"]
    assert {e["id"] for e in manifest["entries"] if e["action"] == "redacted"} == {f"row {r}" for r, _ in plants["pii"]}
    assert (tmp_path / "clean" / "manifest.csv").is_file()


def test_leaking_duplicate_keeps_the_test_copy_and_conflicts_drop_all(tmp_path):
    table, plants = planted_texts()
    a = analyse(table.assign(id=[f"row {i}" for i in range(len(table))]), "text", label_errors=False)
    reasons = plan(a).set_index("id")["reason"]
    train_row, test_row = plants["leak"][0]
    assert table.split[test_row] == "test" and f"row {test_row}" not in reasons
    assert reasons[f"row {train_row}"] == f"exact duplicate of row {test_row}"
    for original, copy in plants["conflict"]:
        assert reasons[f"row {original}"].startswith("conflicting labels") and f"row {copy}" in reasons


@pytest.mark.parametrize("suffix,written", [(".csv", ".csv"), (".tsv", ".tsv"), (".jsonl", ".jsonl"),
                                            (".parquet", ".parquet"), (".db", ".parquet")])
def test_every_table_format_is_written_back_in_kind(tmp_path, suffix, written, capsys):
    table, _ = planted_texts()
    source = write_table(table, tmp_path / f"reviews{suffix}")
    extra = ["--table", "reviews"] if suffix == ".db" else []
    manifest = clean(source, tmp_path / "clean", "--no-near", *extra)
    assert Path(manifest["written"]).name == f"reviews{written}"
    copy = from_path(manifest["written"]).records
    assert len(copy) == manifest["rows_out"] == len(table) - manifest["removed"]
    if suffix == ".db":
        assert "written as Parquet" in capsys.readouterr().out


def test_pii_drop_and_keep(tmp_path):
    table, plants = planted_texts()
    source = write_table(table, tmp_path / "reviews.csv")
    pii_rows = {f"row {r}" for r, _ in plants["pii"]}
    dropped = clean(source, tmp_path / "drop", "--pii", "drop")
    assert pii_rows <= {e["id"] for e in dropped["entries"] if e["reason"].startswith("personal data")}
    assert NIK not in (tmp_path / "drop" / "reviews.csv").read_text()
    kept = clean(source, tmp_path / "keep", "--pii", "keep")
    assert not any(e["reason"].startswith("personal data") for e in kept["entries"])
    assert NIK in (tmp_path / "keep" / "reviews.csv").read_text()


def test_drop_label_errors_only_when_asked(tmp_path):
    table, flipped = topic_texts()
    source = write_table(table, tmp_path / "topics.csv")
    assert not clean(source, tmp_path / "kept")["entries"]
    dropped = clean(source, tmp_path / "dropped", "--drop-label-errors")["entries"]
    assert dropped and all(e["reason"].startswith("likely label error") for e in dropped)
    assert {e["id"] for e in dropped} <= {f"row {i}" for i in flipped}


def test_clean_image_folder(tmp_path):
    plants = planted_images(tmp_path / "pets")
    before = tree_digest(tmp_path / "pets")
    manifest = clean(tmp_path / "pets", tmp_path / "clean")
    assert tree_digest(tmp_path / "pets") == before
    reasons = {e["id"]: e["reason"] for e in manifest["entries"]}
    for name, _ in plants["corrupt"]:
        assert name in reasons and not (tmp_path / "clean" / name).exists()
    assert reasons["train/cat/cat4.png"] == "exact duplicate of test/cat/cat4.png"  # the test copy stays
    copied = tree_digest(tmp_path / "clean")
    assert all(copied[name] == before[name] for name in copied if name in before)  # copies, same layout
    again = run_audit(from_path(str(tmp_path / "clean")).records, "image", label_errors=False)["summary"]
    assert again["exact_duplicate_groups"] == again["near_duplicate_groups"] == again["corrupt_files"] == 0
    assert len([n for n in copied if not n.startswith("manifest")]) == manifest["rows_out"]


def test_clean_file_table_copies_files_and_rewrites_table(tmp_path):
    planted_images(tmp_path / "pets")
    files = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "pets").rglob("*.*"))
    listing = pd.DataFrame({"file": files, "label": [f.split("/")[2] for f in files], "site": "rs1"})
    write_table(listing, tmp_path / "labels.csv")
    manifest = clean(tmp_path / "labels.csv", tmp_path / "clean")
    copy = pd.read_csv(tmp_path / "clean" / "labels.csv")
    assert list(copy.columns) == ["file", "label", "site"] and len(copy) == manifest["rows_out"]
    assert all((tmp_path / "clean" / f).is_file() for f in copy["file"])
    assert {e["id"] for e in manifest["entries"]} >= {"pets/train/cat/empty.jpg", "pets/train/cat/cat0_copy.png"}


def test_refuses_a_non_empty_out_or_the_source_folder(tmp_path, capsys):
    planted_images(tmp_path / "pets")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    for out, message in ((tmp_path / "full", "is not empty"), (tmp_path / "pets" / "clean", "inside the source")):
        with pytest.raises(SystemExit):
            run_cli("clean", str(tmp_path / "pets"), "--out", str(out))
        assert message in capsys.readouterr().err
    assert (tmp_path / "full" / "x").read_text() == "mine" and not (tmp_path / "pets" / "clean").exists()


def test_a_failed_clean_leaves_nothing_behind(tmp_path, monkeypatch):
    table, _ = planted_texts()
    source = from_path(str(write_table(table, tmp_path / "reviews.csv")))
    a = analyse(source.records, "text", label_errors=False)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("lokal.audit.clean._write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        write_clean(source, a, plan(a), tmp_path / "clean", "redact")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reviews.csv"]


def test_clean_requires_out():
    with pytest.raises(SystemExit):
        run_cli("clean", "reviews.csv")


def test_empty_out_folder_is_accepted(tmp_path):
    table, _ = planted_texts()
    source = from_path(str(write_table(table, tmp_path / "reviews.csv")))
    (tmp_path / "clean").mkdir()
    a = analyse(source.records, "text", label_errors=False)
    summary = write_clean(source, a, plan(a), tmp_path / "clean", "redact")
    assert Path(summary["written"]).is_file()
    with pytest.raises(LokalError, match="not empty"):
        write_clean(source, a, plan(a), tmp_path / "clean", "redact")
