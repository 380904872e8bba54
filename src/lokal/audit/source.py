"""What to audit: a data config (`data=NAME overrides...`, exactly what training would read,
split included) or a path (a table, a table of file paths, or an image/audio folder, read as is).

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
    if modality == "text":
        return Source("table", Path(module.path), name, modality, records, table=getattr(module, "table", None),
                      text_column=getattr(module, "text_column", "text"))
    if hasattr(module, "file_column"):
        return Source("file_table", Path(module.path), name, modality, records, table=getattr(module, "table", None),
                      file_column=module.file_column, root=Path(module.root))
    return Source("folder", Path(module.root), name, modality, records)


# -- PATH -------------------------------------------------------------------------------------
def from_path(path: str, text_column: str = "text", label_column: str = "label", file_column: str = "file",
              split_column: str | None = None, table: str | None = None, encoding: str = "utf-8") -> Source:
    """A table (CSV/TSV/JSONL/Parquet/SQLite) of texts or of file paths, or a folder of class folders."""
    target = Path(path)
    if target.is_dir():
        return _from_folder(target)
    if not target.exists():
        raise LokalError(f"{path} does not exist: give a table file (CSV, TSV, JSONL, Parquet, SQLite), "
                         "an image/audio folder, or a data config (lokal audit data=NAME)")
    from lokal.data.tables import read_table

    try:
        frame = read_table(str(target), table, encoding)
    except LokalError as err:  # read_table speaks of config keys; this command has flags
        raise LokalError(str(err).replace("data.encoding=", "--encoding ").replace("data.table", "--table")) from None
    split_column = split_column or ("split" if "split" in frame.columns else None)
    for column, option in ((label_column, "--label-column"), (split_column, "--split-column")):
        if column and column not in frame.columns:
            raise LokalError(f"{path}: no column {column!r}; columns are {list(frame.columns)}. Set {option}")
    split = frame[split_column].astype(str) if split_column else pd.Series("all", index=frame.index)
    base = {"id": [f"row {i}" for i in range(len(frame))], "split": split.to_numpy(),
            "label": frame[label_column].astype(str).to_numpy()}
    if text_column in frame.columns:
        records = pd.DataFrame(base | {"text": frame[text_column].fillna("").astype(str).to_numpy()})
        return Source("table", target, target.stem, "text", records, table=table, text_column=text_column)
    file_column = next((c for c in (file_column, "path") if c in frame.columns), None)
    if file_column:
        return _file_table(target, frame, base, file_column, table)
    raise LokalError(f"{path}: no text column {text_column!r} and no file column; columns are "
                     f"{list(frame.columns)}. Set --text-column (a table of texts) or --file-column (of files)")


def _file_table(target: Path, frame: pd.DataFrame, base: dict, file_column: str, table: str | None) -> Source:
    """Paths as written in the table are the ids (as in data=file_table); relative ones start
    from the table's folder."""
    written = frame[file_column].astype(str).str.strip()
    files = [str(p if Path(p).is_absolute() else target.parent / p) for p in written]
    records = pd.DataFrame(base | {"id": written.to_numpy(), "path": files})
    return Source("file_table", target, target.stem, _modality_of_paths(records), records, table=table,
                  file_column=file_column, root=target.parent)


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
