"""fp32 against bf16 autocast on this CPU, whole runs of `train.py`: the table behind
`trainer.precision=auto` (lokal.training.precision). Each workload runs once per precision, A B,
on one machine, and reports wall time, the fit loop's time, the time from the first to the last
optimizer step (steps_s: caches built by the first run do not count), time from launch to the
first step, peak memory and test accuracy.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/precision.py [--workloads demo gemma image minilm]

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

PRECISIONS = ("32-true", "bf16-mixed")


def workload_command(name: str, work: Path, run_dir: Path) -> list[str]:
    """train.py and its overrides for one workload (its data written under `work` once)."""
    import end_to_end
    import end_to_end_image

    quiet = ["trainer.enable_progress_bar=false", "evaluation.plots=false", f"hydra.run.dir={run_dir}", "resume=false"]
    if name == "demo":
        return [sys.executable, str(ROOT.parent / "train.py"), *quiet]
    if name == "gemma":
        return [sys.executable, str(ROOT.parent / "train.py"), "experiment=indo_gemma", *quiet]
    if name == "minilm":
        tables = work / "tables"
        if not tables.exists():
            end_to_end.write_split(tables, 42)
        return end_to_end.lokal_command(tables, run_dir, 42, quick=False)
    if name == "image":
        digits = work / "digits"
        if not digits.exists():
            end_to_end_image.write_digits(digits, 42)
        return end_to_end_image.lokal_command(digits, run_dir, 42, quick=False)
    raise SystemExit(f"unknown workload {name!r}: demo, gemma, image or minilm")


def run(name: str, precision: str, work: Path) -> dict:
    run_dir = work / f"{name}-{precision}-{time.time_ns()}"
    start = time.time()
    done = subprocess.run([*workload_command(name, work, run_dir), f"trainer.precision={precision}"],
                          cwd=ROOT.parent, capture_output=True, text=True)
    wall = time.time() - start
    if done.returncode:
        raise RuntimeError(f"{name} {precision} failed:\n{done.stderr[-3000:]}")
    m = json.loads((run_dir / "metrics.json").read_text())
    return {"workload": name, "precision": precision, "wall_s": round(wall, 1), "train_s": m["train_time_s"],
            "steps_s": m.get("time/training_s"),
            "launch_to_first_step_s": m.get("time/launch_to_first_step_s"), "peak_mb": m["peak_memory_mb"],
            "test_accuracy": m["test/accuracy"], "val_accuracy": m.get("val/accuracy")}


def table(rows: list[dict]) -> str:
    keys = ("wall_s", "train_s", "steps_s", "launch_to_first_step_s", "peak_mb", "test_accuracy")
    lines = ["| workload | precision | " + " | ".join(keys) + " | steps_s vs fp32 |",
             "|---|---|" + "---:|" * (len(keys) + 1)]
    fp32 = {r["workload"]: r["steps_s"] for r in rows if r["precision"] == "32-true"}
    for r in rows:
        cells = [f"{r[k]:.3f}" if k == "test_accuracy" else f"{r[k]:.0f}" if r[k] is not None else "-" for k in keys]
        ratio = f"{r['steps_s'] / fp32[r['workload']]:.2f}" if fp32.get(r["workload"]) else "-"
        lines.append(f"| {r['workload']} | {r['precision']} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["minilm", "demo", "image", "gemma"])
    parser.add_argument("--out", type=Path, help="write every row as JSON")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lokal-precision-") as tmp:
        for name in args.workloads:
            for precision in PRECISIONS:
                rows.append(run(name, precision, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
                if args.out:
                    args.out.write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
