"""General speech for the forgetting meter of audio models: lokal's general Indonesian sentences
(assets/general_id.txt, also the text models' reference) read by espeak-ng (Debian's
`espeak-ng`; what it speaks is free to use), built once into the cache. Synthetic speech is far
from a user's recordings on purpose: a reference must lie outside the task's own data."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from lokal.errors import LokalError
from lokal.io import cached_folder, read_lines
from lokal.paths import CACHE_DIR, GENERAL_TEXTS

FOLDER = "general-speech-id"
INSTALL = ("install espeak-ng (sudo apt-get install espeak-ng) for the default reference, or set "
           "evaluation.forgetting_reference=DIR to a folder of recordings (wav, flac, mp3...) of general speech")


def general_speech() -> Path:
    """A folder of wav files, one per sentence of general_id.txt; `complete` marks it whole."""
    return cached_folder(CACHE_DIR / FOLDER, "complete", synthesize)


def synthesize(folder: Path) -> None:
    if shutil.which("espeak-ng") is None:
        raise LokalError(f"evaluation.forgetting on an audio model needs general speech to compare on: {INSTALL}")
    folder.mkdir(parents=True, exist_ok=True)
    sentences = read_lines(GENERAL_TEXTS)
    for i, sentence in enumerate(sentences):
        done = subprocess.run(["espeak-ng", "-v", "id", "-w", str(folder / f"{i:03d}.wav"), sentence],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise LokalError(f"espeak-ng failed ({done.stderr.strip()[:200]}): {INSTALL}")
    (folder / "complete").write_text(f"{len(sentences)}\n")
