"""Is this file usable? One answer for training, `lokal audit` and `lokal clean`.

Each check returns None for a good file, else a short reason a user can act on
("zero bytes", "truncated image", ...). Images are decoded fully: `PIL.Image.verify`
passes a JPEG cut off halfway, and that file would crash training in epoch 3.
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # 16-bit and float greyscale (DICOM exports, X-rays)


def modality_of(path: str | Path) -> str | None:
    """'image' or 'audio' from the file extension, None for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in AUDIO_EXTENSIONS:
        return "audio"
    return None


def check_file(path: str | Path) -> str | None:
    """Why `path` cannot be used as an image or audio file, or None when it can."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return f"a symbolic link that loops or points nowhere ({path} -> {os.readlink(path)})"
    if not path.is_file():
        return "file not found"
    if path.stat().st_size == 0:
        return "zero bytes"
    kind = modality_of(path)
    if kind == "image":
        return check_image(path)
    if kind == "audio":
        return check_audio(path)
    return f"not an image or audio file (extension {path.suffix!r})"


def check_image(path: str | Path) -> str | None:
    """Decode the whole image; None when it loads."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.stat().st_size == 0:
        return "zero bytes"
    try:
        with Image.open(path) as img:
            img.load()
    except UnidentifiedImageError:
        return "not an image (PIL cannot identify it)"
    except OSError as err:  # "image file is truncated", broken PNG chunks, ...
        return f"truncated or corrupt image ({err})"
    return None


def check_audio(path: str | Path) -> str | None:
    """Read the header and count frames; None when there is sound to read."""
    import soundfile

    path = Path(path)
    if path.stat().st_size == 0:
        return "zero bytes"
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as err:
        return f"not readable audio ({err})"
    if info.frames == 0:
        return "0 seconds of audio"
    if info.samplerate <= 0:
        return "sample rate cannot be read"
    return None


def load_rgb(path: str | Path):
    """Open an image as 8-bit RGB whatever its mode: greyscale, palette, RGBA, CMYK and
    16-bit greyscale alike. PIL's own convert("RGB") clips 16-bit pixels at 255, which turns
    a 16-bit X-ray white; here they are rescaled to their own 0-255 range instead."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        if img.mode in HIGH_BIT_MODES:
            pixels = np.asarray(img, dtype=np.float32)
            low, high = float(pixels.min()), float(pixels.max())
            scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
            return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))  # transparent = white, not black
            return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
        return img.convert("RGB")
