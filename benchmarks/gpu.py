"""GPU benchmark (issue 18): tokens/s and peak GPU memory of Gemma 3 270M instruction tuning, LoRA
and full, lokal next to HF Trainer + PEFT, eager / torch.compile / gradient checkpointing, and
lokal with padding-free packing; bf16 mixed precision on a GPU.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu.py --out $OUT          # one GPU, ~8 min
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu.py --quick --out /tmp/g  # CPU, < 2 min: proves the script

lokal's side is lokal's own pieces in a Lightning Trainer, as train.py builds them (CausalLM, the
method, LMModule, AdamW with `fused: auto`, the `Compute` callback, `pack`), without train.py's
evaluation, so both sides time training steps only. Both sides train the same batches: the shipped
indo_instruct pairs sorted by length and cut into batches once (same tokens, same padding), the
Gemma weights loaded once and copied per run. HF Trainer uses adamw_torch_fused, a constant LR and
the same LoRA (r 8, alpha 16, dropout 0.05 on q/k/v/o). tokens/s counts real (not padding)
tokens over the timed steps, after a warmup pass over every batch shape (compilation included
there). Runs go in the order of SETTINGS; one that would start after --budget-s is recorded as
skipped, and results.json / results.md are rewritten after every run, so a timeout keeps what ran.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch

LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
LR = {"lora": 2e-3, "full": 5e-5}


@dataclass
class Setting:
    side: str  # lokal | hf
    method: str  # lora | full
    compile: bool = False
    checkpointing: bool = False
    packing: bool = False  # lokal only: data.packing=true


@dataclass
class Result:
    setting: Setting
    tokens_per_s: float | None = None
    step_ms: float | None = None
    peak_gpu_mb: float | None = None
    wall_s: float | None = None
    status: str = "ok"  # ok | skipped (budget) | failed: ...
    losses: list[float] = field(default_factory=list)


def settings(quick: bool) -> list[Setting]:
    """Most informative first: compile last, as its compilation is the slowest part."""
    if quick:  # CPU: each code path once, LoRA only, no compile (inductor on 2 cores takes minutes for Gemma)
        return [Setting("lokal", "lora"), Setting("hf", "lora", checkpointing=True),
                Setting("lokal", "lora", checkpointing=True, packing=True)]
    rows = []
    for kind in [{}, {"checkpointing": True}, {"packing": True}, {"compile": True}]:
        for method in ("lora", "full"):
            sides = ["lokal"] if kind.get("packing") else ["lokal", "hf"]  # packing: lokal's data module
            rows += [Setting(side, method, **kind) for side in sides]
    return rows


# -- the shared data and model ------------------------------------------------------------------------
def load_base(max_length: int):
    from lokal.assets.shipped import gemma3_270m
    from lokal.models.causal_lm import CausalLM

    return CausalLM(str(gemma3_270m()), max_length=max_length, lora_targets=LORA["targets"])


def make_batches(base, batch_size: int, n_batches: int) -> tuple[list[dict], list[dict]]:
    """(padded, packed) versions of the same batches: train pairs sorted by length, cut in order."""
    from lokal.assets.shipped import indo_instruct
    from lokal.data.instruct import InstructionDataModule, pack

    data = InstructionDataModule(str(indo_instruct()), batch_size=batch_size)
    data.use_model(base)
    data.setup()
    rows = sorted(data.datasets["train"], key=lambda r: len(r["input_ids"]))
    groups = [rows[i:i + batch_size] for i in range(0, len(rows) - batch_size + 1, batch_size)]
    groups = [groups[round(i * (len(groups) - 1) / max(n_batches - 1, 1))] for i in range(n_batches)]
    return [data._collate(g) for g in groups], [pack(g) for g in groups]


def real_tokens(batch: dict) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


# -- timing -----------------------------------------------------------------------------------------------
class StepClock:
    """Wall time from the first timed step's start to the last step's end (the warmup steps before
    it include compilation), synchronising the GPU at both ends."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.step, self.start, self.end = warmup, 0, None, None

    def begin(self) -> None:
        if self.step == self.warmup:
            sync()
            self.start = time.perf_counter()

    def finish(self) -> None:
        self.step += 1
        sync()
        self.end = time.perf_counter()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def lightning_clock(clock: StepClock, losses: list[float]):
    import lightning as L

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.begin()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.finish()
            losses.append(round(float(outputs["loss"]), 4))

    return Clock()


def hf_clock(clock: StepClock):
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            clock.finish()

    return Clock()


# -- the two sides ------------------------------------------------------------------------------------------
def run_lokal(setting: Setting, base, batches: list[dict], steps: int, clock: StepClock, losses: list) -> None:
    import lightning as L
    from torch.utils.data import DataLoader

    from lokal.methods.full import Full
    from lokal.methods.lora import LoRA
    from lokal.tasks.causal_lm import LMModule
    from lokal.training.compute import Compute
    from lokal.training.optim import adamw

    method = (LoRA(r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"], target_modules=LORA["targets"])
              if setting.method == "lora" else Full())
    module = LMModule(method.apply(copy.deepcopy(base)), optimizer=partial(adamw, lr=LR[setting.method]),
                      method=method)
    cuda = torch.cuda.is_available()
    trainer = L.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, precision="bf16-mixed" if cuda else "32-true",
                        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[Compute(setting.compile, setting.checkpointing), lightning_clock(clock, losses)])
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))


def run_hf(setting: Setting, base, batches: list[dict], steps: int, clock: StepClock, losses: list) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    net = copy.deepcopy(base.net)
    # from_pretrained marks a GGUF checkpoint quantized though it loads dequantized to float32 (lokal
    # trains it so); the Trainer would refuse it, so the mark goes
    net.is_quantized, net.hf_quantizer = False, None
    if setting.method == "lora":
        net = get_peft_model(net, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules=LORA["targets"], task_type="CAUSAL_LM"))
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, max_steps=steps, per_device_train_batch_size=1, learning_rate=LR[setting.method],
            weight_decay=0.01, lr_scheduler_type="constant", bf16=cuda, use_cpu=not cuda,
            torch_compile=setting.compile, gradient_checkpointing=setting.checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False}, optim="adamw_torch_fused",
            report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, remove_unused_columns=False,
            dataloader_num_workers=0, seed=0)
        trainer = Trainer(model=net, args=args, train_dataset=batches, data_collator=lambda items: items[0],
                          callbacks=[hf_clock(clock)])
        history = trainer.train() and trainer.state.log_history
    losses += [round(h["loss"], 4) for h in history if "loss" in h]


# -- one run, the table ------------------------------------------------------------------------------------
def measure(setting: Setting, base, data: tuple[list, list], warmup: int, timed: int) -> Result:
    """One setting in this process; memory is freed and the peak counter reset around it."""
    padded, packed = data
    batches = packed if setting.packing else padded
    tokens_per_step = sum(real_tokens(b) for b in batches) / len(batches)
    clock, losses, start = StepClock(warmup), [], time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        (run_lokal if setting.side == "lokal" else run_hf)(setting, base, batches, warmup + timed, clock, losses)
    except Exception as error:  # one failed setting must not cost the others their time on the GPU
        return Result(setting, status=f"failed: {type(error).__name__}: {str(error)[:300]}")
    finally:
        gc.collect()
    seconds = clock.end - clock.start
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return Result(setting, tokens_per_s=round(tokens_per_step * timed / seconds, 1),
                  step_ms=round(1000 * seconds / timed, 1), peak_gpu_mb=peak and round(peak),
                  wall_s=round(time.perf_counter() - start, 1), losses=losses)


def label(s: Setting) -> str:
    switches = [name for name in ("compile", "checkpointing", "packing") if getattr(s, name)]
    return ", ".join(switches) or "eager"


def markdown(results: list[Result], header: str) -> str:
    lines = [header, "", "| side | method | setting | tokens/s | step ms | peak GPU MB | wall s | status |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        s = r.setting
        lines.append(f"| {s.side} | {s.method} | {label(s)} | {r.tokens_per_s or ''} | {r.step_ms or ''} | "
                     f"{r.peak_gpu_mb or ''} | {r.wall_s or ''} | {r.status} |")
    return "\n".join(lines) + "\n"


def write(out: Path, results: list[Result], header: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    (out / "results.md").write_text(markdown(results, header))


def device_line(args) -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'})"
    return (f"Gemma 3 270M on {gpu}, torch {torch.__version__}, batch {args.batch_size} pairs "
            f"(max {args.max_length} tokens), {args.warmup} warmup + {args.steps} timed steps"
            + (", bf16-mixed" if torch.cuda.is_available() else ", float32"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: LoRA, one tiny batch, 2 steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=24, help="timed steps per setting")
    parser.add_argument("--budget-s", type=float, default=450, help="no new setting starts after this")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.max_length, args.steps = 2, 32, 1
    base = load_base(args.max_length)
    data = make_batches(base, args.batch_size, 1 if args.quick else 12)
    args.warmup = len(data[0])  # every batch shape once: compilation and autotuning happen here
    header, results, start = device_line(args), [], time.perf_counter()
    for setting in settings(args.quick):
        late = time.perf_counter() - start > args.budget_s
        results.append(Result(setting, status="skipped (budget)") if late
                       else measure(setting, base, data, args.warmup, args.steps))
        write(args.out, results, header)
        print(markdown(results[-1:], "").splitlines()[-1], flush=True)
    print(markdown(results, header))


if __name__ == "__main__":
    main()
