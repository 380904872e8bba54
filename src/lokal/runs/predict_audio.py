"""`lokal predict` on recordings: transcripts from a speech-recognition run, class probabilities
from an audio classifier.

Recordings are read as training reads them (`lokal.data.audio.load_audio`: soundfile, mono, 16 kHz)
and turned into log-mel features by the model's own feature extractor. Every file's header is
checked before any is decoded, so all bad files are named in one message. A recording longer
than the model's window (30 s for Whisper) is cut into pieces: for transcripts at the quietest
moment of the last half of each window (a pause between words, where there is one), the pieces'
transcripts joined in order; for classes into training's equal chunks, their probabilities averaged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from lokal.data.audio import SAMPLE_RATE, audio_problem, load_audio, split_chunks
from lokal.errors import LokalError

log = logging.getLogger(__name__)

AUDIO_INPUTS = ("audio files (wav, flac, ogg, mp3, aiff), folders of them, or a table with a column of their "
                "paths (--file-column)")
SKIP_HINT = "pass --skip-bad to leave out unreadable recordings"
HOP = SAMPLE_RATE // 100  # 10 ms: the loudness is measured per hop when looking for a pause
PAUSE = 10  # hops: the quietest 100 ms, not a single quiet 10 ms inside a word (a stop consonant)


class Piece(NamedTuple):
    """One window's worth of a recording: `file` indexes the inputs; `last` marks its final piece."""

    file: int
    audio: np.ndarray  # (samples,) 16 kHz mono
    seconds: float  # the whole recording's length
    last: bool


# -- which files can be read ---------------------------------------------------------------------
def usable(paths: list[str], skip_bad: bool = False) -> list[bool]:
    """Check every file's header (no decoding): a LokalError naming each bad one and why, or with
    `skip_bad` a warning per file; True where a file can be read."""
    reasons = [audio_problem(p) if Path(p).is_file() else "file not found" for p in paths]
    bad = [(p, r) for p, r in zip(paths, reasons, strict=True) if r]
    if bad and not skip_bad:
        lines = [f"  {path}: {reason}" for path, reason in bad[:10]]
        more = [f"  ... and {len(bad) - 10} more"] if len(bad) > 10 else []
        raise LokalError("\n".join([f"{len(bad)} unreadable recording(s):", *lines, *more,
                                    f"replace or remove them, or {SKIP_HINT}"]))
    for path, reason in bad:
        log.warning("%s: %s; left out (--skip-bad)", path, reason)
    return [r is None for r in reasons]


def read(path: str, skip_bad: bool = False) -> np.ndarray | None:
    """16 kHz mono samples; a file whose header passed but whose samples cannot be decoded (cut
    off, NaN) stops with its name, or with `skip_bad` is left out (None)."""
    try:
        return load_audio(path)
    except LokalError as err:
        if not skip_bad:
            raise LokalError(f"{err}; or {SKIP_HINT}") from None
        log.warning("%s; left out (--skip-bad)", err)
        return None


def recordings(paths: list[str], skip_bad: bool = False, group: int = 8) -> Iterator[tuple[int, np.ndarray]]:
    """(input index, samples) in input order, `group` files decoded at a time in threads
    (libsndfile and scipy release the GIL); bad files are named first, or skipped."""
    keep = usable(paths, skip_bad)
    wanted = [i for i, ok in enumerate(keep) if ok]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(wanted), group):
            index = wanted[start:start + group]
            for i, audio in zip(index, pool.map(lambda i: read(paths[i], skip_bad), index), strict=True):
                if audio is not None:
                    yield i, audio


# -- cutting long recordings -----------------------------------------------------------------------
def speech_bounds(audio: np.ndarray, window: int) -> list[tuple[int, int]]:
    """(start, end) sample bounds of pieces of at most `window` samples, in order. Each cut falls at
    the quietest 100 ms in the last half of the window: a pause between words where the speaker
    made one, so few words are cut in two (a transcript cannot be mended across a cut), and a
    plain window's worth where they did not. Pieces of silence are left out: Whisper invents
    words for silence ("Thank you.")."""
    if len(audio) <= window:
        return [(0, len(audio))]
    power = np.square(audio[: len(audio) // HOP * HOP].reshape(-1, HOP)).mean(axis=1)  # (hops,)
    loudness = np.convolve(power, np.ones(PAUSE) / PAUSE, mode="same")  # mean over the 100 ms around each hop
    cuts, start = [], 0
    while len(audio) - start > window:
        low, high = (start + window // 2) // HOP, (start + window) // HOP
        start = (low + int(np.argmin(loudness[low:high]))) * HOP
        cuts.append(start)
    bounds = list(zip([0, *cuts], [*cuts, len(audio)], strict=True))
    return [(s, e) for s, e in bounds if not silent(loudness[s // HOP: e // HOP], loudness.max())]


def silent(loudness: np.ndarray, loudest: float) -> bool:
    """No 100 ms in the piece within 40 dB of the recording's loudest: nothing said in it."""
    return loudness.size == 0 or loudness.max() < loudest * 1e-4


def pieces(records: Iterable[tuple[int, np.ndarray]], cut: Callable[[np.ndarray], list[np.ndarray]],
           batch_size: int) -> Iterator[list[Piece]]:
    """Batches of `batch_size` pieces across recordings, in input order."""
    batch: list[Piece] = []
    for index, audio in records:
        parts = cut(audio)
        for k, part in enumerate(parts):
            batch.append(Piece(index, part, len(audio) / SAMPLE_RATE, k == len(parts) - 1))
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def window_of(model, max_seconds: float | None = None) -> int:
    """Samples the model hears at once: its feature extractor's window, or less (data.max_seconds)."""
    window = int(model.feature_extractor.n_samples)
    return min(window, int(max_seconds * SAMPLE_RATE)) if max_seconds else window


def features(model, batch: list[Piece], mask: bool = False) -> dict:
    """The model's log-mel of each piece, as training computes it per item (B, mels, frames); with
    `mask` the frames that hold audio (B, frames), over which the classifier pools."""
    import torch

    encoded = [model.feature_extractor(p.audio, sampling_rate=SAMPLE_RATE, return_tensors="np",
                                       return_attention_mask=mask) for p in batch]
    out = {"input_features": torch.from_numpy(np.stack([e.input_features[0] for e in encoded]))}
    if mask:
        out["attention_mask"] = torch.from_numpy(np.stack([e.attention_mask[0] for e in encoded]))
    return out


def progress_bar():
    """On stderr, gone when done: stdout keeps the table."""
    from rich.console import Console
    from rich.progress import Progress

    return Progress(console=Console(stderr=True), transient=True)


# -- speech recognition ----------------------------------------------------------------------------
def transcripts(model, ids: list[str], paths: list[str], batch_size: int = 8, device: str = "cpu",
                skip_bad: bool = False) -> pd.DataFrame:
    """One row per readable recording, in input order: id, file, seconds, pieces (windows it was
    cut into), text (the pieces' greedy transcripts joined by spaces)."""
    import torch

    heard: dict[int, list[str]] = {}
    seconds: dict[int, float] = {}
    model = model.to(device).eval()
    window = window_of(model)
    with progress_bar() as progress, torch.inference_mode():
        task = progress.add_task("transcribing", total=len(paths))
        for batch in pieces(recordings(paths, skip_bad), lambda a: [a[s:e] for s, e in speech_bounds(a, window)],
                            batch_size):
            texts = model.transcribe(features(model, batch)["input_features"].to(device))
            for piece, text in zip(batch, texts, strict=True):
                heard.setdefault(piece.file, []).append(text)
                seconds[piece.file] = piece.seconds
            progress.advance(task, sum(p.last for p in batch))
    return pd.DataFrame({"id": [ids[i] for i in heard], "file": [paths[i] for i in heard],
                         "seconds": [round(seconds[i], 3) for i in heard],
                         "pieces": [len(heard[i]) for i in heard],
                         "text": [" ".join(t for t in heard[i] if t) for i in heard]})


# -- audio classification --------------------------------------------------------------------------
def class_probabilities(model, paths: list[str], classes: int, max_seconds: float | None = None,
                        batch_size: int = 16, device: str = "cpu", skip_bad: bool = False,
                        sigmoid: bool = False) -> np.ndarray:
    """(N, classes) probabilities in input order (softmax, or a sigmoid per label for multi-label
    runs); NaN rows for recordings left out. A recording longer than the window is cut into
    training's equal chunks (`split_chunks`) and its probabilities are the mean of theirs."""
    import torch

    window = window_of(model, max_seconds)
    total = np.zeros((len(paths), classes), dtype=np.float64)
    counts = np.zeros(len(paths))
    model = model.to(device).eval()
    with progress_bar() as progress, torch.inference_mode():
        task = progress.add_task("predicting", total=len(paths))
        for batch in pieces(recordings(paths, skip_bad), lambda a: split_chunks(a, window), batch_size):
            logits = model({k: v.to(device) for k, v in features(model, batch, mask=True).items()}).float()
            probs = (logits.sigmoid() if sigmoid else logits.softmax(-1)).cpu().numpy()
            index = [p.file for p in batch]
            np.add.at(total, index, probs)
            np.add.at(counts, index, 1)
            progress.advance(task, sum(p.last for p in batch))
    with np.errstate(invalid="ignore"):
        return (total / counts[:, None]).astype(np.float32)  # 0/0: NaN for the files left out


def print_transcripts(frame: pd.DataFrame, total: int, out: Path, shown: int = 10) -> None:
    """The first transcripts and where all of them went."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"lokal predict: {len(frame):,} of {total:,} recordings transcribed", header_style="bold")
    for column in ("id", "seconds", "text"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    for row in frame.head(shown).itertuples(index=False):  # transcripts are model output: escaped
        table.add_row(escape(str(row.id)), f"{row.seconds:.1f}", escape(row.text))
    if len(frame) > shown:
        table.add_row(f"... {len(frame) - shown:,} more", "", "")
    Console().print(table)
    cut = int((frame["pieces"] > 1).sum())
    if cut:
        print(f"{cut:,} recording(s) longer than the model's window: cut at pauses, their pieces' transcripts joined")
    print(f"written to {out}")
