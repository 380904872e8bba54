"""The whole run, as a user waits for it: lokal's `train.py` against HF Trainer + PEFT as its docs
teach it (dynamic padding, no length grouping), on the same split, model, method, epochs, batch,
learning rate and schedule, back to back (A B A B ...), each run in its own process.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/end_to_end.py [--seeds 42 1 2] [--repeats 2] [--hf-tuned]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/end_to_end.py --quick   # a 2-step smoke run of both

The split is lokal's own of the shipped corpus (deduplicated, stratified by seed), written as
train/val/test CSV tables that both sides read: lokal through `data.path=DIR` (split tables), HF
through `datasets`. Both: MiniLM-L6 (model=minilm) + LoRA r8 alpha 16 dropout 0.1 on query/value,
max length 64, batch 32, AdamW lr 2e-3 weight decay 0.01, 10% linear warmup then cosine to 0,
3 epochs, the checkpoint with the best validation accuracy tested once at the end. Each side in
its defaults otherwise: lokal's `trainer.precision=auto` (bf16 autocast on a CPU with AMX), HF
Trainer fp32. `--hf-tuned` adds a third side, HF Trainer with `bf16=True, train_sampling_strategy="group_by_length"`:
what a user gets from HF by setting the two flags that lokal sets by itself.

Reported per run: wall time (process start to exit), training time (the fit loop as each side
reports it), time to the first optimizer step (from process start), peak resident memory of the
process, test accuracy; then the means and the ratio lokal / HF. Prints a Markdown table, and
writes every row to --out (JSON) when given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import ab

ROOT = ab.ROOT
SETTINGS = {"epochs": 3, "batch_size": 32, "max_length": 64, "lr": 2e-3, "weight_decay": 0.01, "warmup": 0.1,
            "r": 8, "alpha": 16, "dropout": 0.1, "targets": ["query", "value"]}
QUICK = {"epochs": 1, "max_steps": 2}


def write_split(folder: Path, seed: int) -> dict[str, int]:
    """lokal's split of the shipped corpus for `seed`, as train.csv / val.csv / test.csv."""
    import pandas as pd
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from lokal.assets.shipped import register_resolver
    from lokal.paths import CONFIG_DIR

    register_resolver()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"seed={seed}"])
    data = instantiate(cfg.data)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split in ("train", "val", "test"):
        frame = pd.DataFrame({"text": data.texts(split), "label": [data.class_names[y] for y in data.labels(split)]})
        frame.to_csv(folder / f"{split}.csv", index=False)
        sizes[split] = len(frame)
    return sizes


def lokal_command(tables: Path, run_dir: Path, seed: int, quick: bool) -> list[str]:
    s = SETTINGS
    limits = [f"trainer.max_steps={QUICK['max_steps']}", "trainer.limit_val_batches=2",
              "trainer.limit_test_batches=2"] if quick else []
    return [sys.executable, str(ROOT / "train.py"), "data=text_csv", f"data.path={tables}", "model=minilm",
            "method=lora", f"method.r={s['r']}", f"method.alpha={s['alpha']}", f"method.dropout={s['dropout']}",
            f"method.lr={s['lr']}", f"optimizer.weight_decay={s['weight_decay']}",
            f"scheduler.warmup_ratio={s['warmup']}", f"model.max_length={s['max_length']}",
            f"data.batch_size={s['batch_size']}", f"trainer.max_epochs={QUICK['epochs'] if quick else s['epochs']}",
            f"seed={seed}", "trainer.enable_progress_bar=false", "evaluation.plots=false",
            f"hydra.run.dir={run_dir}", "resume=false", *limits]


def run_lokal(tables: Path, work: Path, seed: int, quick: bool) -> dict:
    run_dir = work / f"lokal-{time.time_ns()}"
    return ab.run_train_py(lokal_command(tables, run_dir, seed, quick), run_dir, seed)


def run_hf(tables: Path, work: Path, seed: int, quick: bool, tuned: bool = False) -> dict:
    out = work / f"hf-{time.time_ns()}"
    args = [str(tables), str(out), str(seed), *(["--quick"] if quick else []), *(["--tuned"] if tuned else [])]
    return ab.run_child(__file__, "--hf-child", args, "hf tuned" if tuned else "hf", seed, out)


def run_hf_tuned(tables: Path, work: Path, seed: int, quick: bool) -> dict:
    return run_hf(tables, work, seed, quick, tuned=True)


def hf_child(tables: Path, out: Path, seed: int, quick: bool, tuned: bool = False) -> None:
    """HF Trainer + PEFT as the PEFT sequence-classification guide does it, in this process;
    `tuned`: plus the two flags that give it what lokal does by default on an AMX CPU (bf16
    autocast, batches grouped by length)."""
    import resource

    import numpy as np
    import pandas as pd
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from lokal.assets.shipped import minilm

    s = SETTINGS
    frames = {split: pd.read_csv(tables / f"{split}.csv") for split in ("train", "val", "test")}
    names = sorted(set(frames["train"]["label"]))
    tokenizer = AutoTokenizer.from_pretrained(str(minilm()))
    encoded = {split: [dict(tokenizer(text, truncation=True, max_length=s["max_length"]), labels=names.index(y))
                       for text, y in zip(f["text"].astype(str), f["label"], strict=True)]
               for split, f in frames.items()}  # a list of dicts: what datasets.map would give the Trainer
    model = AutoModelForSequenceClassification.from_pretrained(str(minilm()), num_labels=len(names))
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=s["r"], lora_alpha=s["alpha"],
                                             lora_dropout=s["dropout"], target_modules=s["targets"]))
    first = {}

    class FirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            first.setdefault("at", time.time())

    args = TrainingArguments(
        output_dir=str(out), num_train_epochs=QUICK["epochs"] if quick else s["epochs"],
        max_steps=QUICK["max_steps"] if quick else -1, per_device_train_batch_size=s["batch_size"],
        per_device_eval_batch_size=s["batch_size"], learning_rate=s["lr"], weight_decay=s["weight_decay"],
        warmup_steps=s["warmup"], lr_scheduler_type="cosine", eval_strategy="epoch", save_strategy="epoch",
        load_best_model_at_end=True, metric_for_best_model="accuracy", save_total_limit=1, seed=seed,
        report_to=[], logging_strategy="no", disable_tqdm=True, use_cpu=True, bf16=tuned,
        train_sampling_strategy="group_by_length" if tuned else "random")
    if quick:
        args.eval_strategy = args.save_strategy = "steps"
        args.eval_steps = args.save_steps = QUICK["max_steps"]

    def accuracy(prediction) -> dict:
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    trainer = Trainer(model=model, args=args, train_dataset=encoded["train"], eval_dataset=encoded["val"],
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy,
                      callbacks=[FirstStep()])
    trained = trainer.train()
    test = trainer.evaluate(encoded["test"], metric_key_prefix="test")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (out / "result.json").write_text(json.dumps({"train_s": trained.metrics["train_runtime"],
                                                 "first_step_at": first["at"], "peak_mb": peak,
                                                 "test_accuracy": test["test_accuracy"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--repeats", type=int, default=1, help="A B pairs per seed")
    parser.add_argument("--quick", action="store_true", help="2 training steps each: checks the harness")
    parser.add_argument("--hf-tuned", action="store_true",
                        help="also HF Trainer with bf16=True and length-grouped batches")
    parser.add_argument("--tuned", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--hf-child", nargs=3, metavar=("TABLES", "OUT", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_child:
        tables, out, seed = args.hf_child
        return hf_child(Path(tables), Path(out), int(seed), args.quick, args.tuned)
    sides = [run_lokal, run_hf, *([run_hf_tuned] if args.hf_tuned else [])]
    rows = ab.back_to_back(args.seeds, args.repeats, write_split,
                           [partial(side, quick=args.quick) for side in sides], prefix="lokal-e2e-")
    ab.report(rows, ("hf", "hf tuned", "lokal"), ("hf", "hf tuned"), args.out)

if __name__ == "__main__":
    main()
