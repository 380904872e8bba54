"""A table of file paths and labels (CSV, TSV, JSONL, Parquet, SQLite) as a LightningDataModule.

Images train exactly like an image folder (same checks, splits, transforms and loaders:
`LabelledFilesDataModule`); audio files exactly like an audio folder (Whisper's log-mel,
`lokal.data.audio_files`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lokal.data.checks import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, modality_of
from lokal.data.image import LabelledFilesDataModule
from lokal.data.tables import read_table, require_columns, require_values, tag_rows, wanted_columns
from lokal.errors import LokalError


class FileTableDataModule(LabelledFilesDataModule):
    """One row per file: a path (relative to `root`, by default the table's folder) and a
    label, plus optional group, metadata and split columns. The modality (image or audio)
    comes from the files' extensions."""

    def __init__(
        self,
        path: str | None,
        file_column: str = "file",
        label_column: str = "label",
        root: str | None = None,
        table: str | None = None,
        classes: list[str] | None = None,
        label_map: dict | None = None,
        group_column: str | None = None,
        metadata_columns: list[str] | None = None,
        split_column: str | None = None,
        folds: int = 0,
        fold: int = 0,
        bad_files: str = "fail",
        augment: dict | None = None,
        balance: bool = False,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        seed: int = 42,
        encoding: str = "utf-8",
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        mixup: dict | None = None,
        cache: bool = True,
        cache_dir: str | None = None,
        spec_augment: dict | None = None,
        long_clips: str = "split",
        max_seconds: float | None = None,
    ) -> None:
        super().__init__(augment, balance, classes, bad_files, folds, fold, val_fraction, test_fraction, seed,
                         batch_size, num_workers, pin_memory, mixup=mixup, cache=cache, cache_dir=cache_dir)
        self.path, self.table, self.encoding = path, table, encoding
        self.file_column, self.label_column = file_column, label_column
        self.group_column, self.split_column = group_column, split_column
        self.metadata_columns = list(metadata_columns or [])
        self.label_map = dict(label_map or {})
        frame = self._listing()
        self.root = Path(root) if root else Path(path).parent
        frame["path"] = [str(resolve(self.root, f)) for f in frame["_id"]]
        self.modality = table_modality(frame, file_column, str(path))
        if self.modality == "audio":  # augment, spec_augment, long_clips, max_seconds: lokal.data.audio_files
            self.audio = audio_files(path, augment, spec_augment, long_clips, max_seconds, mixup)
        self._prepare(frame, str(path))

    def _listing(self) -> pd.DataFrame:
        """The table's rows with the columns the module reads, tagged like a text table's."""
        frame = read_table(self.path, self.table, self.encoding)
        columns = wanted_columns({"file_column": self.file_column, "label_column": self.label_column},
                                 self.group_column, self.split_column, self.metadata_columns)
        require_columns(frame, columns, self.path)
        if frame.empty:
            raise LokalError(f"{self.path}: the table has no rows; add one row per file")
        frame = frame[list(dict.fromkeys(columns.values()))].assign(_row=range(len(frame)))
        require_values(frame, {"file_column": self.file_column, "label_column": self.label_column}, self.path)
        frame = tag_rows(frame, self.label_column, self.group_column, self.split_column, str(self.path),
                         self.label_map)
        return frame.assign(_id=frame[self.file_column].astype(str).str.strip())


def audio_files(path, augment: dict | None, spec_augment: dict | None, long_clips: str,
                max_seconds: float | None, mixup: dict | None):
    """The audio settings of a table of recordings (image-only augment keys are refused by name
    when training starts, so `lokal audit` still reads the table with file_table.yaml's defaults)."""
    from lokal.data.audio_files import AudioFiles

    if mixup:
        raise LokalError(f"{path} lists audio files: data.mixup mixes images; set data.mixup=null")
    return AudioFiles(augment, spec_augment, long_clips, max_seconds)


def resolve(root: Path, file: str) -> Path:
    """A path as written in the table: absolute as is, relative against `root`."""
    path = Path(file).expanduser()
    return (path if path.is_absolute() else root / path).absolute()


def table_modality(frame: pd.DataFrame, file_column: str, where: str) -> str:
    """'image' or 'audio' from the extensions; a table mixing both is an error, and files
    with other extensions are left to the bad-file check (it names each)."""
    kinds = frame["path"].map(modality_of)
    found = sorted(set(kinds.dropna()))
    if len(found) > 1:
        examples = {kind: frame["_id"][kinds == kind].iloc[0] for kind in found}
        raise LokalError(f"{where}: column {file_column!r} mixes audio and image files (e.g. {examples}); "
                         "put each modality in its own table")
    if not found:
        raise LokalError(f"{where}: no file in column {file_column!r} (e.g. {frame['_id'].iloc[0]!r}) ends in an "
                         f"image or audio extension ({', '.join(IMAGE_EXTENSIONS + AUDIO_EXTENSIONS)}); "
                         "check data.file_column")
    return found[0]
