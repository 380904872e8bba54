"""One way to load a finished run: its saved config (with the names of classes that moved since
it was written mapped to where they live now), and its data splits and trained model."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lokal.errors import LokalError
from lokal.paths import CONFIG_FILE, FOLD_DIR

# Classes a run's config.yaml may name from before the package was laid out by layer.
MOVED = {
    "lokal.loggers.": "lokal.training.loggers.",
    "lokal.losses.": "lokal.training.losses.",
    "lokal.optim.": "lokal.training.optim.",
    "lokal.preemption.": "lokal.training.preemption.",
    "lokal.resume.": "lokal.training.resume.",
}


def load_config(run_dir: str | Path) -> DictConfig:
    """RUN_DIR/config.yaml, with every moved `_target_` mapped to its current module."""
    run_dir = Path(run_dir)
    first_fold = run_dir / FOLD_DIR.format(0)
    if first_fold.is_dir() and not (run_dir / CONFIG_FILE).is_file():
        raise LokalError(f"{run_dir} is a k-fold run with one model per fold: load one, e.g. {first_fold}")
    if not (run_dir / CONFIG_FILE).is_file():
        raise LokalError(f"{run_dir} is not a lokal run directory (no {CONFIG_FILE})")
    return OmegaConf.create(_moved(OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG_FILE))))


def _moved(node):
    if isinstance(node, dict):
        return {key: _moved(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_moved(value) for value in node]
    if isinstance(node, str):
        for old, new in MOVED.items():
            if node.startswith(old):
                return new + node[len(old):]
    return node


def load_run(run_dir: str | Path):
    """Rebuild a finished run (its data splits and its trained model) from its directory.

    The base model comes fresh from its source; only what the run trained is read from
    `adapter/` or `weights.safetensors`. Returns (datamodule, model) with the model in eval mode.
    """
    from hydra.utils import instantiate

    from lokal.training.build import build
    from lokal.training.weights import ADAPTER_DIR, load_weights

    cfg = load_config(run_dir)
    is_adapter = (Path(run_dir) / ADAPTER_DIR).is_dir()
    datamodule, model = build(cfg, None if is_adapter else instantiate(cfg.method))
    return datamodule, load_weights(model, Path(run_dir)).eval()

