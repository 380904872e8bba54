"""`lokal predict` on recordings longer than Whisper's 30 s window: cut at pauses (lokal's way) or
in plain 30 s windows, measured by WER on the Asterisk prompts over 30 s (the three that speech
training skips) with Whisper tiny.en itself (a LoRA run whose adapter is still the identity).

    python benchmarks/predict_long_audio.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd
import soundfile


def identity_run(run_dir: Path) -> Path:
    """A finished-looking LoRA run on tiny.en with LoRA's B still 0: the base model's transcripts."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lokal.api import compose
    from lokal.io import write_text
    from lokal.training.weights import save_weights

    cfg = compose(["data=speech_table", f"data.path={run_dir / 'none.csv'}", "method=lora"], run_dir)
    save_weights(instantiate(cfg.method).apply(instantiate(cfg.model)), run_dir)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir


def plain_windows(audio, window):
    return [(start, min(start + window, len(audio))) for start in range(0, len(audio), window)]


def main() -> None:
    from torchmetrics.functional.text import word_error_rate

    import lokal.runs.predict_audio as predict_audio
    from lokal.assets.asterisk import asterisk_sounds
    from lokal.runs.predict import predict
    from lokal.tasks.speech_recognition import normalise

    folder = asterisk_sounds()
    table = pd.read_csv(folder / "transcripts.tsv", sep="\t")
    long = table[[soundfile.info(folder / f).duration > 30 for f in table["file"]]]
    files = [folder / f for f in long["file"]]
    run_dir = identity_run(Path(tempfile.mkdtemp()) / "run")
    cut_at_pauses = predict_audio.speech_bounds
    for name, bounds in (("cut at pauses", cut_at_pauses), ("plain 30 s windows", plain_windows)):
        predict_audio.speech_bounds = bounds
        start = time.perf_counter()
        frame = predict(run_dir, files, batch_size=4)
        seconds = time.perf_counter() - start
        heard, said = [normalise(t) for t in frame["text"]], [normalise(t) for t in long["text"]]
        each = [float(word_error_rate(h, s)) for h, s in zip(heard, said, strict=True)]
        print(f"{name}: WER {float(word_error_rate(heard, said)):.1%} over {len(files)} recordings "
              f"({frame['seconds'].sum():.0f} s of speech, {frame['pieces'].sum()} pieces) in {seconds:.0f} s; "
              + ", ".join(f"{Path(f).name} {w:.1%}" for f, w in zip(long["file"], each, strict=True)))
    predict_audio.speech_bounds = cut_at_pauses


if __name__ == "__main__":
    main()
