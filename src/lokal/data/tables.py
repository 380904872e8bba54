"""Reading the user's tables (CSV, TSV, JSONL, Parquet, SQLite), one table or one per split
(`data.path=DIR` holding train.csv / valid.tsv / test.csv, or `data.train_path` ...), and the
columns every table-based data module shares; light imports only (pandas), so the audit starts
fast."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from lokal.data.splits import given_splits, label_strings
from lokal.errors import LokalError

log = logging.getLogger(__name__)
LABEL = "_label"  # the label as a string, as the user wrote it (before label_names)
READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet", ".db": "sqlite", ".sqlite": "sqlite"}
# split tables in a folder, by file name (stem): IndoNLU writes valid, Hugging Face validation, others dev
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}
SOURCE, FILE_SPLIT = "_source", "_file_split"  # split tables: the file a row came from, and its split
KEEP_ORDER = {"test": 0, "val": 1, "train": 2}  # a text in two split tables stays in the first of these


def read_table(path: str | None, table: str | None = None, encoding: str = "utf-8") -> pd.DataFrame:
    """Read CSV/TSV/JSONL/Parquet/SQLite into a frame, with a clear error for anything else."""
    if not path:
        raise LokalError("data.path is not set: give a CSV/TSV/JSONL/Parquet file, e.g. data.path=reviews.csv")
    file = Path(path)
    if file.is_dir():
        raise LokalError(f"data.path={path} is a folder, not a table: give one file (CSV, TSV, JSONL, Parquet, "
                         "SQLite); for a folder of class folders use data=image_folder (or audio_folder) data.root=DIR")
    if not file.is_file():
        raise LokalError(f"data.path={path} does not exist (looked in {file.resolve().parent})")
    kind = READERS.get(file.suffix.lower())
    if kind is None:
        raise LokalError(f"{path}: unsupported file type {file.suffix!r}; use one of {', '.join(READERS)}")
    try:
        if kind == "sqlite":
            return _read_sqlite(file, table)
        if kind == "jsonl":
            return _read_jsonl(file, encoding)
        if kind == "parquet":
            return pd.read_parquet(file)
        return pd.read_csv(file, sep="\t" if kind == "tsv" else _csv_separator(file, encoding), encoding=encoding)
    except UnicodeDecodeError as err:
        raise LokalError(f"{path} is not {encoding} text ({err}); re-save it as UTF-8, or pass its encoding, "
                         "e.g. data.encoding=latin-1 (Windows Excel exports are often cp1252)") from err
    except (ValueError, pd.errors.ParserError) as err:
        raise LokalError(f"{path}: cannot be read as {kind} ({err}); check its format and encoding (UTF-8)") from err


SEPARATORS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}


def _csv_separator(file: Path, encoding: str) -> str:
    """A .csv file's separator, from its header line: tab- and semicolon-separated files named
    .csv are common (European Excel exports semicolons); a comma anywhere in the header wins."""
    with open(file, encoding=encoding, newline="") as handle:
        header = handle.readline()
    counts = {sep: header.count(sep) for sep in SEPARATORS}
    if counts[","] or not any(counts.values()):
        return ","
    separator = max(counts, key=counts.get)
    log.info("%s: the header has no comma but %d %s(s): reading it as %s-separated", file, counts[separator],
             SEPARATORS[separator], SEPARATORS[separator])
    return separator


def _read_jsonl(file: Path, encoding: str) -> pd.DataFrame:
    """JSON Lines, with the number of the first line that is not one JSON object when reading fails."""
    import json

    try:
        return pd.read_json(file, lines=True, encoding=encoding)
    except ValueError:
        with open(file, encoding=encoding) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    if isinstance(json.loads(line), dict):
                        continue
                    problem = "is not a JSON object ({...})"
                except json.JSONDecodeError as err:
                    problem = f"is not valid JSON ({err.msg} at column {err.colno})"
                raise LokalError(f"{file}: line {number} {problem}: {line.strip()[:80]!r}; JSON Lines needs one "
                                 "object per line, e.g. {\"text\": \"...\", \"label\": \"...\"}") from None
        raise


def split_files(path: str | None, train_path: str | None = None, val_path: str | None = None,
                test_path: str | None = None) -> dict[str, Path] | None:
    """{split: table} when the data comes as one table per split: named by data.train_path /
    data.val_path / data.test_path, or found by name in the folder data.path. None: one table."""
    named = {split: p for split, p in (("train", train_path), ("val", val_path), ("test", test_path)) if p}
    if named:
        if path:
            raise LokalError(f"data.path={path} and data.{next(iter(named))}_path={next(iter(named.values()))} "
                             "are both set: give the folder (data.path=DIR) or the tables one by one, not both")
        if "train" not in named:
            raise LokalError(f"data.{next(iter(named))}_path is set but data.train_path is not: name the training "
                             "table too (a missing val or test table is carved from train, never train)")
        for split, file in named.items():
            if not Path(file).is_file():
                raise LokalError(f"data.{split}_path={file} does not exist (looked in {Path(file).resolve().parent})")
        return {split: Path(file) for split, file in named.items()}
    if path and Path(path).is_dir():
        return find_split_files(Path(path))
    return None


def find_split_files(folder: Path) -> dict[str, Path]:
    """The split tables of `folder` by name (train, val / valid / validation / dev, test; any
    format read_table reads); other files are ignored and named. Two tables for one split, or
    no train table, is an error naming the files and the fix."""
    found: dict[str, list[Path]] = {}
    others = []
    for file in sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")):
        split = SPLIT_NAMES.get(file.stem.lower()) if file.suffix.lower() in READERS else None
        if split:
            found.setdefault(split, []).append(file)
        else:
            others.append(file.name)
    for split, files in found.items():
        if len(files) > 1:
            names = " and ".join(f.name for f in files)
            raise LokalError(f"{folder}: {names} are all the {split} table; keep one (rename or move the others), "
                             f"or name each table: data.train_path=... data.val_path=... data.test_path=...")
    if "train" not in found:
        raise LokalError(no_train_table(folder, found, others))
    if others:
        log.info("%s: not a split table, ignored: %s", folder, ", ".join(others[:10]))
    return {split: found[split][0] for split in ("train", "val", "test") if split in found}


def no_train_table(folder: Path, found: dict[str, list[Path]], others: list[str]) -> str:
    """What a folder without a train table holds, and what to do."""
    tables = [f.name for files in found.values() for f in files] + [o for o in others if Path(o).suffix in READERS]
    fix = ("name the training table train.EXT (val / valid / dev and test optional; EXT one of "
           f"{', '.join(READERS)}), give one table as data.path=FILE, or name the tables with data.train_path=... "
           "data.val_path=... data.test_path=...")
    if not tables:
        return (f"data.path={folder} is a folder, not a table, and holds no split tables (train.csv, valid.tsv, "
                f"test.csv, ...): {fix}; for class folders of images or recordings use data=image_folder (or "
                "audio_folder) data.root=DIR")
    return f"data.path={folder}: no train table among {', '.join(tables[:10])}: {fix}"


def read_rows(path: str | None, table: str | None, encoding: str, columns: dict[str, str],
              files: dict[str, str | None] | None = None, labels: tuple[str, ...] = ()) -> pd.DataFrame:
    """The rows a table module reads: the columns `columns` names (config key -> column) and
    `_row`, each row's 0-based data row in its file. From split tables (`files`: the
    SplitFileSettings keys, or data.path=DIR) also `_source` (the file's name) and `_file_split`
    (train, val, test); a val or test table with none of the `labels` columns (Kaggle's
    unlabelled test.csv) cannot be scored, so it is left out with a warning."""
    tables = split_files(path, **(files or {}))
    wanted = list(dict.fromkeys(columns.values()))
    if tables is None:
        frame = read_table(path, table, encoding)
        require_columns(frame, columns, path)
        return frame[wanted].assign(_row=range(len(frame)))
    if "split_column" in columns:
        listed = ", ".join(f.name for f in tables.values())
        raise LokalError(f"data.split_column={columns['split_column']} and split tables ({listed}) both say which "
                         "split a row is in: unset data.split_column, or give one table with data.path=FILE")
    names = _source_names(tables)
    parts = []
    for split, file in tables.items():
        frame = read_table(str(file), table, encoding)
        if split != "train" and labels and not set(labels) & set(frame.columns):
            log.warning("%s has no label column %s: it cannot be scored, so it is left out (the %s split is carved "
                        "from train); predict on it with lokal predict RUN %s", file, list(labels), split, file)
            continue
        require_columns(frame, columns, file)
        parts.append(frame[wanted].assign(_row=range(len(frame)), **{SOURCE: names[split], FILE_SPLIT: split}))
    log.info("split tables: %s", ", ".join(f"{names[s]} ({s})" for s in tables))
    return pd.concat(parts, ignore_index=True)


def _source_names(tables: dict[str, Path]) -> dict[str, str]:
    """Each table's file name, or its whole path where two split tables share a name."""
    names = [f.name for f in tables.values()]
    return {split: f.name if names.count(f.name) == 1 else str(f) for split, f in tables.items()}


def describe_source(path: str | None, files: dict[str, str | None] | None) -> str:
    """The data's name in messages: data.path, or the named split tables joined by +."""
    named = [p for p in (files or {}).values() if p]
    return " + ".join(named) if named and not path else str(path)


def source_identity(path: str | None, files: dict[str, str | None] | None) -> str:
    """What cached token ids depend on besides the texts: every table's path, size and mtime."""
    from lokal.data.cache import file_identity

    tables = split_files(path, **(files or {}))
    return "|".join(file_identity(f) for f in (tables.values() if tables else [path]))


def first_copies(key: pd.Series, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(first: each row is its `key`'s first copy; leaked: a later copy whose first copy sits in
    another split table). From split tables the first copy is the one in test, then val, then
    train: the evaluation tables stay as they are (a benchmark's test set stays comparable) and
    the training copy goes, so no text is in two splits."""
    key = pd.Series(key.to_numpy())
    if FILE_SPLIT not in frame.columns:
        return ~key.duplicated().to_numpy(), np.zeros(len(key), dtype=bool)
    splits = pd.Series(frame[FILE_SPLIT].to_numpy())
    order = np.argsort(splits.map(KEEP_ORDER).to_numpy(), kind="stable")
    first = np.empty(len(key), dtype=bool)
    first[order] = ~key.iloc[order].duplicated().to_numpy()
    kept_split = key.map(pd.Series(splits[first].to_numpy(), index=key[first].to_numpy()))
    return first, (~first & (kept_split != splits)).to_numpy()


def report_leaks(frame: pd.DataFrame, leaked: np.ndarray, kind: str, where: str) -> dict[str, int]:
    """Log each pair of split tables that share texts and drop the copies (`kind`: exact, near)
    from the training side; the counts for metrics.json (data/leaked_<kind>_dropped)."""
    if leaked.any():
        rows = frame[leaked]
        for source, part in rows.groupby(SOURCE, sort=False):
            log.warning("%s: %d rows of %s are %s copies of rows in another split table (the test, then val copy "
                        "stays): dropped from %s so no text is in two splits (e.g. %s); lokal audit %s lists them",
                        where, len(part), source, kind, source, ", ".join(row_ids(part)[:5]), where)
    return {f"leaked_{kind}_dropped": int(leaked.sum())}


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """The counterpart of read_table, by suffix: CSV, TSV, JSONL (UTF-8, not ASCII-escaped) or Parquet."""
    kind = READERS.get(Path(path).suffix.lower())
    if kind == "csv":
        frame.to_csv(path, index=False)
    elif kind == "tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif kind == "jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif kind == "parquet":
        frame.to_parquet(path, index=False)
    else:
        raise LokalError(f"{path}: cannot write {Path(path).suffix!r} tables; use .csv, .tsv, .jsonl or .parquet")
    return Path(path)


def _read_sqlite(file: Path, table: str | None) -> pd.DataFrame:
    import sqlite3

    with sqlite3.connect(f"file:{file}?mode=ro", uri=True) as conn:  # read-only: never touch user data
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
        if table not in tables:
            raise LokalError(f"{file}: set data.table to one of the tables {tables}")
        return pd.read_sql_query(f'select * from "{table}"', conn)


def require_columns(frame: pd.DataFrame, columns: dict[str, str], path) -> None:
    """`columns` maps a config key (e.g. text_column) to the column it names."""
    for key, column in columns.items():
        if column not in frame.columns:
            raise LokalError(f"{path}: no column {column!r}; columns are {list(frame.columns)}. "
                             f"Set data.{key} to the right name")
    require_scalars(frame, columns, path)


def require_values(frame: pd.DataFrame, columns: dict[str, str], path) -> None:
    """A row without a file or a label cannot be trained on or audited: name the rows."""
    for key, column in columns.items():
        blank = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
        if blank.any():
            rows = ", ".join(f"row {r}" for r in frame["_row"][blank][:10])
            raise LokalError(f"{path}: {int(blank.sum())} row(s) have no value in column {column!r} "
                             f"(data.{key}): {rows}; fill them in or delete those rows")


def require_scalars(frame: pd.DataFrame, columns: dict[str, str], path) -> None:
    """A text or label must be one value: a list or dict in a cell (Parquet, JSONL) would be
    trained on as its printed form. Name the column and the first such rows."""
    for key, column in columns.items():
        nested = frame[column].map(lambda v: isinstance(v, list | tuple | dict | set) or hasattr(v, "__array__"))
        if nested.any():
            first = frame[column][nested].iloc[0]
            kind = "dict" if isinstance(first, dict) else "list"  # Parquet lists arrive as NumPy arrays
            rows = ", ".join(f"row {r}" for r in frame.index[nested][:5])
            raise LokalError(f"{path}: column {column!r} (data.{key}) holds {kind} values, not single texts or "
                             f"labels ({int(nested.sum())} rows, e.g. {rows}); flatten it into one value per row "
                             "(e.g. join the list into one string), or point data." + key + " at another column")


def wanted_columns(required: dict[str, str], group_column: str | None, split_column: str | None,
                   metadata_columns: list[str]) -> dict[str, str]:
    """Config key -> column for every column a table module reads (unset keys left out)."""
    optional = {"group_column": group_column, "split_column": split_column}
    optional |= {f"metadata_columns[{i}]": column for i, column in enumerate(metadata_columns)}
    return required | {key: column for key, column in optional.items() if column}


def tag_rows(frame: pd.DataFrame, label_column: str, group_column: str | None, split_column: str | None,
             where: str, label_map: dict | None = None) -> pd.DataFrame:
    """Add the columns the splits and records() read: _id ("row N"), _label (after `label_map`,
    which merges spellings of one class), _group, _given."""
    frame = frame.reset_index(drop=True)
    frame["_id"] = row_ids(frame)
    frame[LABEL] = map_labels(frame[label_column], label_map)
    if group_column:
        blank = frame[group_column].isna()
        if blank.any():
            raise LokalError(f"{where}: {int(blank.sum())} rows have no value in column {group_column!r} "
                             f"(data.group_column), e.g. {frame['_id'][blank].tolist()[:5]}; fill them in")
        frame["_group"] = label_strings(frame[group_column])
    if split_column:
        frame["_given"] = given_splits(frame[split_column], split_column, where)
    elif FILE_SPLIT in frame.columns:
        frame["_given"] = frame[FILE_SPLIT].to_numpy()
    return frame


def row_ids(frame: pd.DataFrame) -> pd.Series:
    """ "row N" (N: the 0-based data row of the file); from split tables "train.csv row N"."""
    rows = "row " + frame["_row"].astype(str)
    return frame[SOURCE] + " " + rows if SOURCE in frame.columns else rows


def map_labels(labels: pd.Series, label_map: dict | None) -> pd.Series:
    """Labels as strings, with `data.label_map` merging spellings of one class ({Negative: negative})."""
    return label_strings(labels).replace({str(k): str(v) for k, v in (label_map or {}).items()})


def fold_text(texts: pd.Series) -> pd.Series:
    """The duplicate key: lowercased, runs of whitespace folded to one space."""
    return texts.astype(str).str.lower().str.split().str.join(" ")


def resolve(root: Path, file: str) -> Path:
    """A path as written in the table: absolute as is, relative against `root`."""
    path = Path(file).expanduser()
    return (path if path.is_absolute() else root / path).absolute()


def with_paths(frame: pd.DataFrame, root: str | None, path: str) -> tuple[Path, pd.DataFrame]:
    """(the folder relative paths start from: `root`, else the table's folder (`path` a folder
    of split tables: that folder); `frame` with a `path` column: each `_id`, the file as the
    table wrote it, resolved against that folder)."""
    folder = Path(root) if root else Path(path) if Path(path).is_dir() else Path(path).parent
    return folder, frame.assign(path=[str(resolve(folder, f)) for f in frame["_id"]])
