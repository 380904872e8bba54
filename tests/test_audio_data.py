"""Audio loading and augmentation on generated files of known content: a sine keeps its pitch
through resampling, stereo mixes down, every bad file gets a message naming it, long clips are
split or skipped as configured, noise lands on its SNR and SpecAugment masks the stated widths."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile
import torch

from lokal.data.audio import SAMPLE_RATE, LengthPolicy, load_audio, resample, split_chunks
from lokal.data.audio_augment import (
    AudioAugment,
    SpecAugment,
    add_noise,
    mask_bands,
    speed_perturb,
    time_shift,
)
from lokal.errors import LokalError


def sine(freq: float, seconds: float, rate: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def peak_hz(audio: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    """The strongest frequency, to 0.1 Hz (FFT zero-padded to 10 s)."""
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio)), n=10 * rate))
    return float(np.argmax(spectrum)) / 10


def wav_with_rate(path, rate: int, data: bytes = b"\x00\x01" * 100) -> None:
    """A 16-bit mono PCM WAV whose header claims `rate` Hz."""
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    path.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt
                     + b"data" + struct.pack("<I", len(data)) + data)


# -- loading -------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate,ext", [(8000, "wav"), (44100, "flac"), (16000, "wav"), (22050, "ogg")])
def test_resampling_keeps_a_sines_frequency_and_length(tmp_path, rate, ext):
    path = tmp_path / f"tone.{ext}"
    soundfile.write(path, sine(440, 1.0, rate), rate)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == SAMPLE_RATE  # 1 s at any input rate -> 16000 samples
    assert abs(peak_hz(audio) - 440) <= 1


def test_8khz_to_16khz_doubles_the_length():
    audio = resample(sine(300, 2.5, 8000), 8000)
    assert len(audio) == 2 * 20000 and abs(peak_hz(audio) - 300) <= 1


def test_stereo_mixes_down_to_mono(tmp_path):
    left, right = sine(440, 1.0, SAMPLE_RATE), sine(1000, 1.0, SAMPLE_RATE)
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    audio = load_audio(tmp_path / "stereo.wav")
    assert audio.shape == (SAMPLE_RATE,)
    np.testing.assert_allclose(audio, (left + right) / 2, atol=1e-6)


def test_mp3_loads_when_libsndfile_can_write_it(tmp_path):
    path = tmp_path / "tone.mp3"
    try:
        soundfile.write(path, sine(440, 1.0, 44100), 44100)
    except (soundfile.LibsndfileError, TypeError, ValueError):
        pytest.skip(f"libsndfile {soundfile.__libsndfile_version__} has no mp3 support")
    audio = load_audio(path)
    assert abs(len(audio) - SAMPLE_RATE) < 0.1 * SAMPLE_RATE  # mp3 frames pad the ends slightly
    assert abs(peak_hz(audio) - 440) <= 2


def bad_files(tmp_path) -> dict[str, tuple]:
    """name -> (path, words the message must contain)."""
    (tmp_path / "notes.wav").write_text("this is a text file, not a recording")
    (tmp_path / "zero.wav").write_bytes(b"")
    soundfile.write(tmp_path / "silent_header.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    wav_with_rate(tmp_path / "rate0.wav", 0)
    soundfile.write(tmp_path / "nan.wav", np.array([0, np.nan, 0.5], np.float32), SAMPLE_RATE, subtype="FLOAT")
    return {"missing": (tmp_path / "gone.wav", "file not found"),
            "not audio": (tmp_path / "notes.wav", "not readable audio"),
            "zero bytes": (tmp_path / "zero.wav", "zero bytes"),
            "0 seconds": (tmp_path / "silent_header.wav", "0 seconds"),
            "sample rate": (tmp_path / "rate0.wav", "sample rate cannot be read"),
            "nan": (tmp_path / "nan.wav", "NaN")}


@pytest.mark.parametrize("case", ["missing", "not audio", "zero bytes", "0 seconds", "sample rate", "nan"])
def test_each_bad_file_gets_a_message_naming_it(tmp_path, case):
    path, words = bad_files(tmp_path)[case]
    with pytest.raises(LokalError) as err:
        load_audio(path)
    assert str(path) in str(err.value) and words in str(err.value)


# -- length policy -------------------------------------------------------------------------------
def test_skip_leaves_long_clips_out_and_names_them():
    policy = LengthPolicy(long_clips="skip")
    assert len(policy("short.wav", np.zeros(30 * SAMPLE_RATE))) == 1  # exactly 30 s fits
    assert policy("long.wav", np.zeros(30 * SAMPLE_RATE + 1)) == []
    assert policy.skipped == ["long.wav"] and policy.split == []
    assert "skipped 1 clip(s) over 30 s: long.wav" in policy.summary()


def test_split_cuts_equal_chunks_within_the_limit():
    audio = np.arange(65 * SAMPLE_RATE, dtype=np.float32)
    policy = LengthPolicy(long_clips="split")
    chunks = policy("long.flac", audio)
    assert len(chunks) == 3 and all(len(c) <= 30 * SAMPLE_RATE for c in chunks)
    assert max(len(c) for c in chunks) - min(len(c) for c in chunks) <= 1  # no 5 s scrap at the end
    np.testing.assert_array_equal(np.concatenate(chunks), audio)
    assert policy.split == ["long.flac"] and "split 1 clip(s)" in policy.summary()
    assert LengthPolicy().summary() is None
    assert len(split_chunks(np.zeros(31), 30)) == 2


def test_length_policy_rejects_unknown_choices():
    with pytest.raises(LokalError, match="skip.*split"):
        LengthPolicy(long_clips="truncate")


# -- augmentation --------------------------------------------------------------------------------
@pytest.mark.parametrize("snr_db", [0.0, 10.0, 25.0])
def test_noise_lands_on_the_target_snr(snr_db):
    clean = sine(440, 1.0, SAMPLE_RATE)
    recording = np.random.default_rng(1).uniform(-1, 1, 4000)  # shorter than the clip: tiled
    for noise in (None, recording):
        noisy = add_noise(clean, snr_db, np.random.default_rng(0), noise)
        added = noisy.astype(np.float64) - clean
        measured = 10 * np.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum(added**2))
        assert abs(measured - snr_db) < 0.5


def test_time_shift_moves_audio_and_fills_silence():
    audio = np.arange(1, 101, dtype=np.float32)
    shifts = set()
    for seed in range(30):
        shifted = time_shift(audio, 20, np.random.default_rng(seed))
        zeros = np.count_nonzero(shifted == 0)  # silence, not the wrapped-round other end
        shift = zeros if shifted[0] == 0 else -zeros
        assert len(shifted) == 100 and abs(shift) <= 20
        expected = np.concatenate([np.zeros(shift), audio[:100 - shift]]) if shift >= 0 else \
            np.concatenate([audio[-shift:], np.zeros(-shift)])
        np.testing.assert_array_equal(shifted, expected)
        shifts.add(shift)
    assert min(shifts) < 0 < max(shifts)


def test_speed_perturbation_scales_pitch_and_length():
    faster = speed_perturb(sine(440, 1.0, SAMPLE_RATE), 1.1)
    assert abs(len(faster) - SAMPLE_RATE / 1.1) <= 1
    assert abs(peak_hz(faster) - 484) <= 1
    slower = speed_perturb(sine(440, 1.0, SAMPLE_RATE), 0.9)
    assert abs(len(slower) - SAMPLE_RATE / 0.9) <= 1 and abs(peak_hz(slower) - 396) <= 1


def test_audio_augment_is_fixed_by_seed_and_validates():
    augment = AudioAugment(speeds=(0.9, 1.0, 1.1), shift_seconds=0.1, snr_db=(10, 20))
    clip = sine(440, 1.0, SAMPLE_RATE)
    a, b = augment(clip, np.random.default_rng(7)), augment(clip, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, augment(clip, np.random.default_rng(8)))
    for bad in ({"speeds": (0.0,)}, {"shift_seconds": -1}, {"snr_db": (30, 10)}):
        with pytest.raises(LokalError):
            AudioAugment(**bad)


def masked_widths(mel: np.ndarray, out: np.ndarray, axis: int) -> list[int]:
    """Widths of the runs of rows (axis 0) or columns (axis 1) that were replaced whole."""
    whole = np.all(out != mel, axis=1 - axis)
    edges = np.diff(np.concatenate([[0], whole.astype(int), [0]]))
    return list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))


def test_spec_augment_masks_the_stated_widths():
    mel = np.random.default_rng(0).normal(size=(80, 3000)).astype(np.float32) + 5  # (mels, frames)
    seen = {0: set(), 1: set()}
    for seed in range(40):
        for axis, width in ((0, 27), (1, 100)):
            out = mask_bands(mel, axis, width, 1, np.random.default_rng(seed))
            widths = masked_widths(mel, out, axis)
            assert len(widths) <= 1 and all(0 < w <= width for w in widths)
            assert np.count_nonzero(out != mel) == sum(widths) * mel.shape[1 - axis]  # nothing else touched
            assert np.all(out[out != mel] == mel.mean())  # masked to the mean, not to 0
            seen[axis].update(widths)
    assert max(seen[0]) > 20 and max(seen[1]) > 80  # widths span the whole 0..F range


def test_spec_augment_policy_on_numpy_and_torch():
    augment = SpecAugment(freq_width=27, freq_masks=2, time_width=100, time_masks=2)
    mel = np.random.default_rng(0).normal(size=(80, 3000)).astype(np.float32)
    out = augment(mel, np.random.default_rng(1))
    np.testing.assert_array_equal(out, augment(mel, np.random.default_rng(1)))
    rows, cols = np.all(out != mel, axis=1).sum(), np.all(out != mel, axis=0).sum()
    assert 0 < rows <= 2 * 27 and 0 < cols <= 2 * 100
    torch_out = augment(torch.from_numpy(mel), np.random.default_rng(1))
    np.testing.assert_allclose(torch_out.numpy(), out, atol=1e-6)
    assert np.array_equal(SpecAugment()(mel, np.random.default_rng(1)), mel)  # off by default
    with pytest.raises(LokalError):
        SpecAugment(freq_width=-1)
