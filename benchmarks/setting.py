"""One setting's values against each other, whole runs of `train.py` on this machine: by default
fp32 against bf16 autocast, the table behind `trainer.precision=auto` (lokal.training.precision).
Each workload and seed runs once per value, back to back (A B), and reports wall time, the fit
loop's time, the time from the first to the last optimizer step (steps_s: caches built by the
first run do not count), time from launch to the first step, peak memory and test accuracy.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/setting.py [--workloads demo gemma image minilm]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/setting.py --setting callbacks.compute.fast_dropout \
        --values false auto --workloads minilm demo --seeds 42 1 2

Workloads: `demo` (the default `train.py`: multilingual-e5-small + LoRA on the shipped tweets),
`gemma` (experiment=indo_gemma), `image` (EfficientNet-Lite0 partial on scikit-learn's digits,
benchmarks/end_to_end_image.py's split and recipe), `minilm` (benchmarks/end_to_end.py's MiniLM
settings). Read `lscpu` first: bf16 is fast only where the CPU has AMX (or AVX512-BF16)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

def workload_command(name: str, work: Path, run_dir: Path, seed: int) -> list[str]:
    """train.py and its overrides for one workload and seed (its data written under `work` once)."""
    import end_to_end
    import end_to_end_image

    quiet = ["trainer.enable_progress_bar=false", "evaluation.plots=false", f"hydra.run.dir={run_dir}", "resume=false",
             f"seed={seed}"]
    if name == "demo":
        return [sys.executable, str(ROOT.parent / "train.py"), *quiet]
    if name == "gemma":
        return [sys.executable, str(ROOT.parent / "train.py"), "experiment=indo_gemma", *quiet]
    if name == "minilm":
        tables = work / f"tables-{seed}"
        if not tables.exists():
            end_to_end.write_split(tables, seed)
        return end_to_end.lokal_command(tables, run_dir, seed, quick=False)
    if name == "image":
        digits = work / f"digits-{seed}"
        if not digits.exists():
            end_to_end_image.write_digits(digits, seed)
        return end_to_end_image.lokal_command(digits, run_dir, seed, quick=False)
    raise SystemExit(f"unknown workload {name!r}: demo, gemma, image or minilm")


def run(name: str, setting: str, value: str, seed: int, work: Path) -> dict:
    run_dir = work / f"{name}-{time.time_ns()}"
    start = time.time()
    done = subprocess.run([*workload_command(name, work, run_dir, seed), f"{setting}={value}"],
                          cwd=ROOT.parent, capture_output=True, text=True)
    wall = time.time() - start
    if done.returncode:
        raise RuntimeError(f"{name} {setting}={value} failed:\n{done.stderr[-3000:]}")
    m = json.loads((run_dir / "metrics.json").read_text())
    return {"workload": name, "value": value, "seed": seed, "wall_s": round(wall, 1), "train_s": m["train_time_s"],
            "steps_s": m.get("time/training_s"),
            "launch_to_first_step_s": m.get("time/launch_to_first_step_s"), "peak_mb": m["peak_memory_mb"],
            "test_accuracy": m["test/accuracy"], "val_accuracy": m.get("val/accuracy")}


def table(rows: list[dict], setting: str) -> str:
    """One line per run, the steps' ratio against the first value's run on the same workload and seed."""
    keys = ("wall_s", "train_s", "steps_s", "launch_to_first_step_s", "peak_mb", "val_accuracy", "test_accuracy")
    lines = [f"| workload | seed | {setting} | " + " | ".join(keys) + " | steps_s vs first |",
             "|---|---:|---|" + "---:|" * (len(keys) + 1)]
    first = {}
    for r in rows:
        first.setdefault((r["workload"], r["seed"]), r["steps_s"])
        cells = [f"{r[k]:.3f}" if k.endswith("accuracy") and r[k] is not None else f"{r[k]:.0f}" if r[k] is not None
                 else "-" for k in keys]
        base = first[(r["workload"], r["seed"])]
        ratio = f"{r['steps_s'] / base:.2f}" if base and r["steps_s"] else "-"
        lines.append(f"| {r['workload']} | {r['seed']} | {r['value']} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["minilm", "demo", "image", "gemma"])
    parser.add_argument("--setting", default="trainer.precision", help="the config key to vary")
    parser.add_argument("--values", nargs="+", default=["32-true", "bf16-mixed"], help="its values, run in this order")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--out", type=Path, help="write every row as JSON")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lokal-setting-") as tmp:
        for name in args.workloads:
            for seed in args.seeds:
                for value in args.values:
                    rows.append(run(name, args.setting, value, seed, Path(tmp)))
                    print(json.dumps(rows[-1]), flush=True)
                    if args.out:
                        args.out.write_text(json.dumps(rows, indent=1))
    print(table(rows, args.setting))


if __name__ == "__main__":
    main()
