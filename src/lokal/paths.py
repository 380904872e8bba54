"""Names shared across the package: where the configs, shipped assets and caches live, and the
files and folders that make a run directory. Everything imports these from here, so no module
reaches upward for a constant. (No heavy imports: the CLI reads this before Hydra starts.)"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE / "conf"  # the shipped configs, inside the package: a wheel has them
ASSETS_DIR = PACKAGE / "assets"  # small files lokal ships itself (instructions, slang, general texts)
GENERAL_TEXTS = ASSETS_DIR / "general_id.txt"  # general Indonesian sentences: the forgetting meter's reference
# Converted models and fetched recordings; LOKAL_CACHE moves it (CI points it at an empty folder).
CACHE_DIR = Path(os.environ.get("LOKAL_CACHE", Path.home() / ".cache" / "lokal")).expanduser()

# -- a run directory ------------------------------------------------------------------------------
CONFIG_FILE = "config.yaml"  # the resolved config the run trained with
FINISHED = "metrics.json"  # written last by every run: its presence marks a finished run
FOLD_DIR = "fold_{}"  # k-fold: one complete run directory per fold
CLASSES_FILE = "classes.json"  # the class (or label) names in output order: `lokal predict` needs no data
THRESHOLDS_FILE = "thresholds.json"  # multi-label runs: label -> probability cut, chosen on validation


def data_cache_dir() -> Path:
    """$LOKAL_DATA_CACHE, else $LOKAL_CACHE/data (default ~/.cache/lokal/data): next to the
    shipped models' cache, yet movable on its own (a test session points it at a temp dir)."""
    return Path(os.environ.get("LOKAL_DATA_CACHE") or CACHE_DIR / "data").expanduser()
