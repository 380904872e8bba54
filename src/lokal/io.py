"""Atomic file writes: a killed run never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary sibling, then rename it onto `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # unique per writer
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def write_folder_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` to fill a temporary sibling folder, then publish it whole with one rename.
    If another process published `target` first, its folder stands."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # unique per writer
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        os.replace(tmp, target)  # fails onto a non-empty folder
    except OSError:
        if not (target.is_dir() and any(target.iterdir())):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def cached_folder(target: Path, complete: str, build: Callable[[Path], None]) -> Path:
    """`target`, built by `build(tmp)` and published whole (write_folder_atomically) unless it
    holds `complete`, a file every complete folder has. Published folders are whole; one without
    it (left by an interrupted, non-atomic build of an older lokal) is replaced."""
    target = Path(target)
    if not (target / complete).exists():
        shutil.rmtree(target, ignore_errors=True)
        write_folder_atomically(target, build)
    return target


def check_writable(target: Path, what: str = "--out") -> Path:
    """Refuse, before any work, an output whose folder cannot be written (read-only, another
    user's). A real probe file, not os.access: root passes os.access on read-only mounts too."""
    import tempfile

    from lokal.errors import LokalError

    target = Path(target).expanduser()
    existing = next(p for p in [target, *target.parents] if p.exists())
    folder = existing if existing.is_dir() else existing.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise LokalError(f"{what} {target}: cannot write in {folder} ({err.strerror}); give a folder you can "
                         "write to") from None
    return target


def read_lines(path: Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_text(target: Path, text: str) -> Path:
    return write_atomically(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(target: Path, data: object) -> Path:
    return write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")
