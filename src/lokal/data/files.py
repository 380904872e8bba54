"""A table of file paths and labels (CSV, TSV, JSONL, Parquet, SQLite) as a LightningDataModule.

Images train exactly like an image folder, audio files exactly like an audio folder: the same
checks, splits and loaders (lokal.data.labelled_files), with `ImageFiles` or `AudioFiles` for
what the model reads.
"""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd

from lokal.data.audio_files import AudioFiles
from lokal.data.checks import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, modality_of
from lokal.data.image import ImageFiles
from lokal.data.labelled_files import LabelledFilesDataModule
from lokal.data.settings import (
    CacheSettings,
    DataSettings,
    LabelSettings,
    LoaderSettings,
    SplitFileSettings,
    SplitSettings,
)
from lokal.data.tables import describe_source, read_rows, require_values, tag_rows, wanted_columns, with_paths
from lokal.errors import LokalError


class FileTableDataModule(LabelledFilesDataModule):
    """One row per file: a path (relative to `root`, by default the table's folder) and a
    label, plus optional group, metadata and split columns. The modality (image or audio)
    comes from the files' extensions: `augment` and `mixup` are `ImageFiles` options for
    images; `augment`, `spec_augment`, `long_clips` and `max_seconds` `AudioFiles` options for
    recordings. One table per split works as for text tables (`data.path=DIR`, `data.train_path`)."""

    settings = DataSettings(SplitSettings(), LoaderSettings(), CacheSettings(), LabelSettings(), SplitFileSettings())

    def __init__(
        self,
        path: str | None,
        file_column: str = "file",
        label_column: str = "label",
        root: str | None = None,
        table: str | None = None,
        label_map: dict | None = None,
        group_column: str | None = None,
        metadata_columns: list[str] | None = None,
        split_column: str | None = None,
        bad_files: str = "fail",
        encoding: str = "utf-8",
        augment: dict | None = None,
        mixup: dict | None = None,
        spec_augment: dict | None = None,
        long_clips: str = "split",
        max_seconds: float | None = None,
        **options,
    ) -> None:
        """`options`: the shared settings (`settings`: split, loader, cache, labels and split-table keys)."""
        super().__init__(bad_files, **options)
        self.path, self.table, self.encoding = path, table, encoding
        self.where = describe_source(path, asdict(self.settings.files))
        self.file_column, self.label_column = file_column, label_column
        self.group_column, self.split_column = group_column, split_column
        self.metadata_columns = list(metadata_columns or [])
        self.label_map = dict(label_map or {})
        self.root, frame = with_paths(self._listing(), root, path or self.settings.files.train_path)
        if table_modality(frame, file_column, self.where) == "image":
            self.content = ImageFiles(augment, mixup)
        else:
            self.content = audio_files(self.where, augment, spec_augment, long_clips, max_seconds, mixup)
        self._prepare(frame, self.where)

    def _listing(self) -> pd.DataFrame:
        """The table's rows with the columns the module reads, tagged like a text table's."""
        columns = wanted_columns({"file_column": self.file_column, "label_column": self.label_column},
                                 self.group_column, self.split_column, self.metadata_columns)
        frame = read_rows(self.path, self.table, self.encoding, columns, asdict(self.settings.files),
                          labels=(self.label_column,))
        if frame.empty:
            raise LokalError(f"{self.where}: the table has no rows; add one row per file")
        require_values(frame, {"file_column": self.file_column, "label_column": self.label_column}, self.where)
        frame = tag_rows(frame, self.label_column, self.group_column, self.split_column, self.where,
                         self.label_map)
        return frame.assign(_id=frame[self.file_column].astype(str).str.strip())


def audio_files(path, augment: dict | None, spec_augment: dict | None, long_clips: str,
                max_seconds: float | None, mixup: dict | None) -> AudioFiles:
    """What a table of recordings reads. Image-only augment keys are refused by name once the
    model is known (AudioFiles.use_model), so `lokal audit` still reads the table with
    file_table.yaml's image defaults; mixup is refused now."""
    if mixup:
        raise LokalError(f"{path} lists audio files: data.mixup mixes images; set data.mixup=null")
    return AudioFiles(augment, spec_augment, long_clips, max_seconds)


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
