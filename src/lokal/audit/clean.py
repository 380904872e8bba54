"""`lokal clean`: a cleaned copy of the data and a manifest of every removed or redacted row.

Which copy of a duplicate stays: the one in test, else val, else train (then the first
row). Removing the training copy decontaminates training and leaves the evaluation set
(often fixed, or shared with others) as it was; when the split is drawn by seed anyway
(a table without a split column) the choice does not matter. Every member of a group
with conflicting labels goes: which label is right cannot be told from the data.
The source is only read; the copy is built in a temporary folder next to --out and
renamed onto it at the end, so a failed run leaves nothing half-written. Split tables
(train.csv, valid.tsv, test.csv, ...) come back as the same tables, each cleaned.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from lokal.audit.core import Analysis
from lokal.audit.source import Source
from lokal.errors import LokalError

KEEP_ORDER = {"test": 0, "val": 1, "train": 2}  # which copy of a duplicate stays


def plan(a: Analysis, pii: str = "redact", drop_label_errors: bool = False) -> pd.DataFrame:
    """One manifest row per removed or redacted record: id, split, label, action, reason."""
    frame, reasons = a.frame, {}
    for row, problem in frame["problem"].dropna().items():
        reasons.setdefault(row, problem)
    _conflicting(a, reasons)
    _duplicates(a, reasons)
    if drop_label_errors:
        for row in a.flagged:
            reasons.setdefault(row, f"likely label error (label {frame.at[row, 'label']})")
    removed = [(row, "removed", why) for row, why in reasons.items()]
    removed += _pii_actions(a, pii, set(reasons))
    entries = pd.DataFrame(removed, columns=["row", "action", "reason"]).sort_values("row", kind="stable")
    return frame.loc[entries["row"], ["id", "split", "label"]].reset_index(drop=True).assign(
        action=entries["action"].to_numpy(), reason=entries["reason"].to_numpy(), row=entries["row"].to_numpy())


def _conflicting(a: Analysis, reasons: dict) -> None:
    labels = a.frame.groupby("item")["label"].agg(lambda s: sorted(set(s)))
    for row, item in a.frame["item"].items():
        if len(labels[item]) > 1:
            reasons.setdefault(row, f"conflicting labels ({', '.join(labels[item])})")


def _duplicates(a: Analysis, reasons: dict) -> None:
    """Per item, keep the copy a model is evaluated on (test, val, train), then the first."""
    frame = a.frame.drop(index=list(reasons))
    order = frame["split"].map(KEEP_ORDER).fillna(len(KEEP_ORDER))
    ranked = frame.assign(_order=order, _row=frame.index).sort_values(["item", "_order", "_row"])
    keeper = ranked.groupby("item")["_row"].transform("first")
    for row, kept in keeper.items():
        if row != kept:
            exact = frame.at[row, "exact"] == frame.at[kept, "exact"]
            reasons[row] = f"{'exact' if exact else 'near'} duplicate of {frame.at[kept, 'id']}"


def _pii_actions(a: Analysis, pii: str, removed: set) -> list[tuple[int, str, str]]:
    if a.pii is None or a.pii.empty or pii == "keep":
        return []
    kinds = a.pii.groupby("row")["kind"].agg(lambda s: ", ".join(sorted(set(s))))
    action = "removed" if pii == "drop" else "redacted"
    return [(row, action, f"personal data: {k}") for row, k in kinds.items() if row not in removed]


# -- writing ------------------------------------------------------------------------------
def check_out(out: Path, source: Source) -> Path:
    """--out must be new (or empty) and outside the source folder."""
    out = Path(out).resolve()
    folder = source.path.resolve() if source.kind == "folder" or source.files else source.path.resolve().parent
    if source.files and out in {f.resolve().parent for f in source.files.values()}:
        raise LokalError(f"--out {out} holds the source tables; write the copy somewhere else")
    if out == folder or (source.kind == "folder" and folder in out.parents):
        raise LokalError(f"--out {out} is inside the source folder {folder}; write the copy somewhere else")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LokalError(f"--out {out} exists and is not empty; give a new folder (nothing is overwritten)")
    return out


def write_clean(source: Source, a: Analysis, manifest: pd.DataFrame, out: Path, pii: str) -> dict:
    """Build the copy in a temporary sibling folder, then rename it onto `out`."""
    out = check_out(out, source)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        removed = manifest.loc[manifest["action"] == "removed", "row"]
        kept = a.frame.drop(index=removed.to_numpy())
        write = {"table": _write_text_table, "file_table": _write_file_table, "folder": _write_folder}[source.kind]
        written = write(source, a.frame.loc[removed.to_numpy()], kept, tmp, pii)
        summary = _write_manifest(source, a, manifest, written, tmp, out)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _write_text_table(source: Source, removed: pd.DataFrame, kept: pd.DataFrame, tmp: Path, pii: str) -> Path:
    """The user's whole table (every column, also rows the data module skipped) without the
    removed rows; with pii=redact every text is redacted. Split tables: each of them."""
    from lokal.audit.pii import redact_series

    for file, gone, _ in _per_table(source, removed, kept):
        table = _read_source_table(source, file)
        table = table.drop(index=table.index[_row_numbers(gone["id"])])
        column = source.text_column
        if pii == "redact" and column in table.columns:
            table[column] = redact_series(table[column].fillna("").astype(str)).where(table[column].notna(), None)
        written = _write_table(table, source, file, tmp)
    return tmp if source.files else written


def _per_table(source: Source, removed: pd.DataFrame, kept: pd.DataFrame):
    """(table, its removed records, its kept records) for each source table. A record's table is
    its split's (a split carved from train: the train table's): ids are only unique per table."""
    if not source.files:
        return [(source.path, removed, kept)]
    table_of = {split: source.files.get(split, source.files["train"]) for split in ("train", "val", "test")}
    return [(file, removed[removed["split"].map(table_of) == file], kept[kept["split"].map(table_of) == file])
            for file in source.files.values()]


def _write_file_table(source: Source, removed: pd.DataFrame, kept: pd.DataFrame, tmp: Path, pii: str) -> Path:
    """Each table without its removed rows, and a copy of each kept file; relative paths keep
    their layout, absolute ones go under files/ (and the table points there)."""
    for file, gone, staying in _per_table(source, removed, kept):
        written = _write_one_file_table(source, file, gone, staying, tmp)
    return tmp if source.files else written


def _write_one_file_table(source: Source, file: Path, removed: pd.DataFrame, kept: pd.DataFrame, tmp: Path) -> Path:
    table = _read_source_table(source, file)
    written = table[source.file_column].astype(str).str.strip()
    gone, staying = set(removed["id"]), set(kept["id"])
    # a path listed twice is one id: drop its later rows, not every row
    drop = (written.isin(gone) & ~written.isin(staying)) | (written.isin(gone & staying) & written.duplicated())
    table = table[~drop].copy()
    new_paths = []
    for value in table[source.file_column].astype(str).str.strip():
        path = Path(value)
        relative = Path("files", *path.parts[1:]) if path.is_absolute() else path
        source_file = path if path.is_absolute() else (source.root or source.path.parent) / path
        if source_file.is_file():  # a missing file was reported; its row goes only if the audit removed it
            _copy(source_file, tmp / relative)
        new_paths.append(relative.as_posix())
    table[source.file_column] = new_paths
    return _write_table(table, source, file, tmp)


def _write_folder(source: Source, removed: pd.DataFrame, kept: pd.DataFrame, tmp: Path, pii: str) -> Path:
    """Copies of the kept files under their paths relative to the root."""
    for rel, path in zip(kept["id"], kept["path"], strict=True):
        _copy(Path(path), tmp / rel)
    return tmp


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def _read_source_table(source: Source, file: Path) -> pd.DataFrame:
    from lokal.data.tables import read_table

    return read_table(str(file), source.table)


def _row_numbers(ids: pd.Series) -> list[int]:
    """Table ids are "row N" (N: the 0-based data row of the user's file)."""
    return [int(i.split()[-1]) for i in ids]


def _write_table(table: pd.DataFrame, source: Source, file: Path, tmp: Path) -> Path:
    """The same name and format as `file`; SQLite becomes Parquet (one table, every column typed)."""
    suffix = file.suffix.lower()
    if suffix in (".db", ".sqlite"):
        suffix = ".parquet"
    stem = source.table if suffix != file.suffix.lower() and source.table and not source.files else file.stem
    from lokal.data.tables import write_table

    return write_table(table, tmp / f"{stem}{suffix}")


def _write_manifest(source: Source, a: Analysis, manifest: pd.DataFrame, written: Path, tmp: Path,
                    out: Path) -> dict:
    from lokal.io import write_json

    entries = manifest.drop(columns="row")
    entries.to_csv(tmp / "manifest.csv", index=False)
    counts = entries["action"].value_counts()
    summary = {"source": str(source.path), "out": str(out), "written": str(out / written.relative_to(tmp)),
               "rows_in": len(a.frame), "rows_out": len(a.frame) - int(counts.get("removed", 0)),
               "removed": int(counts.get("removed", 0)), "redacted": int(counts.get("redacted", 0)),
               "reasons": _reason_counts(entries), "entries": entries.to_dict("records")}
    write_json(tmp / "manifest.json", summary)
    return summary


def _reason_counts(entries: pd.DataFrame) -> dict[str, int]:
    """'exact duplicate of row 3' -> 'exact duplicate': counts per kind of reason."""
    from collections import Counter

    kinds = entries["action"] + ": " + entries["reason"].str.replace(r" (of|\().*$", "", regex=True)
    return dict(sorted(Counter(kinds).items()))
