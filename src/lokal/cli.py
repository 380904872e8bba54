"""Command line: `python train.py ...` and `lokal train ...` run the same Hydra app."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lokal import LokalError
from lokal.shipped import register_resolver

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")

register_resolver()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    from lokal.run import train

    try:
        metrics = train(cfg)
    except Exception as err:
        user_error = _lokal_error(err)
        if user_error is None:
            raise
        print(f"\nlokal: {user_error}", file=sys.stderr)  # the user's input: a clear message, no traceback
        raise SystemExit(2) from None
    return metrics.get(cfg.get("optimized_metric", "val/accuracy"))


def _lokal_error(err: BaseException | None) -> LokalError | None:
    """Hydra's instantiate wraps errors raised in constructors; find ours in the chain."""
    while err is not None and not isinstance(err, LokalError):
        err = err.__cause__
    return err


def main() -> None:
    """Console script `lokal`: `lokal train [overrides]`."""
    commands = {"train": hydra_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(f"usage: lokal {{{','.join(commands)}}} [hydra overrides...]\n"
              "  lokal train method=bitfit data=medical_xray data.root=DIR", file=sys.stderr)
        raise SystemExit(2)
    command = sys.argv.pop(1)
    commands[command]()
