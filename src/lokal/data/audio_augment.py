"""Training-only audio augmentation: noise at a target SNR, time shift, speed perturbation on
the waveform, SpecAugment masks on the log-mel.

Everything is numpy and draws from a `numpy.random.Generator` the caller passes (seeded per
worker and epoch by the data module), so a run is reproducible and each epoch sees new variants.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from lokal.data.audio import SAMPLE_RATE
from lokal.errors import LokalError


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator,
              noise: np.ndarray | None = None) -> np.ndarray:
    """`audio` plus noise scaled so 10·log10(P_audio / P_noise) = `snr_db` exactly. The noise is
    white Gaussian, or a random stretch of `noise` (a recording, tiled when shorter)."""
    power = float(np.mean(audio.astype(np.float64) ** 2))
    if power == 0:  # silence has no SNR to aim for
        return audio
    if noise is None:
        noise = rng.standard_normal(len(audio))
    else:
        start = int(rng.integers(len(noise)))
        noise = np.resize(np.roll(noise, -start), len(audio))  # resize tiles a short recording
    noise_power = float(np.mean(noise.astype(np.float64) ** 2))
    if noise_power == 0:
        return audio
    scale = np.sqrt(power / (noise_power * 10 ** (snr_db / 10)))
    return (audio + scale * noise).astype(np.float32)


def time_shift(audio: np.ndarray, max_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Shift by up to ±`max_samples`, filling with silence: a roll would wrap the end of a
    sentence round to its start, which a transcript cannot follow."""
    shift = int(rng.integers(-max_samples, max_samples + 1)) if max_samples > 0 else 0
    if shift == 0:
        return audio
    out = np.zeros_like(audio)
    if shift > 0:
        out[shift:] = audio[:-shift]
    else:
        out[:shift] = audio[-shift:]
    return out


def speed_perturb(audio: np.ndarray, speed: float) -> np.ndarray:
    """Speed perturbation (Ko et al. 2015): resample by 1/speed and play at the same rate, so
    tempo and pitch both change by `speed` (1.1 = 10 % faster and higher, 1/1.1 the length)."""
    from scipy.signal import resample_poly

    if speed == 1:
        return audio
    ratio = Fraction(speed).limit_denominator(100)  # 1.1 -> 11/10: keep 10 of every 11 samples
    return resample_poly(audio, ratio.denominator, ratio.numerator).astype(np.float32)


def mask_bands(x, axis: int, max_width: int, count: int, rng: np.random.Generator):
    """`count` bands along `axis`, each of width drawn from 0..`max_width` (SpecAugment's
    f ~ U[0, F]), set to the mean of `x`: Park et al. mask with 0 on mean-normalised
    features; Whisper's log-mel is not zero-mean, so its own mean is the neutral value."""
    x = x.copy() if isinstance(x, np.ndarray) else x.clone()  # numpy or torch, (mels, frames)
    size, fill = x.shape[axis], x.mean()
    for _ in range(count):
        width = int(rng.integers(0, min(max_width, size) + 1))
        start = int(rng.integers(0, size - width + 1))
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, start + width)
        x[tuple(index)] = fill
    return x


@dataclass
class AudioAugment:
    """Waveform augmentation for training clips: speed, then shift, then noise (last, so the SNR
    is measured against what the model hears). Each key off at its default."""

    speeds: tuple[float, ...] = (1.0,)  # one drawn per clip; Ko et al. 2015 use (0.9, 1.0, 1.1)
    shift_seconds: float = 0.0  # shift by up to ± this, silence-filled
    snr_db: tuple[float, float] | None = None  # white noise at an SNR drawn from [low, high], e.g. (10, 30)
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        self.speeds = tuple(self.speeds)
        if not self.speeds or min(self.speeds) <= 0:
            raise LokalError(f"data.augment.speeds={list(self.speeds)}: give positive factors, e.g. [0.9, 1.0, 1.1]")
        if self.shift_seconds < 0:
            raise LokalError(f"data.augment.shift_seconds={self.shift_seconds} must be >= 0")
        if self.snr_db is not None and (len(self.snr_db) != 2 or self.snr_db[0] > self.snr_db[1]):
            raise LokalError(f"data.augment.snr_db={self.snr_db}: give [low, high] in dB, e.g. [10, 30]")

    def __call__(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        audio = speed_perturb(audio, float(rng.choice(self.speeds)))
        audio = time_shift(audio, int(self.shift_seconds * self.sample_rate), rng)
        if self.snr_db is not None:
            audio = add_noise(audio, float(rng.uniform(*self.snr_db)), rng)
        return audio


@dataclass
class SpecAugment:
    """SpecAugment (Park et al. 2019): frequency and time masks on a (mels, frames) log-mel.

    Time warping is left out: the paper found it the least useful and the most costly. Park
    et al.'s LibriSpeech "LD" policy is freq_width=27, freq_masks=2, time_width=100, time_masks=2.
    """

    freq_width: int = 0  # F: each frequency mask covers 0..F mel bins
    freq_masks: int = 0  # m_F
    time_width: int = 0  # T: each time mask covers 0..T frames (10 ms each for Whisper)
    time_masks: int = 0  # m_T

    def __post_init__(self) -> None:
        for name in ("freq_width", "freq_masks", "time_width", "time_masks"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise LokalError(f"data.spec_augment.{name}={getattr(self, name)!r} must be a whole number >= 0")

    def __call__(self, mel, rng: np.random.Generator):
        mel = mask_bands(mel, 0, self.freq_width, self.freq_masks, rng)
        return mask_bands(mel, 1, self.time_width, self.time_masks, rng)
