"""Real English speech with transcripts, offline: Asterisk's core prompts (Debian, CC-BY-SA 3.0).

Debian's `asterisk-core-sounds-en-wav` holds ~570 short studio prompts read by one speaker
(8 kHz wav); `asterisk-core-sounds-en` holds what each one says, in its doc folder as
`core-sounds-en.txt.gz`. We use the installed files when they are there and otherwise fetch
both packages with `apt-get download` + `dpkg-deb -x` (no root needed, and it works on slim
images that drop /usr/share/doc at install time).
"""

from __future__ import annotations

import csv
import gzip
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from lokal.errors import LokalError

PACKAGES = ("asterisk-core-sounds-en-wav", "asterisk-core-sounds-en")
SOUNDS = Path("usr/share/asterisk/sounds/en_US_f_Allison")
TRANSCRIPTS = Path("usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
INSTALL_HINT = (
    "run `sudo apt-get update && sudo apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en` "
    "(Debian/Ubuntu)"
)
# `[ascending tones]`, `(10 seconds of silence)`, `IAX (note: does not say "2")`: not speech.
_ANNOTATION = re.compile(r"\s*(\[[^\]]*\]|\([^)]*\))")


def asterisk_sounds(cache: Path | None = None) -> Path:
    """Folder with `wav/` (the recordings) and `transcripts.tsv` (columns file, text; file relative to it).

    Built whole in a temporary sibling and published with one rename: a fresh cache folder is
    created on demand, a killed build leaves nothing half-made, and two processes building it
    at once both end with the folder the first one published."""
    from lokal.io import cached_folder
    from lokal.paths import CACHE_DIR

    return cached_folder(Path(cache or CACHE_DIR) / "asterisk-sounds-en", "transcripts.tsv", _build_asterisk_folder)


def _build_asterisk_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    root = _installed_root() or _download(folder)
    _link_or_move(root / SOUNDS, folder / "wav")
    rows = transcript_rows((root / TRANSCRIPTS).read_bytes(), folder / "wav")
    shutil.rmtree(folder / "deb", ignore_errors=True)
    (folder / "transcripts.tsv").write_text(_tsv(rows), encoding="utf-8")  # last: the folder is complete


def transcript_rows(gz: bytes, wav: Path) -> list[tuple[str, str]]:
    """(file, text) for every prompt that has a recording and says something."""
    rows = []
    for line in gzip.decompress(gz).decode("utf-8").splitlines():
        name, sep, text = line.partition(":")
        if not sep or line.startswith(";"):
            continue
        text = " ".join(_ANNOTATION.sub("", text).split())
        if text and (wav / f"{name.strip()}.wav").exists():
            rows.append((f"wav/{name.strip()}.wav", text))
    return rows


def _tsv(rows: list[tuple[str, str]]) -> str:
    import io

    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(["file", "text"])
    writer.writerows(rows)
    return out.getvalue()


def _installed_root() -> Path | None:
    root = Path("/")
    return root if (root / SOUNDS).is_dir() and (root / TRANSCRIPTS).is_file() else None


def _download(folder: Path) -> Path:
    """Extract both packages under `folder/deb`; a LokalError saying how to install if that fails."""
    root, hint = folder / "deb", INSTALL_HINT
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise LokalError(f"the Asterisk recordings are not installed and apt-get/dpkg-deb are missing: {hint}")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        for package in PACKAGES:
            _run(["apt-get", "download", "-q", package], tmp, hint)
        for deb in Path(tmp).glob("*.deb"):
            _run(["dpkg-deb", "-x", str(deb), str(root)], tmp, hint)
    if not (root / SOUNDS).is_dir() or not (root / TRANSCRIPTS).is_file():
        raise LokalError(f"the downloaded packages lack {SOUNDS} or {TRANSCRIPTS}: {hint}")
    return root


def _run(command: list[str], cwd: str, hint: str) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise LokalError(f"`{' '.join(command)}` failed ({detail[0]}): {hint}")


def _link_or_move(source: Path, target: Path) -> None:
    if source.is_relative_to("/usr"):  # installed system-wide: point at it, copy nothing
        target.symlink_to(source)
    else:
        shutil.move(str(source), str(target))
