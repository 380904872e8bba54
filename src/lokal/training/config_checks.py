"""Checks on the composed config before anything loads: values in range, and a run folder
reused with another config. Each failure names the key and the fix (a LokalError), so a typo
costs a second, not a model load and a torch traceback."""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lokal.data.settings import RANGES as DATA_RANGES
from lokal.data.settings import Rule, check_fractions, check_range, number, whole
from lokal.errors import LokalError

# key -> (test, what it must be, an example). Absent keys (another method, another trainer) are skipped.
# The data keys' rules are the data settings' own (lokal.data.settings), which check them again
# when a data module is built from Python.
RANGES: dict[str, Rule] = {
    "method.lr": (number(lambda v: v > 0), "a positive number", "1e-4"),
    "optimizer.lr": (number(lambda v: v > 0), "a positive number", "1e-4"),
    "optimizer.weight_decay": (number(lambda v: v >= 0), "0 or more", "0.01"),
    "method.r": (whole(1), "a whole number >= 1", "8"),
    "method.last_n_blocks": (whole(0), "a whole number >= 0", "2"),
    **{f"data.{key}": rule for key, rule in DATA_RANGES.items()},
    "trainer.max_epochs": (lambda v: whole(1)(v) or v == -1, "a whole number >= 1 (or -1 with max_steps)", "3"),
    "trainer.accumulate_grad_batches": (whole(1), "a whole number >= 1", "4"),
    "trainer.devices": (lambda v: whole(1)(v) or v == -1 or isinstance(v, str | list), "a number >= 1",
                        "1"),
}


def check_ranges(cfg: DictConfig) -> None:
    """Every RANGES key present in `cfg` holds an allowed value."""
    for key, rule in RANGES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            check_range(key, value, rule)
    check_fractions(*(OmegaConf.select(cfg, f"data.{k}", default=0) or 0 for k in ("val_fraction", "test_fraction")))


# -- a run folder reused with another config -----------------------------------------------------
# Keys that say how a run is shown or fed, not what it computes: they may change between a run
# and its continuation (a progress bar off under Slurm, another logger, more loader workers).
IGNORED = ("resume", "logger", "trainer.enable_progress_bar", "trainer.enable_model_summary",
           "trainer.log_every_n_steps", "data.num_workers", "data.pin_memory", "data.cache", "data.cache_dir")


def config_differences(saved: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config trees (added or removed keys too;
    a callback added or removed, such as a progress printer, is not a difference)."""
    keys = []
    for key in sorted(set(saved) | set(new), key=str):
        dotted = f"{prefix}{key}"
        if dotted in IGNORED or (prefix == "callbacks." and (key not in saved or key not in new)):
            continue
        old, now = saved.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(old, dict) and isinstance(now, dict):
            keys += config_differences(old, now, f"{dotted}.")
        elif old != now:
            keys.append(f"{dotted}: {old!r} -> {now!r}")
    return keys


def check_same_config(saved_file: Path, cfg: DictConfig) -> None:
    """A folder that holds a run (its resolved config, `saved_file`) continues or reports only
    that run: a different config there would resume its checkpoint on other settings, or return
    its old metrics as the new config's result."""
    run_dir = Path(cfg.paths.run_dir)
    if not saved_file.is_file():
        return
    saved = OmegaConf.to_container(OmegaConf.load(saved_file), resolve=False)
    differences = config_differences(saved, OmegaConf.to_container(cfg, resolve=True))
    if differences:
        shown = "; ".join(differences[:8]) + (f"; and {len(differences) - 8} more" if len(differences) > 8 else "")
        raise LokalError(f"{run_dir} holds a run with another config ({shown}). Nothing was changed: leave "
                         "hydra.run.dir unset for a new folder, or give another one; to repeat that run as it "
                         "was, use its own settings (its config.yaml)")


def nearest_keys(cfg: DictConfig, dotted: str) -> list[str]:
    """Real keys close to a misspelled one (`trainer.max_epoch` -> `trainer.max_epochs`)."""
    parent, _, leaf = dotted.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    if not isinstance(node, DictConfig):
        return []
    close = difflib.get_close_matches(leaf, [str(k) for k in node.keys()], n=3, cutoff=0.6)
    return [f"{parent}.{k}" if parent else k for k in close]
