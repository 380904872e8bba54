"""Does balancing help on a real imbalanced image set? Macro-F1 and accuracy of EfficientNet-Lite0
fine-tuned through `train.py` with no balancing, the balanced sampler, class-weighted
cross-entropy and focal loss, over several seeds.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline .venv/bin/python benchmarks/imbalance.py [--seeds 3]

The data: scikit-learn's digits (1,797 real 8x8 handwritten digits, UCI; ships with the package,
no download), upscaled to 32 px greyscale PNGs in an image folder with explicit splits (trained at
32 px: about 2 minutes a run on one shared CPU core):
- train: 5 majority digits with 120 images each, 5 minority digits with 10 each (12:1), the
  imbalance a small local data set typically has;
- val: drawn with the same imbalance (20 / 3 per class): the user's held-out data looks like
  their training data, and the checkpoint is chosen on it by val/f1_macro (val/accuracy would
  pick the checkpoint that best ignores the minorities);
- test: balanced, 35 images of every digit. With ~180 images per digit a test set in the
  training ratio would hold 2-3 images of each minority digit, and their F1 would be noise;
  balanced, every class's recall is measured equally well, and accuracy is balanced accuracy.
  Macro-F1 on it rewards minority recall; precision there reflects a balanced prior, not 12:1.

Each run is `python train.py ...` in its own process and folder (OUT/SETTING/seed_N); a run whose
metrics.json exists is read, not repeated, so an interrupted benchmark continues.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MAJORITY, MINORITY = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
COUNTS = {"train": (120, 10), "val": (20, 3), "test": (35, 35)}  # (per majority digit, per minority digit)
SETTINGS = {  # name -> train.py overrides
    "none": [],
    "sampler (data.balance=true)": ["data.balance=true"],
    "class-weighted CE (loss.class_weights_mode=balanced)": ["loss.class_weights_mode=balanced"],
    "focal, gamma 2 (loss=focal)": ["loss=focal"],
}
COMMON = [
    "model=efficientnet_lite0", "model.image_size=32", "data=image_folder", "method=full", "method.lr=1e-3",
    # mild crops only, replacing the default augment: a mirrored or sheared digit is another symbol
    "~data.augment", "+data.augment={hflip:0.0,color_jitter:0.0,scale:[0.8,1.0]}",
    "data.batch_size=32", "trainer.max_epochs=6", "trainer.enable_progress_bar=false",
    "callbacks.model_checkpoint.monitor=val/f1_macro", "optimized_metric=val/f1_macro",
]


def write_digits(root: Path, seed: int = 0) -> Path:
    """The imbalanced digits folder (see the module docstring); the same files for every seed."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for digit in range(10):
        rows = rng.permutation(np.flatnonzero(digits.target == digit))
        start = 0
        for split, (major, minor) in COUNTS.items():
            n = major if digit in MAJORITY else minor
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for i in rows[start:start + n]:
                pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)  # 0..16 ink levels -> 8 bit
                Image.fromarray(pixels, mode="L").resize((32, 32), Image.BICUBIC).save(folder / f"{i}.png")
            start += n
    return root


def run(data: Path, out: Path, overrides: list[str], seed: int) -> dict:
    """One `train.py` run in its own folder, or its metrics if it finished before."""
    done = out / "metrics.json"
    if not done.is_file():
        command = [sys.executable, str(ROOT / "train.py"), *COMMON, *overrides, f"data.root={data}",
                   f"seed={seed}", f"hydra.run.dir={out}"]
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        print(f"  {out.parent.name} seed {seed}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return json.loads(done.read_text())


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +/- {std:.3f}"


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| balancing | test macro-F1 | test accuracy (balanced test) | val macro-F1 | runs |",
             "|---|---|---|---|---|"]
    for name, runs in results.items():
        cells = [mean_std([r[k] for r in runs]) for k in ("test/f1_macro", "test/accuracy", "val/f1_macro")]
        lines.append(f"| {name} | {' | '.join(cells)} | {len(runs)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "imbalance")
    parser.add_argument("--only", nargs="*", choices=list(SETTINGS), help="run only these settings")
    args = parser.parse_args()
    data = args.out / "digits"
    if not (data / "test").is_dir():
        write_digits(data)
    results = {name: [run(data, args.out / f"setting_{i}" / f"seed_{seed}", SETTINGS[name], seed)
                      for seed in range(args.seeds)]
               for i, name in enumerate(SETTINGS) if not args.only or name in args.only}
    print(f"digits, train {COUNTS['train'][0]} x 5 majority / {COUNTS['train'][1]} x 5 minority digits, "
          f"test {COUNTS['test'][0]} per digit; mean +/- std over seeds\n")
    print(table(results))
    print("\ncommon overrides: " + " ".join(COMMON))


if __name__ == "__main__":
    main()
