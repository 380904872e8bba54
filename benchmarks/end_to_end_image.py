"""The whole image run, as a user waits for it: lokal's `train.py` against a plain PyTorch loop
with timm's recipe as its docs teach it, on the same split, weights, trainable parameters,
augmentation, epochs, batch, learning rate and schedule, back to back (A B per seed), each run in
its own process.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/end_to_end_image.py [--seeds 42 1 2] [--repeats 1]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/end_to_end_image.py --quick   # a 2-step smoke run of both

The data: scikit-learn's digits (1,797 real 8x8 handwritten digits, UCI; ships with the package),
split stratified by seed 60/20/20 and written as DIR/{train,val,test}/DIGIT/*.png at 64 px
greyscale. 64 px, not 32: EfficientNet-Lite0 downsamples 32x, so 32 px leaves a 1x1 map from the
second-to-last stage on, and on 2 CPU cores a 64 px run is still about a minute (32 px steps are
not faster: at that size a step is per-layer overhead, ~0.1 s either way).

Both sides: timm's tf_efficientnet_lite0 with lokal's shipped ImageNet weights and a new 10-class
head; partial fine-tuning of the last 2 of its 7 blocks (blocks.5, blocks.6) plus conv_head, bn2
and the classifier; timm's `resolve_data_config` + `create_transform` at 64 px (bicubic, mean/std
0.5; evaluation: resize 73 + centre crop 64) with training augmentation reduced to random resized
crops of scale 0.8-1 (no flips, no colour jitter, no RandAugment: a mirrored digit is another
symbol); cross-entropy; AdamW lr 1e-3 weight decay 0.01 on every trainable parameter; 10% linear
warmup then cosine to 0 per step; batch 32; 5 epochs; validation accuracy after every epoch; the
best-validation weights tested once at the end.

Reported per run: wall time (process start to exit), training time (the epoch loop with its
validation, as each side reports it), time to the first optimizer step (from process start; None
until lokal records it), peak resident memory, trainable parameters, test accuracy; then means and
the ratio lokal / plain. Prints a Markdown table, and writes every row to --out (JSON) when given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import ab

ROOT = ab.ROOT
SETTINGS = {"image_size": 64, "epochs": 5, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.01, "warmup": 0.1,
            "last_n_blocks": 2, "fractions": (0.6, 0.2, 0.2)}
# timm.data.create_transform options for training images, on both sides
AUGMENT = {"hflip": 0.0, "color_jitter": 0.0, "scale": (0.8, 1.0)}
QUICK = {"epochs": 1, "max_steps": 2, "eval_batches": 2}
SIDES = ("plain", "lokal")


def write_digits(root: Path, seed: int, size: int = SETTINGS["image_size"]) -> dict[str, int]:
    """The digits split stratified by `seed` into train/val/test, as size x size greyscale PNGs."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    rows = np.arange(len(digits.target))
    _, val_share, test_share = SETTINGS["fractions"]
    train, rest = train_test_split(rows, test_size=val_share + test_share, stratify=digits.target, random_state=seed)
    val, test = train_test_split(rest, test_size=test_share / (val_share + test_share),
                                 stratify=digits.target[rest], random_state=seed)
    for split, part in (("train", train), ("val", val), ("test", test)):
        for i in part:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)  # 0..16 ink levels -> 8 bit
            Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC).save(folder / f"{i}.png")
    return {"train": len(train), "val": len(val), "test": len(test)}


def lokal_command(data: Path, run_dir: Path, seed: int, quick: bool) -> list[str]:
    s = SETTINGS
    augment = ",".join(f"{k}:[{','.join(map(str, v))}]" if isinstance(v, tuple) else f"{k}:{v}"
                       for k, v in AUGMENT.items())
    limits = [f"trainer.max_steps={QUICK['max_steps']}", f"trainer.limit_val_batches={QUICK['eval_batches']}",
              f"trainer.limit_test_batches={QUICK['eval_batches']}"] if quick else []
    return [sys.executable, str(ROOT / "train.py"), "data=image_folder", f"data.root={data}",
            "model=efficientnet_lite0", f"model.image_size={s['image_size']}", "method=partial",
            f"method.last_n_blocks={s['last_n_blocks']}", "method.unfreeze_every=0", f"method.lr={s['lr']}",
            "optimizer=adamw", f"optimizer.weight_decay={s['weight_decay']}", "scheduler=cosine",
            f"scheduler.warmup_ratio={s['warmup']}", "scheduler.min_lr_ratio=0.0", "loss=cross_entropy",
            "~data.augment", f"+data.augment={{{augment}}}", f"data.batch_size={s['batch_size']}",
            f"trainer.max_epochs={QUICK['epochs'] if quick else s['epochs']}", f"seed={seed}",
            "trainer.enable_progress_bar=false", "evaluation.plots=false", f"hydra.run.dir={run_dir}",
            "resume=false", *limits]


def run_lokal(data: Path, work: Path, seed: int, quick: bool) -> dict:
    """One `train.py` process; its decoded-image cache in `work` (cold for each new split, as a
    user's first run; ~/.cache is left alone)."""
    run_dir = work / f"lokal-{time.time_ns()}"
    env = os.environ | {"LOKAL_DATA_CACHE": str(work / "lokal-cache")}
    return ab.run_train_py(lokal_command(data, run_dir, seed, quick), run_dir, seed, env=env)


def run_plain(data: Path, work: Path, seed: int, quick: bool) -> dict:
    out = work / f"plain-{time.time_ns()}"
    args = [str(data), str(out), str(seed), *(["--quick"] if quick else [])]
    return ab.run_child(__file__, "--plain-child", args, "plain", seed, out)


def plain_model(classes: int):
    """timm's EfficientNet-Lite0 from the shipped weights file, the last blocks and head trainable."""
    import timm

    from lokal.assets.shipped import efficientnet_lite0

    net = timm.create_model("tf_efficientnet_lite0", pretrained=True, num_classes=classes,
                            pretrained_cfg_overlay={"file": str(efficientnet_lite0())})
    blocks = [f"blocks.{i}." for i in range(len(net.blocks))][-SETTINGS["last_n_blocks"]:]
    trainable = (*blocks, "conv_head.", "bn2.", "classifier.")
    for name, param in net.named_parameters():
        param.requires_grad = name.startswith(trainable)
    return net


def plain_loaders(data: Path, net, seed: int) -> dict:
    """torchvision ImageFolders with timm's transforms for this model at the benchmark's size."""
    import timm
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    config = timm.data.resolve_data_config({"input_size": (3, SETTINGS["image_size"], SETTINGS["image_size"])},
                                           model=net)
    loaders = {}
    for split in ("train", "val", "test"):
        train = split == "train"
        transform = timm.data.create_transform(**config, is_training=train, **(AUGMENT if train else {}))
        folder = ImageFolder(str(data / split), transform=transform)  # PIL loader: RGB, as lokal
        loaders[split] = DataLoader(folder, batch_size=SETTINGS["batch_size"], shuffle=train,
                                    generator=torch.Generator().manual_seed(seed) if train else None)
    return loaders


def accuracy(net, loader, batches: int | None = None) -> float:
    import torch

    net.eval()
    right = seen = 0
    with torch.inference_mode():
        for i, (images, labels) in enumerate(loader):
            if batches is not None and i == batches:
                break
            right += (net(images).argmax(-1) == labels).sum().item()
            seen += len(labels)
    net.train()
    return right / seen


def warmup_cosine(optimizer, total: int):
    """10% linear warmup, then cosine to 0, per step (the recipe lokal's scheduler=cosine names)."""
    import math

    import torch

    warmup = int(total * SETTINGS["warmup"])

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fit(net, loaders: dict, quick: bool) -> tuple[dict, float]:
    """The epoch loop: train, validate, keep the best-validation weights. Returns them and the
    wall-clock time of the first optimizer step."""
    import copy

    import torch

    epochs = QUICK["epochs"] if quick else SETTINGS["epochs"]
    total = QUICK["max_steps"] if quick else epochs * len(loaders["train"])
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=SETTINGS["lr"],
                                  weight_decay=SETTINGS["weight_decay"])
    scheduler = warmup_cosine(optimizer, total)
    best, best_state, first, step = -1.0, None, None, 0
    net.train()
    for _ in range(epochs):
        for images, labels in loaders["train"]:
            loss = torch.nn.functional.cross_entropy(net(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            first, step = first or time.time(), step + 1
            if step == total:
                break
        score = accuracy(net, loaders["val"], QUICK["eval_batches"] if quick else None)
        if score > best:
            best, best_state = score, copy.deepcopy(net.state_dict())
    return best_state, first


def plain_child(data: Path, out: Path, seed: int, quick: bool) -> None:
    """A plain PyTorch loop with timm's recipe, in this process."""
    import resource

    import torch

    torch.manual_seed(seed)
    classes = len([d for d in (data / "train").iterdir() if d.is_dir()])
    net = plain_model(classes)
    loaders = plain_loaders(data, net, seed)
    start = time.perf_counter()
    best_state, first = fit(net, loaders, quick)
    train_s = time.perf_counter() - start
    net.load_state_dict(best_state)
    test = accuracy(net, loaders["test"], QUICK["eval_batches"] if quick else None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({
        "train_s": train_s, "first_step_at": first, "test_accuracy": test,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--repeats", type=int, default=1, help="A B pairs per seed")
    parser.add_argument("--quick", action="store_true", help="2 training steps each: checks the harness")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plain-child", nargs=3, metavar=("DATA", "OUT", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_child:
        data, out, seed = args.plain_child
        return plain_child(Path(data), Path(out), int(seed), args.quick)
    rows = ab.back_to_back(args.seeds, args.repeats, write_digits,
                           [partial(side, quick=args.quick) for side in (run_lokal, run_plain)],
                           prefix="lokal-e2e-image-")
    ab.report(rows, SIDES, ("plain",), args.out)

if __name__ == "__main__":
    main()
