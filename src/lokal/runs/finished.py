"""A finished run for Python users (`lokal.load_run`): its config, metrics and model."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from lokal.errors import LokalError
from lokal.runs.load import load_config


class Run:
    """A finished run for Python users (`lokal.load_run`): its config, metrics and model."""

    def __init__(self, run_dir: Path, config: DictConfig, metrics: dict) -> None:
        self.dir, self.config, self.metrics = run_dir, config, metrics
        self._predictor = None

    @classmethod
    def open(cls, run_dir: str | Path) -> Run:
        import json

        from lokal.paths import FINISHED

        run_dir = Path(run_dir)
        config = load_config(run_dir)
        if not (run_dir / FINISHED).is_file():
            raise LokalError(f"{run_dir} has not finished (no {FINISHED}): start its command again to resume it")
        return cls(run_dir, config, json.loads((run_dir / FINISHED).read_text()))

    def predict(self, items: list[str], batch_size: int = 32, device: str | None = None, skip_bad: bool = False):
        """What `lokal predict` writes, as a DataFrame (id = the item's position): class probabilities
        for texts (a text model), image or audio paths (id, predicted, confidence, prob/<class>), or
        transcripts of audio paths for a speech-recognition run (id, file, seconds, pieces, text)."""
        from lokal.runs.predict import load_predictor, predictions

        if isinstance(items, str | Path):
            items = [items]
        if self._predictor is None:  # the model loads once, on the first call
            self._predictor = load_predictor(self.dir)
        items = [str(i) for i in items]
        return predictions(self._predictor, [str(i) for i in range(len(items))], items, batch_size, device, skip_bad)

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"
