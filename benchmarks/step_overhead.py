"""Seconds per training step: lokal (LokalModule under a Lightning Trainer) vs a plain
PyTorch loop doing the same forward/backward/step on the same batch, in the same process.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/step_overhead.py [--steps 20]

Prints a Markdown table; the ratio is lokal / plain (1.00 = no overhead).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch


def cases():
    from lokal.methods.bitfit import BitFit
    from lokal.methods.lora import LoRA
    from lokal.models.text import TextClassifier
    from lokal.models.vision import ImageClassifier
    from lokal.shipped import efficientnet_lite0, minilm

    def text_batch(model):
        ids = torch.randint(1000, 20000, (32, 48))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "label": torch.randint(0, 2, (32,))}

    def image_batch(model):
        return {"image": torch.randn(16, 3, 224, 224), "label": torch.randint(0, 2, (16,))}

    yield ("MiniLM-L6, LoRA r8, batch 32x48 tokens",
           lambda: LoRA(r=8, alpha=16).apply(TextClassifier(str(minilm()), 2, lora_targets=["query", "value"])),
           text_batch)
    yield ("EfficientNet-Lite0, BitFit, batch 16x224x224",
           lambda: BitFit().apply(ImageClassifier("tf_efficientnet_lite0", 2, checkpoint=str(efficientnet_lite0()))),
           image_batch)


def plain_loop(model, batch, steps: int) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    for i in range(steps + 2):
        if i == 2:  # two warm-up steps
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(batch), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def lokal_loop(model, batch, steps: int) -> float:
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from lokal.module import LokalModule

    class StepTimer(Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 2:
                self.start = time.perf_counter()

        def on_train_end(self, trainer, *args):
            self.seconds = (time.perf_counter() - self.start) / steps

    timer = StepTimer()
    module = LokalModule(model, 2, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-4))
    loader = [batch] * (steps + 2)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps + 2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(loader, batch_size=None))
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--default-malloc", action="store_true", help="skip lokal's glibc malloc tuning")
    args = parser.parse_args()
    from lokal.system import tune_malloc

    if not args.default_malloc:
        tune_malloc()  # lokal's runs do this; the plain loop gets the same allocator
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, malloc {'default' if args.default_malloc else 'tuned'}\n")
    print("| case | plain PyTorch s/step | lokal s/step | ratio |")
    print("|---|---:|---:|---:|")
    for name, build, make_batch in cases():
        torch.manual_seed(0)
        model = build()
        batch = make_batch(model)
        plain = plain_loop(model, batch, args.steps)
        ours = lokal_loop(model, batch, args.steps)
        print(f"| {name} | {plain:.3f} | {ours:.3f} | {ours / plain:.2f} |")


if __name__ == "__main__":
    main()
