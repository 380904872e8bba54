"""Reading the user's tables (CSV, TSV, JSONL, Parquet, SQLite) and the columns every
table-based data module shares; light imports only (pandas), so the audit starts fast."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from lokal.data.splits import given_splits, label_strings
from lokal.errors import LokalError

log = logging.getLogger(__name__)
LABEL = "_label"  # the label as a string, as the user wrote it (before label_names)
READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet", ".db": "sqlite", ".sqlite": "sqlite"}


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
    frame["_id"] = "row " + frame["_row"].astype(str)
    frame[LABEL] = map_labels(frame[label_column], label_map)
    if group_column:
        blank = frame[group_column].isna()
        if blank.any():
            raise LokalError(f"{where}: {int(blank.sum())} rows have no value in column {group_column!r} "
                             f"(data.group_column), e.g. {frame['_id'][blank].tolist()[:5]}; fill them in")
        frame["_group"] = label_strings(frame[group_column])
    if split_column:
        frame["_given"] = given_splits(frame[split_column], split_column, where)
    return frame


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
    """(the folder relative paths start from: `root`, else the table's folder; `frame` with a
    `path` column: each `_id`, the file as the table wrote it, resolved against that folder)."""
    folder = Path(root) if root else Path(path).parent
    return folder, frame.assign(path=[str(resolve(folder, f)) for f in frame["_id"]])
