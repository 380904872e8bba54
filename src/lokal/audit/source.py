"""What to audit: a data config (`data=NAME overrides...`, exactly what training would read,
split included) or a path (a table, a table of file paths, a folder of split tables such as
train.csv / valid.tsv / test.csv, or an image/audio folder, read as is).

A `Source` keeps the records plus where they came from, so `lokal clean` can write a copy
in the same layout.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lokal.errors import LokalError

SPLITS = ("train", "val", "test")


@dataclass
class Source:
    kind: str  # "table" (texts), "file_table" (a table of file paths) or "folder"
    path: Path  # the table file or the folder root
    name: str  # names the default report folder
    modality: str  # "text", "image" or "audio"
    records: pd.DataFrame  # Contract 1 columns: id, split, label, text | path (+ group, metadata)
    table: str | None = None  # SQLite table
    text_column: str = "text"
    file_column: str = "file"
    root: Path | None = None  # file tables: the folder relative paths start from
    notes: list[str] = field(default_factory=list)  # printed with the report, kept in audit.json
    files: dict[str, Path] | None = None  # split tables (split -> table); `path` is then their folder


# -- data=NAME ------------------------------------------------------------------------------
def from_config(overrides: list[str]) -> Source:
    """Compose src/lokal/conf/train.yaml with the overrides and read the data module's records(),
    the raw rows in the split the config makes: deduplication, redaction and slang rewriting
    off, file checks left to the audit."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from lokal.assets.shipped import register_resolver
    from lokal.paths import CONFIG_DIR

    register_resolver()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
    except HydraException as err:  # unknown data=NAME or a malformed override: Hydra lists the choices
        raise LokalError(f"{err}") from err
    finally:
        GlobalHydra.instance().clear()
    name = next((o.split("=", 1)[1] for o in overrides if o.startswith("data=")), "data")
    source = from_module(_instantiate_data(cfg), name)
    if cfg.data.get("dedup"):
        source.notes.append("audited with data.dedup off; training (data.dedup on) drops exact duplicates and "
                            "conflicting-label texts before splitting, so exact-duplicate leakage shown here does "
                            "not reach training, but near-duplicate leakage does")
    return source


def _instantiate_data(cfg):
    from hydra.utils import get_class, instantiate

    target = get_class(cfg.data._target_)
    accepted = inspect.signature(target.__init__).parameters
    # the raw data: no dedup, no on-the-fly redaction or slang rewriting, no file checks (the audit's own)
    raw = {"dedup": False, "pii": None, "normalize_slang": False, "bad_files": "keep"}
    return instantiate(cfg.data, **{k: v for k, v in raw.items() if k in accepted})


def from_module(module, name: str) -> Source:
    """A Source from any classification data module that has records() (Contract 1)."""
    if not hasattr(module, "records"):
        raise LokalError(f"{type(module).__name__} cannot be audited yet (it has no records()); "
                         "audit the file or folder directly: lokal audit PATH")
    records = module.records()
    modality = getattr(module, "modality", None) or _modality_of_paths(records)
    files = _module_tables(module)
    path = Path(module.path) if getattr(module, "path", None) else next(iter(files.values())).parent if files else None
    if modality == "text":
        return Source("table", path, name, modality, records, table=getattr(module, "table", None),
                      text_column=getattr(module, "text_column", "text"), files=files)
    if hasattr(module, "file_column"):
        return Source("file_table", path, name, modality, records, table=getattr(module, "table", None),
                      file_column=module.file_column, root=Path(module.root), files=files)
    return Source("folder", Path(module.root), name, modality, records)


def _module_tables(module) -> dict[str, Path] | None:
    """The split tables a table module read (data.path=DIR or data.train_path ...); None: one table."""
    from dataclasses import asdict

    from lokal.data.tables import split_files

    files = getattr(module.settings, "files", None)
    return split_files(module.path, **asdict(files)) if files is not None else None


# -- PATH -------------------------------------------------------------------------------------
def from_path(path: str, text_column: str = "text", label_column: str = "label", file_column: str = "file",
              split_column: str | None = None, table: str | None = None, encoding: str = "utf-8") -> Source:
    """A table (CSV/TSV/JSONL/Parquet/SQLite) of texts or of file paths, or a folder of class folders."""
    target = Path(path)
    columns = (text_column, label_column, file_column)
    if target.is_dir():
        tables = _split_tables(target)
        return _from_folder(target) if tables is None else _from_tables(target, tables, columns, split_column,
                                                                        table, encoding)
    if not target.exists():
        raise LokalError(f"{path} does not exist: give a table file (CSV, TSV, JSONL, Parquet, SQLite), "
                         "an image/audio folder, or a data config (lokal audit data=NAME)")
    frame = _read(target, table, encoding)
    split_column = split_column or ("split" if "split" in frame.columns else None)
    if split_column and split_column not in frame.columns:
        raise LokalError(f"{path}: no column {split_column!r}; columns are {list(frame.columns)}. Set --split-column")
    split = frame[split_column].astype(str) if split_column else pd.Series("all", index=frame.index)
    kind, records, used = _records(target, frame, split.to_numpy(), "row ", columns, target.parent)
    return _source(kind, target, target.stem, records, used, table, target.parent)


def _read(file: Path, table: str | None, encoding: str) -> pd.DataFrame:
    from lokal.data.tables import read_table

    try:
        return read_table(str(file), table, encoding)
    except LokalError as err:  # read_table speaks of config keys; this command has flags
        raise LokalError(str(err).replace("data.encoding=", "--encoding ").replace("data.table", "--table")) from None


def _records(file: Path, frame: pd.DataFrame, split, prefix: str, columns: tuple[str, str, str],
             folder: Path) -> tuple[str, pd.DataFrame, str]:
    """(kind, Contract 1 records, the text or file column) of one table: ids "row N" (with the
    table's name first for split tables); a table of files has the paths as written as ids,
    relative ones starting from `folder`."""
    text_column, label_column, file_column = columns
    if label_column not in frame.columns:
        raise LokalError(f"{file}: no column {label_column!r}; columns are {list(frame.columns)}. Set --label-column")
    base = {"id": [f"{prefix}{i}" for i in range(len(frame))], "split": split,
            "label": frame[label_column].astype(str).to_numpy()}
    if text_column in frame.columns:
        return "table", pd.DataFrame(base | {"text": frame[text_column].fillna("").astype(str).to_numpy()}), text_column
    file_column = next((c for c in (file_column, "path") if c in frame.columns), None)
    if file_column is None:
        raise LokalError(f"{file}: no text column {text_column!r} and no file column; columns are "
                         f"{list(frame.columns)}. Set --text-column (a table of texts) or --file-column (of files)")
    written = frame[file_column].astype(str).str.strip()
    paths = [str(p if Path(p).is_absolute() else folder / p) for p in written]
    return "file_table", pd.DataFrame(base | {"id": written.to_numpy(), "path": paths}), file_column


def _source(kind: str, path: Path, name: str, records: pd.DataFrame, column: str, table: str | None,
            folder: Path, files: dict[str, Path] | None = None) -> Source:
    if kind == "table":
        return Source("table", path, name, "text", records, table=table, text_column=column, files=files)
    return Source("file_table", path, name, _modality_of_paths(records), records, table=table, file_column=column,
                  root=folder, files=files)


# -- a folder of split tables -----------------------------------------------------------------
def _split_tables(folder: Path) -> dict[str, Path] | None:
    """The folder's split tables (train.csv, valid.tsv, test.csv, ...); None: no table named
    like a split (then it is a folder of class folders)."""
    from lokal.data.tables import READERS, SPLIT_NAMES, find_split_files

    named = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in READERS
             and f.stem.lower() in SPLIT_NAMES]
    return find_split_files(folder) if named else None


def _from_tables(folder: Path, tables: dict[str, Path], columns: tuple[str, str, str], split_column: str | None,
                 table: str | None, encoding: str) -> Source:
    """Every split table read as one table is, each row in its table's split, ids "train.csv
    row N", so leakage between the tables is leakage between splits. A val or test table
    without the label column (unlabelled, as Kaggle's test.csv) is noted and left out."""
    if split_column:
        raise LokalError(f"{folder} holds split tables ({', '.join(f.name for f in tables.values())}): each row's "
                         "split is its table's; drop --split-column")
    parts, notes, kinds = [], [], set()
    for split, file in tables.items():
        frame = _read(file, table, encoding)
        if split != "train" and columns[1] not in frame.columns:
            notes.append(f"{file.name} has no label column {columns[1]!r}: not audited (lokal clean copies it)")
            continue
        kind, records, used = _records(file, frame, split, f"{file.name} row ", columns, folder)
        parts.append(records)
        kinds.add((kind, used))
    if len(kinds) > 1:
        raise LokalError(f"{folder}: the split tables differ in kind ({sorted(kinds)}); give each the same columns")
    (kind, used), = kinds
    source = _source(kind, folder, folder.name, pd.concat(parts, ignore_index=True), used, table, folder, tables)
    source.notes += notes
    return source


def _from_folder(root: Path) -> Source:
    """root/CLASS/file or root/{train,val,test}/CLASS/file; only image and audio files count."""
    from lokal.data.checks import modality_of

    split_dirs = [root / s for s in SPLITS if (root / s).is_dir()]
    tops = [(d, d.name) for d in split_dirs] if split_dirs else [(root, "all")]
    rows = []
    for top, split in tops:
        for class_dir in sorted(d for d in top.iterdir() if d.is_dir() and not d.name.startswith(".")):
            for f in sorted(class_dir.rglob("*")):
                if f.is_file() and modality_of(f):
                    rows.append({"id": f.relative_to(root).as_posix(), "split": split, "label": class_dir.name,
                                 "path": str(f)})
    if not rows:
        raise LokalError(f"{root}: no image or audio files in class folders; expected ROOT/CLASS/file "
                         "or ROOT/train/CLASS/file (+ val/, test/)")
    records = pd.DataFrame(rows)
    return Source("folder", root, root.name, _modality_of_paths(records), records)


def _modality_of_paths(records: pd.DataFrame) -> str:
    """The most common of image/audio among the files (unknown extensions count as images)."""
    from lokal.data.checks import modality_of

    kinds = records["path"].map(lambda p: modality_of(p) or "image")
    return str(kinds.mode().iloc[0]) if len(kinds) else "image"
