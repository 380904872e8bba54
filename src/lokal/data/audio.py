"""Audio in, 16 kHz mono float32 out: what Whisper's feature extractor expects.

No torchaudio: soundfile (libsndfile) reads wav, flac, ogg, aiff and, from libsndfile 1.1,
mp3; scipy's polyphase filter resamples. Every bad file raises a LokalError naming it, so a
broken recording stops the run before training rather than in epoch 3. Clips longer than
Whisper's 30 s window are split or skipped by `LengthPolicy`, which remembers which.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from math import ceil, gcd
from pathlib import Path

import numpy as np

from lokal.data.checks import check_audio
from lokal.errors import LokalError

SAMPLE_RATE = 16_000  # Whisper's log-mel front end is fixed at 16 kHz
MAX_SECONDS = 30.0  # Whisper's encoder sees 3000 mel frames = 30 s
FIX_HINT = "replace the file or drop its row (`lokal clean` removes unreadable files)"


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read `path` as mono float32 at `sample_rate`; a LokalError naming the file when it cannot."""
    import soundfile

    path = Path(path)
    reason = audio_problem(path)
    if reason:
        raise LokalError(f"{path}: {reason}; {FIX_HINT}")
    try:
        audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except (RuntimeError, soundfile.LibsndfileError) as err:  # e.g. cut off after the header
        raise LokalError(f"{path}: not readable audio ({err}); {FIX_HINT}") from err
    if audio.size == 0:
        raise LokalError(f"{path}: 0 seconds of audio; {FIX_HINT}")
    if not np.isfinite(audio).all():  # float wavs can hold NaN/inf; one would turn the loss to NaN
        raise LokalError(f"{path}: the samples contain NaN or infinity; {FIX_HINT}")
    return resample(audio.mean(axis=1), rate, sample_rate)


def audio_problem(path: str | Path) -> str | None:
    """Why `path` cannot be read as audio (header only, no decoding), or None: the same verdict
    `lokal audit` gives, with a 0 Hz WAV header and a missing file said as such."""
    path = Path(path)
    if not path.is_file():
        return "file not found; check the path in the transcript table or data.root"
    reason = check_audio(path)
    if reason and reason.startswith("not readable") and _wav_header_rate(path) == 0:
        return "sample rate cannot be read (the WAV header says 0 Hz)"
    return reason


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (scipy's anti-aliasing FIR); exact length len * target / rate."""
    from scipy.signal import resample_poly

    if rate == target:
        return audio.astype(np.float32, copy=False)
    step = gcd(int(rate), int(target))
    return resample_poly(audio, target // step, int(rate) // step).astype(np.float32)


def _wav_header_rate(path: Path) -> int | None:
    """The sample rate in a RIFF/WAVE 'fmt ' chunk, or None when `path` is no WAV. libsndfile
    only says "SF_INFO struct incomplete" for a 0 Hz header; this lets the error say why."""
    with path.open("rb") as f:
        head = f.read(4096)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    at = head.find(b"fmt ")
    if at < 0 or len(head) < at + 16:
        return None
    return struct.unpack_from("<I", head, at + 12)[0]  # id(4) size(4) format(2) channels(2) rate(4)


def split_chunks(audio: np.ndarray, max_samples: int) -> list[np.ndarray]:
    """Equal chunks of at most `max_samples`: a 31 s clip gives two 15.5 s halves, not 30 s
    plus a 1 s scrap that would carry the whole clip's label on almost no sound."""
    n = ceil(len(audio) / max_samples)
    return list(np.array_split(audio, n)) if n > 1 else [audio]


@dataclass
class LengthPolicy:
    """What to do with clips longer than Whisper's 30 s window.

    `split` cuts them into equal chunks (right for classification: each chunk keeps the
    label); `skip` leaves them out (the only choice for transcripts, which cannot be cut
    without word timings). Call it per file; `summary()` names the files it split or skipped.
    """

    long_clips: str = "skip"  # skip | split
    max_seconds: float = MAX_SECONDS
    sample_rate: int = SAMPLE_RATE
    split: list[str] = field(default_factory=list, init=False, repr=False)
    skipped: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.long_clips not in ("skip", "split"):
            raise LokalError(f"data.long_clips={self.long_clips!r}: use skip (leave clips over "
                             f"{self.max_seconds:g} s out) or split (cut them into chunks of at most that)")
        if self.max_seconds <= 0:
            raise LokalError(f"data.max_seconds={self.max_seconds} must be positive")

    def __call__(self, path: str | Path, audio: np.ndarray) -> list[np.ndarray]:
        """The clips to use for `path`: [audio] when short enough, else chunks or []."""
        max_samples = int(self.max_seconds * self.sample_rate)
        if len(audio) <= max_samples:
            return [audio]
        if self.long_clips == "skip":
            self.skipped.append(str(path))
            return []
        self.split.append(str(path))
        return split_chunks(audio, max_samples)

    def summary(self) -> str | None:
        """One line naming the long clips and what happened to them; None when there were none."""
        parts = [f"{verb} {len(files)} clip(s) over {self.max_seconds:g} s: {', '.join(files)}"
                 for verb, files in (("split", self.split), ("skipped", self.skipped)) if files]
        return "; ".join(parts) or None
