"""Every method on MiniLM-L6, EfficientNet-Lite0 and Whisper tiny.en: seconds per training step
under lokal (ClassifierModule, or SpeechModule for Whisper, in a Lightning Trainer) next to a plain
PyTorch loop doing the same step (same trainable parameters, parameter groups and penalty) on the
same batch in the same process; plus peak memory, trainable parameters and the size of what the
run saves.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/methods.py [--steps 20] [--backbone minilm|efficientnet]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/methods.py --steps 3 --backbone whisper   # ~10 s a step
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/methods.py --steps 0 --backbone gemma   # sizes only

Each case runs in its own process, so peak memory (resident set, ru_maxrss) is that case's.
`train MB` is the peak minus the memory held right after the model was built: what training
itself (activations, gradients, optimizer state) added. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

METHODS = {  # name -> (module, class, keyword arguments): the src/lokal/conf/method defaults
    "full": ("full", "Full", {}),
    "full (LLRD 0.8 + L2-SP)": ("full", "Full", {"layer_decay": 0.8, "l2sp": 0.01}),
    "partial (2 blocks)": ("partial", "Partial", {"last_n_blocks": 2}),
    "bitfit": ("bitfit", "BitFit", {}),
    "bitfit + zero biases": ("bitfit", "BitFit", {"add_bias": True}),  # for bias-free decoders (Gemma)
    "lora r8": ("lora", "LoRA", {"r": 8, "alpha": 16, "dropout": 0.1}),
    "dora r8": ("lora", "LoRA", {"r": 8, "alpha": 16, "dropout": 0.1, "use_dora": True}),
    "additive ia3": ("additive", "Additive", {"kind": "ia3"}),
    "additive side": ("additive", "Additive", {"kind": "side"}),
    "prompt": ("prompt", "Prompt", {}),
    "adapter (pfeiffer)": ("adapter", "Adapter", {}),
    "adapter (houlsby)": ("adapter", "Adapter", {"placement": "houlsby"}),
}
BACKBONES = {"minilm": "MiniLM-L6, batch 32 x 48 tokens", "efficientnet": "EfficientNet-Lite0, batch 16 x 224 x 224",
             "gemma": "Gemma 3 270M, batch 8 x 48 tokens",
             "whisper": "Whisper tiny.en, batch 4 x 30 s (real Asterisk prompts)"}


def build(backbone: str, method_name: str):
    import importlib

    from lokal.assets.shipped import efficientnet_lite0, minilm

    module, cls, kwargs = METHODS[method_name]
    method = getattr(importlib.import_module(f"lokal.methods.{module}"), cls)(**kwargs)
    torch.manual_seed(0)
    if backbone in ("minilm", "gemma"):
        from lokal.assets.shipped import gemma3_270m
        from lokal.models.text import TextClassifier

        if backbone == "minilm":
            model = TextClassifier(str(minilm()), 2, lora_targets=["query", "value"])
        else:
            model = TextClassifier(str(gemma3_270m()), 2, lora_targets=["q_proj", "v_proj"])
        ids = torch.randint(1000, 20000, (32 if backbone == "minilm" else 8, 48))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "label": torch.randint(0, 2, (32,))}
    elif backbone == "whisper":
        model, batch = whisper_batch()
    else:
        from lokal.models.vision import ImageClassifier

        model = ImageClassifier("tf_efficientnet_lite0", 2, checkpoint=str(efficientnet_lite0()),
                                lora_targets=["conv_pw", "conv_pwl", "conv_head"])
        batch = {"image": torch.randn(16, 3, 224, 224), "label": torch.randint(0, 2, (16,))}
    return method, method.apply(model), batch


def whisper_batch(size: int = 4):
    """Whisper tiny.en and a batch of real recordings with their transcripts, from SpeechDataModule
    itself (log-mel padded to 30 s, decoder targets padded with -100)."""
    from lokal.assets.asterisk import asterisk_sounds
    from lokal.assets.shipped import whisper_tiny_en
    from lokal.data.speech import SpeechDataModule
    from lokal.models.speech import WhisperASR

    model = WhisperASR(str(whisper_tiny_en()), lora_targets=["q_proj", "k_proj", "v_proj", "out_proj"])
    datamodule = SpeechDataModule(str(asterisk_sounds() / "transcripts.tsv"), batch_size=size)
    datamodule.use_model(model)
    datamodule.setup()
    return model, next(iter(datamodule.val_dataloader()))


def loss_of(model, batch) -> torch.Tensor:
    """Cross-entropy of a classifier's logits, or Whisper's own loss over the transcript tokens."""
    if "labels" in batch:
        return model(batch).loss
    return torch.nn.functional.cross_entropy(model(batch), batch["label"])


def plain_loop(method, model, batch, steps: int) -> float:
    """The same step written by hand: forward, loss (+ the method's penalty), backward, AdamW."""
    from functools import partial

    from lokal.training.module import make_optimizer

    optimizer = make_optimizer(partial(torch.optim.AdamW, lr=1e-4), method.param_groups(model))
    model.train()
    for i in range(steps + 2):
        if i == 2:  # two warm-up steps
            start = time.perf_counter()
        loss = loss_of(model, batch)
        penalty = method.penalty(model)
        if penalty is not None:
            loss = loss + penalty
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def lokal_loop(method, model, batch, steps: int) -> float:
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from lokal.tasks.classification import ClassifierModule

    class StepTimer(Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 2:
                self.start = time.perf_counter()

        def on_train_end(self, trainer, *args):
            self.seconds = (time.perf_counter() - self.start) / steps

    timer = StepTimer()
    optimizer = lambda params: torch.optim.AdamW(params, lr=1e-4)  # noqa: E731
    if "labels" in batch:
        from lokal.tasks.speech_recognition import SpeechModule

        module = SpeechModule(model, optimizer=optimizer, method=method)
    else:
        module = ClassifierModule(model, 2, optimizer=optimizer, method=method)
    loader = torch.utils.data.DataLoader([batch] * (steps + 2), batch_size=None)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps + 2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(module, train_dataloaders=loader)
    return timer.seconds


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def one_case(backbone: str, method_name: str, steps: int, default_malloc: bool = False) -> dict:
    from lokal.training.system import tune_malloc
    from lokal.training.weights import save_weights

    if not default_malloc:
        tune_malloc()  # lokal's runs do this; the plain loop gets the same allocator
    method, model, batch = build(backbone, method_name)
    built = rss_mb()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    plain = plain_loop(method, model, batch, steps) if steps else float("nan")
    ours = lokal_loop(method, model, batch, steps) if steps else float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        saved = save_weights(model, Path(tmp))
        files = [saved] if saved.is_file() else list(saved.rglob("*"))
        size = sum(f.stat().st_size for f in files if f.is_file())
    return {"plain_s": plain, "lokal_s": ours, "peak_mb": peak, "train_mb": peak - built,
            "trainable": trainable, "total": total, "saved_mb": size / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20, help="0: only count parameters and saved sizes")
    parser.add_argument("--backbone", choices=list(BACKBONES), action="append")
    parser.add_argument("--method", choices=list(METHODS), action="append")
    parser.add_argument("--default-malloc", action="store_true", help="skip lokal's glibc malloc tuning")
    parser.add_argument("--one", nargs=2, metavar=("BACKBONE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_case(*args.one, steps=args.steps, default_malloc=args.default_malloc)))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, malloc {'default' if args.default_malloc else 'tuned'}\n")
    print("| backbone | method | trainable | plain s/step | lokal s/step | ratio | peak MB | train MB | saved MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for backbone in args.backbone or ["minilm", "efficientnet"]:
        for name in args.method or METHODS:
            command = [sys.executable, __file__, "--one", backbone, name, "--steps", str(args.steps)]
            out = subprocess.run(command + ["--default-malloc"] * args.default_malloc, capture_output=True, text=True)
            if out.returncode:
                print(f"| {backbone} | {name} | failed: {out.stderr.strip().splitlines()[-1]} |||||||")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {BACKBONES[backbone]} | {name} | {r['trainable']:,} ({100 * r['trainable'] / r['total']:.2f}%) "
                  f"| {r['plain_s']:.3f} | {r['lokal_s']:.3f} | {r['lokal_s'] / r['plain_s']:.2f} "
                  f"| {r['peak_mb']:.0f} | {r['train_mb']:.0f} | {r['saved_mb']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
