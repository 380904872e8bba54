"""Labelled recordings (class folders, or a table of paths) for classification with Whisper's
encoder: the checks, classes, splits, records and loaders are those of any labelled files
(lokal.data.labelled_files); `AudioFiles` supplies what audio changes: log-mel features from
the model's own feature extractor, waveform augmentation and SpecAugment in training only,
and clips longer than the model's window split into chunks that keep the label (or skipped).
"""

from __future__ import annotations

import logging
from dataclasses import fields, replace
from math import ceil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from lokal.data.audio import SAMPLE_RATE, LengthPolicy, load_audio, split_chunks
from lokal.data.audio_augment import AudioAugment, SpecAugment
from lokal.data.checks import AUDIO_EXTENSIONS
from lokal.data.labelled_files import FolderDataModule
from lokal.data.settings import LoaderSettings
from lokal.errors import LokalError

log = logging.getLogger(__name__)

LAYOUT_HELP = """expected one of these layouts:
  DIR/train/CLASS/*.wav   (+ optional DIR/val/CLASS/, DIR/test/CLASS/; missing splits are carved from train)
  DIR/CLASS/*.wav         (split stratified by seed)
with wav, flac, ogg, mp3 or aiff files, e.g. DIR/yes/001.wav, DIR/no/002.flac"""
AUGMENT_EXAMPLE = "data.augment='{speeds: [0.9, 1.0, 1.1], shift_seconds: 0.1, snr_db: [10, 30]}'"


class AudioFiles:
    """What labelled audio files need: the feature extractor (from the model), augmentation for
    training clips, and a length policy fitted to the model's window.

    Args:
        augment: `AudioAugment` options (speeds, shift_seconds, snr_db); None: none.
        spec_augment: `SpecAugment` options (freq_width, freq_masks, time_width, time_masks); None: none.
        long_clips: split (each chunk keeps the clip's label: right for classification) or skip.
        max_seconds: the longest clip used whole; None: the model's window (30 s for Whisper).
    """

    modality = "audio"

    def __init__(self, augment: dict | None, spec_augment: dict | None, long_clips: str = "split",
                 max_seconds: float | None = None) -> None:
        # checked in use_model: `lokal audit data=file_table` builds an audio table with the image defaults
        self.augment_options, self.spec_augment_options = dict(augment or {}), dict(spec_augment or {})
        self.augment: AudioAugment | None = None
        self.spec_augment: SpecAugment | None = None
        LengthPolicy(long_clips)  # a misspelled policy fails now, not once the model has loaded
        self.long_clips, self.max_seconds = long_clips, max_seconds
        self.feature_extractor = None
        self.policy: LengthPolicy | None = None
        self.stats: dict[str, int] = {}

    def use_model(self, model) -> None:
        """Whisper's log-mel front end; the length policy gets the model's window (a 2 s test
        model truncates everything past 2 s, so longer clips must be cut for it, not at 30 s)."""
        extractor = model.feature_extractor
        window = extractor.n_samples / extractor.sampling_rate
        max_seconds = self.max_seconds or window
        if max_seconds > window:
            raise LokalError(f"data.max_seconds={max_seconds:g}: {model.name} hears at most {window:g} s; "
                             f"set data.max_seconds <= {window:g} (or null for the whole window)")
        self.feature_extractor, self.policy = extractor, LengthPolicy(self.long_clips, max_seconds)
        self.augment = _options(AudioAugment, self.augment_options, "augment")
        self.spec_augment = _options(SpecAugment, self.spec_augment_options, "spec_augment")

    def fit(self, parts: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """Rows per split after the length policy: a clip over the window becomes n rows (id
        `clip.wav#2of3`, `_chunk` 1) that stay in the clip's split, or none (skip); the
        policy names each clip, and the log says what happened."""
        fitted = {name: self._fit(part) for name, part in parts.items()}
        summary = self.policy.summary()
        if summary:
            log.warning("%s (data.long_clips=%s)", summary, self.long_clips)
        self.stats = {"long_clips_split": len(self.policy.split), "long_clips_skipped": len(self.policy.skipped)}
        return fitted

    def _fit(self, part: pd.DataFrame) -> pd.DataFrame:
        max_samples = int(self.policy.max_seconds * SAMPLE_RATE)
        chunks = np.array([ceil(resampled_length(path) / max_samples) or 1 for path in part["path"]])
        long = chunks > 1
        if self.long_clips == "skip":
            self.policy.skipped += part["_id"][long].tolist()
            return part[~long].assign(_chunk=0, _chunks=1).reset_index(drop=True)
        self.policy.split += part["_id"][long].tolist()
        rows = part.loc[part.index.repeat(chunks)].assign(_chunks=np.repeat(chunks, chunks))
        rows["_chunk"] = rows.groupby(level=0).cumcount().to_numpy()
        cut = rows["_chunks"] > 1
        rows.loc[cut, "_id"] = (rows["_id"][cut] + "#" + (rows["_chunk"][cut] + 1).astype(str) + "of"
                                + rows["_chunks"][cut].astype(str))
        return rows.reset_index(drop=True)

    def datasets(self, parts: dict[str, pd.DataFrame], classes: int = 0,
                 cache_dir: Path | None = None) -> dict[str, AudioDataset]:
        """One dataset per split (recordings are read per item, never cached); only training augments."""
        if self.feature_extractor is None:
            raise RuntimeError("call use_model(model) before setup: the log-mel features come from the model")
        max_samples = int(self.policy.max_seconds * SAMPLE_RATE)
        return {name: AudioDataset(list(zip(part["path"], part["_y"], part["_chunk"], part["_chunks"], strict=True)),
                                   self.feature_extractor, max_samples,
                                   self.augment if name == "train" else None,
                                   self.spec_augment if name == "train" else None)
                for name, part in parts.items()}

    def training_batch(self, batch: dict) -> dict:
        return batch  # augmented per clip, in the dataset


class AudioDataset(Dataset):
    """Item i: {"input_features": (mels, frames) log-mel, "attention_mask": (frames,) 1 where the
    recording is, 0 on the padding, "label", "index"} of chunk `chunk` of `chunks` of a recording
    (augmented first when training)."""

    def __init__(self, items: list[tuple[str, int, int, int]], feature_extractor, max_samples: int,
                 augment: AudioAugment | None = None, spec_augment: SpecAugment | None = None) -> None:
        self.items, self.feature_extractor, self.max_samples = items, feature_extractor, max_samples
        self.augment, self.spec_augment = augment, spec_augment

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        path, label, chunk, chunks = self.items[i]
        audio = load_audio(path)  # a LokalError naming the file when it cannot be read
        if chunks > 1:  # the same equal chunks as LengthPolicy's split
            pieces = split_chunks(audio, self.max_samples)
            audio = pieces[min(chunk, len(pieces) - 1)]
        # the training loader seeds torch per sample (lokal.data.resumable): reproducible, resumable draws
        rng = np.random.default_rng(torch.initial_seed())
        if self.augment is not None:
            audio = self.augment(audio, rng)
        # the mask marks the log-mel frames that hold the clip, not the padding up to the window:
        # the classifier averages over those alone (a 1 s clip is 1/30 of Whisper's window)
        encoded = self.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np",
                                         return_attention_mask=True)
        features = encoded.input_features[0]
        if self.spec_augment is not None:
            features = self.spec_augment(features, rng)
        return {"input_features": torch.from_numpy(features),  # (mels, frames)
                "attention_mask": torch.from_numpy(encoded.attention_mask[0]),  # (frames,)
                "label": int(label), "index": i}


class AudioFolderDataModule(FolderDataModule):
    """Recordings in class folders, split (DIR/train/CLASS/) or not (DIR/CLASS/), checked, split,
    balanced and k-folded as any labelled files are; features from the model's feature extractor.
    `augment`, `spec_augment`, `long_clips`, `max_seconds`: `AudioFiles`."""

    extensions, noun, layout_help = AUDIO_EXTENSIONS, "recordings", LAYOUT_HELP
    settings = replace(FolderDataModule.settings, loader=LoaderSettings(batch_size=16))

    def __init__(self, root: str | None, augment: dict | None = None, spec_augment: dict | None = None,
                 long_clips: str = "split", max_seconds: float | None = None, bad_files: str = "fail",
                 **options) -> None:
        """`options`: the shared settings (`settings`: split, loader, cache and labels keys)."""
        super().__init__(root, AudioFiles(augment, spec_augment, long_clips, max_seconds), bad_files, **options)


def resampled_length(path: str | Path) -> int:
    """Samples at 16 kHz from the header alone, as `load_audio` will give them (resample_poly's
    length is ceil(frames * 16000 / rate)); 0 when unreadable (bad_files=keep: loading says why)."""
    import soundfile

    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError):
        return 0
    if info.samplerate <= 0:
        return 0
    return info.frames if info.samplerate == SAMPLE_RATE else ceil(info.frames * SAMPLE_RATE / info.samplerate)


def _options(kind: type, options: dict | None, key: str):
    """`kind(**options)`, with unknown keys (e.g. an image table's hflip) named in a LokalError."""
    options = dict(options or {})
    known = [f.name for f in fields(kind) if f.name != "sample_rate"]
    unknown = sorted(set(options) - {f.name for f in fields(kind)})
    if unknown:
        example = f" e.g. {AUGMENT_EXAMPLE}" if key == "augment" else ""
        raise LokalError(f"data.{key}: {', '.join(unknown)} are not audio options; audio takes {', '.join(known)},"
                         f"{example}, or data.{key}=null for none")
    return kind(**options)
