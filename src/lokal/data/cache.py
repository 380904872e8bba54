"""On-disk caches keyed by dataset version: token ids of a table's texts, decoded images.

A key hashes everything the cached bytes depend on (file path, size and mtime; the texts;
the tokenizer and max_length; the decode size), so a changed file or setting misses the
cache instead of reading stale data. Files are written atomically (`lokal.io`): a killed run
leaves either a whole cache file or none, and a file that does not load is rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lokal.io import write_atomically

log = logging.getLogger(__name__)
VERSION = "1"  # bump when the stored layout changes


def digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


def file_identity(path: str | Path) -> str:
    """path + size + mtime: a re-saved or edited file gets a new identity, without reading it."""
    path = Path(os.path.realpath(path))  # not Path.resolve: it raises RuntimeError on a symlink loop
    stat = path.stat()
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def tokenizer_identity(tokenizer) -> str:
    """What the token ids depend on: the tokenizer's source, class and vocabulary size, and the
    transformers version (a tokenizer fix may change ids)."""
    import transformers

    return f"{tokenizer.name_or_path}|{type(tokenizer).__name__}|{len(tokenizer)}|{transformers.__version__}"


# -- texts ---------------------------------------------------------------------------------------
def encode_texts(tokenizer, texts: Sequence[str], max_length: int, folder: Path | None,
                 source: str = "") -> list[dict[str, list[int]]]:
    """{"input_ids", "attention_mask"} per text, unpadded; read from `folder` when a cache
    file for exactly these texts, tokenizer and max_length exists, else tokenised and stored.
    `source` is the data file's identity (file_identity). folder None: no cache."""
    if folder is None:
        return tokenize(tokenizer, texts, max_length)
    key = digest(VERSION, source, tokenizer_identity(tokenizer), max_length, digest(*texts), len(texts))
    file = Path(folder) / "tokens" / f"{key}.npz"
    rows = read_tokens(file, len(texts))
    if rows is None:
        rows = tokenize(tokenizer, texts, max_length)
        write_atomically(file, lambda tmp: write_tokens(tmp, rows))
    return rows


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> list[dict[str, list[int]]]:
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    return [{"input_ids": ids, "attention_mask": mask}
            for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)]


def write_tokens(target: Path, rows: list[dict[str, list[int]]]) -> None:
    """One flat array per field plus offsets: loads in milliseconds, no pickle."""
    lengths = [len(r["input_ids"]) for r in rows]
    flat = {name: np.fromiter((t for r in rows for t in r[name]), dtype=np.int32) for name in rows[0]} if rows else {}
    with open(target, "wb") as f:  # a file object: np.savez would append .npz to a path
        np.savez(f, offsets=np.cumsum([0, *lengths]), **flat)


def read_tokens(file: Path, expected_rows: int) -> list[dict[str, list[int]]] | None:
    """The cached rows, or None when the file is missing or does not load whole."""
    try:
        with np.load(file, allow_pickle=False) as data:
            offsets, fields = data["offsets"], {k: data[k] for k in data.files if k != "offsets"}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # truncated or corrupt: rebuild
        log.warning("token cache %s unreadable (%s): tokenising again", file, err)
        return None
    if len(offsets) != expected_rows + 1 or any(len(v) != offsets[-1] for v in fields.values()):
        return None
    bounds = offsets.tolist()
    columns = {k: v.tolist() for k, v in fields.items()}
    return [{k: col[a:b] for k, col in columns.items()} for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# -- images ------------------------------------------------------------------------------------
def eval_resize(data_config: dict) -> Callable | None:
    """The evaluation transform's first step when it resizes the shorter side (timm's default
    centre-crop mode: 256 for a 224 input at crop_pct 0.875); None for other modes."""
    import timm
    from torchvision import transforms

    first = timm.data.create_transform(**data_config, is_training=False).transforms[0]
    return first if isinstance(first, transforms.Resize) and isinstance(first.size, int) else None


class ImageCache:
    """Each image decoded once (lokal.data.checks.load_rgb), shrunk to the size evaluation
    resizes it to anyway, stored as a uint8 .npy named by its file identity: (H, W, 3), or
    (H, W) when the three channels are equal (X-rays: a third of the disk, the same pixels).

    Evaluation batches from the cache are bit-identical to decoding the file (the stored image
    went through the very Resize the eval transform starts with, and PIL skips a resize to the
    same size); training crops are taken from the shrunk image. Images already smaller are
    stored as decoded, never enlarged. Picklable, so loader workers share it; two workers
    writing one file is safe (atomic rename of identical bytes).
    """

    def __init__(self, folder: Path, resize: Callable | None) -> None:
        self.folder, self.resize = Path(folder) / "images", resize
        self.tag = digest(VERSION, getattr(resize, "size", None), getattr(resize, "interpolation", None))

    def file_for(self, path: Path) -> Path:
        return self.folder / f"{digest(file_identity(path), self.tag)}.npy"

    def load(self, path: Path):
        """The image as PIL RGB, from the cache when it holds this version of the file."""
        from PIL import Image

        file = self.file_for(path)
        pixels = read_pixels(file)
        if pixels is None:
            pixels = grey_if_equal(np.asarray(self.decode(path)))
            write_atomically(file, lambda tmp: write_pixels(tmp, pixels))
        return Image.fromarray(pixels).convert("RGB")

    def decode(self, path: Path):
        from lokal.data.checks import load_rgb

        image = load_rgb(path)
        if self.resize is not None and min(image.size) > self.resize.size:
            image = self.resize(image)
        return image


def grey_if_equal(pixels: np.ndarray) -> np.ndarray:
    """(H, W) when R == G == B everywhere (greyscale scans loaded as RGB), else unchanged."""
    red = pixels[..., 0]
    return red if (pixels == red[..., None]).all() else pixels


def write_pixels(target: Path, pixels: np.ndarray) -> None:
    with open(target, "wb") as f:  # a file object: np.save would append .npy to a path
        np.save(f, pixels, allow_pickle=False)


def read_pixels(file: Path) -> np.ndarray | None:
    """The stored uint8 (H, W, 3) or (H, W) array, or None when missing, truncated or not an image."""
    try:
        pixels = np.load(file, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as err:
        log.warning("image cache %s unreadable (%s): decoding again", file, err)
        return None
    if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        return None
    return pixels


def cache_size_mb(folder: Path) -> float:
    """Disk used by a cache folder (for logs and the benchmark)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**20


def quiet_tokenizer_fork() -> None:
    """Loader workers that tokenise (text augmentation): HF tokenizers print a warning in
    every forked worker and turn their threads off there anyway; turn them off up front."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
