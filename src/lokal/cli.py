"""Command line: `python train.py ...` and `lokal train ...` run the same Hydra app;
`lokal adapters` and `lokal export` work on finished run directories."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
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


def adapters_main(argv: list[str]) -> None:
    """`lokal adapters RUN_DIR...`: every run's adapter on one base, on every run's test split."""
    parser = argparse.ArgumentParser(
        prog="lokal adapters",
        description="Load the base once, add each run's adapter, and print test accuracy of every adapter "
                    "(columns) on every run's test split (rows), with each adapter's file size.")
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="runs trained with method=lora")
    parser.add_argument("--out", type=Path, help="also write the report: FILE.md as Markdown, else JSON")
    args = parser.parse_args(argv)
    from lokal.adapters import compare, to_markdown
    from lokal.io import write_json, write_text

    report = compare(args.runs)
    print(to_markdown(report))
    if args.out and args.out.suffix == ".md":
        print(f"written to {write_text(args.out, to_markdown(report))}")
    elif args.out:
        print(f"written to {write_json(args.out, report)}")


def export_main(argv: list[str]) -> None:
    """`lokal export RUN_DIR OUT_DIR`: the run's model (adapter merged) as a standalone folder."""
    parser = argparse.ArgumentParser(
        prog="lokal export",
        description="Merge a run's adapter into its base and write a standalone model: Hugging Face text models "
                    "as a save_pretrained folder, timm models as model.safetensors + config.json.")
    parser.add_argument("run", type=Path, metavar="RUN_DIR")
    parser.add_argument("out", type=Path, metavar="OUT_DIR", help="a new (or empty) folder")
    args = parser.parse_args(argv)
    from lokal.adapters import export_run, how_to_load

    out = export_run(args.run, args.out)
    print(f"{out}: load it without lokal with {how_to_load(out)}")


USAGE = """usage: lokal {train,adapters,export} ...
  lokal train method=bitfit data=medical_xray data.root=DIR   (Hydra overrides, as train.py)
  lokal adapters RUN_DIR RUN_DIR... [--out report.md]          (domain x adapter matrix)
  lokal export RUN_DIR OUT_DIR                                 (merged standalone model)"""


def main() -> None:
    """Console script `lokal`: `lokal train [overrides]`, `lokal adapters ...`, `lokal export ...`."""
    commands: dict[str, Callable[[list[str]], None]] = {"adapters": adapters_main, "export": export_main}
    if len(sys.argv) >= 2 and sys.argv[1] == "train":
        sys.argv.pop(1)
        hydra_main()
    elif len(sys.argv) >= 2 and sys.argv[1] in commands:
        _user_errors(commands[sys.argv[1]], sys.argv[2:])
    else:
        asked = len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help")
        print(USAGE, file=sys.stdout if asked else sys.stderr)
        raise SystemExit(0 if asked else 2)


def _user_errors(command: Callable[[list[str]], None], argv: list[str]) -> None:
    """A LokalError is the user's input: its message, no traceback."""
    try:
        command(argv)
    except LokalError as err:
        print(f"\nlokal: {err}", file=sys.stderr)
        raise SystemExit(2) from None
