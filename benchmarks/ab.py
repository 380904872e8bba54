"""What the end-to-end benchmarks share (end_to_end.py, end_to_end_image.py): lokal's `train.py`
as one timed process, the sides run back to back per seed, and the table of each side's runs with
the ratio of the means."""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("wall_s", "train_s", "first_step_s", "peak_mb", "test_accuracy")


def run_train_py(command: list[str], run_dir: Path, seed: int, env: dict | None = None) -> dict:
    """One `train.py` process, timed from launch to exit, and what its metrics.json says."""
    start = time.time()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.time() - start
    if done.returncode:
        raise RuntimeError(f"lokal failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"side": "lokal", "seed": seed, "wall_s": wall, "train_s": metrics["train_time_s"],
            "first_step_s": metrics["first_step_at"] - start, "peak_mb": metrics["peak_memory_mb"],
            "trainable": metrics["trainable_params"], "test_accuracy": metrics["test/accuracy"]}


def run_child(script: str, flag: str, args: list[str], side: str, seed: int, out: Path) -> dict:
    """The other side, `script flag ARGS...` in its own process, which writes out/result.json."""
    import sys

    start = time.time()
    done = subprocess.run([sys.executable, script, flag, *args], cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - start
    if done.returncode:
        raise RuntimeError(f"{side} failed:\n{done.stderr[-3000:]}")
    result = json.loads((out / "result.json").read_text())
    return {"side": side, "seed": seed, "wall_s": wall, "train_s": result["train_s"],
            "first_step_s": result["first_step_at"] - start, "peak_mb": result["peak_mb"],
            "trainable": result.get("trainable"), "test_accuracy": result["test_accuracy"]}


def back_to_back(seeds: list[int], repeats: int, prepare: Callable[[Path, int], dict],
                 sides: list[Callable[[Path, Path, int], dict]], prefix: str) -> list[dict]:
    """For each seed: its data prepared once (`prepare(folder, seed)` gives the split sizes), then
    every side in turn, `repeats` times (A B A B: the same machine state for each side)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        for seed in seeds:
            data = Path(tmp) / f"data-{seed}"
            print(f"seed {seed}: split {prepare(data, seed)}", flush=True)
            for _ in range(repeats):
                for side in sides:
                    rows.append(side(data, Path(tmp), seed))
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict], sides: tuple[str, ...], references: tuple[str, ...]) -> str:
    """Each side's runs (seed order, mean accuracy in brackets), then lokal's means over each
    reference side's."""
    lines = ["| side | runs | " + " | ".join(KEYS) + " |", "|---|---:|" + "---:|" * len(KEYS)]
    means = {}
    for side in sides:
        mine = [r for r in rows if r["side"] == side]
        if not mine:
            continue
        means[side] = {k: statistics.mean(v) if (v := [r[k] for r in mine if r[k] is not None]) else None
                       for k in KEYS}
        cells = [" / ".join("-" if r[k] is None else f"{r[k]:.3f}" if k == "test_accuracy" else f"{r[k]:.0f}"
                            for r in mine) + (f" (mean {means[side][k]:.3f})" if k == "test_accuracy" else "")
                 for k in KEYS]
        lines.append(f"| {side} | {len(mine)} | " + " | ".join(cells) + " |")
    for other in (r for r in references if r in means and "lokal" in means):
        ratios = [f"{means['lokal'][k] / means[other][k]:.2f}" if means["lokal"][k] and means[other][k] else "-"
                  for k in KEYS]
        lines.append(f"| lokal / {other} (means) | | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def report(rows: list[dict], sides: tuple[str, ...], references: tuple[str, ...], out: Path | None) -> None:
    print(table(rows, sides, references))
    if out:
        out.write_text(json.dumps(rows, indent=1))
