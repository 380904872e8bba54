"""`lokal predict` on audio runs: a trained tiny Whisper transcribes real Asterisk recordings (files,
folders, tables) exactly as its own generate() does, a recording longer than the window is cut in
its pauses and its pieces' transcripts joined in order, an audio classifier gives the run's own
probabilities (long clips: the mean of training's chunks); bad recordings are named, nothing is
written. The real tiny.en reads 21 numbers said in a row (33 s) back in order."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch

from lokal.data.audio import SAMPLE_RATE, load_audio
from lokal.errors import LokalError
from lokal.runs.predict import predict
from lokal.runs.predict_audio import speech_bounds
from tests.conftest import FAST, compose

NUMBERS = [f"digits/{n}.wav" for n in range(21)]  # "zero" ... "twenty": 0.7-1.2 s each


def sounds() -> Path:
    from lokal.assets.asterisk import asterisk_sounds

    return asterisk_sounds() / "wav"


def concatenated(path: Path, files: list[str], gap: float = 0.6) -> tuple[Path, list[tuple[int, int]]]:
    """The recordings one after another with `gap` s of silence between, at 16 kHz; with each
    one's (first, last) loud sample: a cut belongs between one's last and the next one's first."""
    parts, spans, at = [], [], 0
    for name in files:
        audio = load_audio(sounds() / name)
        loud = np.flatnonzero(np.abs(audio) > 0.01)
        spans.append((at + loud[0], at + loud[-1]))
        parts += [audio, np.zeros(int(gap * SAMPLE_RATE), np.float32)]
        at += len(audio) + int(gap * SAMPLE_RATE)
    soundfile.write(path, np.concatenate(parts), SAMPLE_RATE)
    return path, spans


def generated(model, audio: list[np.ndarray], max_new_tokens: int = 32) -> list[str]:
    """Whisper's own greedy generate() on pieces of audio (each padded to the window, so one batch
    decodes as each alone would): the reference for every transcript. 32 tokens: half the tiny
    model's 64 decoder positions, as predict allows."""
    features = model.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.net.generate(input_features=features, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return [text.strip() for text in model.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def cli(monkeypatch, *argv: str) -> None:
    from lokal.cli import main

    monkeypatch.setattr(sys, "argv", ["lokal", "predict", *map(str, argv)])
    main()


# -- a trained speech-recognition run ------------------------------------------------------------
@pytest.fixture(scope="module")
def speech_run(tmp_path_factory, tiny_whisper) -> Path:
    """train.py on 40 short Asterisk prompts (under the tiny model's 2 s window), LoRA, 3 epochs."""
    from lokal.run import train

    folder = sounds().parent
    table = pd.read_csv(folder / "transcripts.tsv", sep="\t")
    table = table[[soundfile.info(folder / f).duration < 1.8 for f in table["file"]]].sort_values("file").head(40)
    root = tmp_path_factory.mktemp("speech_run")
    table.assign(file=[str(folder / f) for f in table["file"]]).to_csv(root / "transcripts.csv", index=False)
    run_dir = root / "run"
    train(compose(FAST + ["data=speech_table", f"data.path={root / 'transcripts.csv'}", f"model.name={tiny_whisper}",
                          "method.lr=3e-2", "trainer.max_epochs=3", "data.batch_size=4", "model.max_new_tokens=8"],
                  run_dir))
    return run_dir


@pytest.fixture(scope="module")
def tuned_whisper(speech_run):
    """The run's model as training's own loader rebuilds it (lokal.runs.load), not predict's."""
    from lokal.runs.load import load_run

    return load_run(speech_run)[1]


@pytest.mark.integration
def test_a_speech_run_transcribes_files_folders_and_tables_as_generate_does(speech_run, tuned_whisper, tmp_path,
                                                                             monkeypatch, capsys):
    new = tmp_path / "new"
    (new / "deeper").mkdir(parents=True)
    for name in ("digits/7.wav", "letters/k.wav"):
        (new / Path(name).name).symlink_to(sounds() / name)
    audio, rate = soundfile.read(sounds() / "digits/9.wav")  # 8 kHz mono -> 22.05 kHz stereo FLAC
    stereo = np.repeat(np.interp(np.arange(int(len(audio) * 22050 / rate)) * rate / 22050, np.arange(len(audio)),
                                 audio)[:, None], 2, axis=1)
    soundfile.write(new / "deeper" / "nine.flac", stereo, 22050)
    pd.DataFrame({"file": ["k.wav", str(sounds() / "digits/3.wav")], "text": ["", ""]}).to_csv(new / "list.csv")
    out = tmp_path / "out" / "transcripts.csv"

    cli(monkeypatch, speech_run, new / "deeper", sounds() / "digits/5.wav", new / "list.csv", "--out", out,
        "--batch-size", "2")

    frame = pd.read_csv(out, keep_default_na=False)
    files = [new / "deeper" / "nine.flac", sounds() / "digits/5.wav", new / "k.wav", sounds() / "digits/3.wav"]
    assert list(frame.columns) == ["id", "file", "seconds", "pieces", "text"]
    assert frame["file"].tolist() == [str(f) for f in files]  # one row per recording, in input order
    assert frame["id"].tolist()[2:] == [f"{new / 'list.csv'}:row 0", f"{new / 'list.csv'}:row 1"]
    assert (frame["pieces"] == 1).all() and (frame["text"].str.strip() != "").all()
    assert frame["seconds"].tolist() == pytest.approx([len(load_audio(f)) / SAMPLE_RATE for f in files], abs=1e-3)
    assert frame["text"].tolist() == generated(tuned_whisper, [load_audio(f) for f in files])
    printed = capsys.readouterr().out
    assert "4 of 4 recordings transcribed" in printed and f"written to {out}" in printed
    assert not list(out.parent.glob(".*tmp"))


@pytest.mark.integration
def test_a_long_recording_is_cut_at_its_pauses_and_transcribed_in_order(speech_run, tuned_whisper, tmp_path):
    path, spans = concatenated(tmp_path / "numbers.wav", NUMBERS)  # 33 s: 21 pieces for a 2 s window
    audio = load_audio(path)
    assert len(audio) / SAMPLE_RATE > 30

    bounds = speech_bounds(audio, window=2 * SAMPLE_RATE)
    assert len(bounds) == len(NUMBERS) and bounds[0][0] == 0
    assert all(end == start for (_, end), (start, _) in zip(bounds, bounds[1:], strict=False))  # nothing lost
    assert not np.abs(audio[bounds[-1][1]:]).max() > 1e-3  # but the silence after the last number
    assert all(end - start <= 2 * SAMPLE_RATE for start, end in bounds)
    for (_, cut), (_, said), (heard, _) in zip(bounds, spans, spans[1:], strict=False):
        assert said < cut < heard  # every cut in a pause: each piece holds one whole number

    frame = predict(speech_run, [path], batch_size=16)
    assert frame["pieces"].tolist() == [len(NUMBERS)]
    assert frame["seconds"].iloc[0] == pytest.approx(len(audio) / SAMPLE_RATE, abs=1e-3)
    pieces = generated(tuned_whisper, [audio[start:end] for start, end in bounds])
    assert frame["text"].iloc[0] == " ".join(p for p in pieces if p)


@pytest.mark.integration
def test_bad_recordings_are_named_and_nothing_is_written(speech_run, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "calls"
    folder.mkdir()
    (folder / "good.wav").symlink_to(sounds() / "digits/1.wav")
    (folder / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk, not a recording")
    (folder / "empty.flac").write_bytes(b"")
    out = tmp_path / "out" / "t.csv"
    with pytest.raises(SystemExit) as code:
        cli(monkeypatch, speech_run, folder, "--out", out)
    err = capsys.readouterr().err
    assert code.value.code == 2 and "Traceback" not in err
    assert "2 unreadable recording(s)" in err and "--skip-bad" in err
    assert f"{folder / 'corrupt.wav'}: not readable audio" in err and f"{folder / 'empty.flac'}: zero bytes" in err
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir()))

    cli(monkeypatch, speech_run, folder, "--out", out, "--skip-bad")
    assert pd.read_csv(out)["file"].tolist() == [str(folder / "good.wav")]

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(LokalError, match="notes.txt is a text file, but .* is an audio model: give audio files"):
        predict(speech_run, [tmp_path / "notes.txt"])


@pytest.mark.integration
def test_the_python_api_transcribes_through_the_same_code(speech_run, tuned_whisper):
    import lokal

    files = [sounds() / "digits/2.wav", sounds() / "letters/b.wav"]
    frame = lokal.load_run(str(speech_run)).predict(files)
    assert frame["id"].tolist() == ["0", "1"] and frame["file"].tolist() == [str(f) for f in files]
    assert frame["text"].tolist() == generated(tuned_whisper, [load_audio(f) for f in files])


# -- a trained audio-classification run ----------------------------------------------------------
@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, tiny_whisper) -> tuple[Path, Path]:
    """train.py on two classes of tones (tests/test_audio_classification.py's), LoRA: (run, data root)."""
    from lokal.run import train
    from tests.test_audio_classification import tone_folder

    root = tone_folder(tmp_path_factory.mktemp("tones") / "tones", per_class=10)
    run_dir = root.parent / "run"
    train(compose(FAST + ["data=audio_folder", f"data.root={root}", "data.batch_size=4", f"model.name={tiny_whisper}",
                          "trainer.max_epochs=3", "trainer.limit_train_batches=null", "method.lr=1e-2",
                          "evaluation.plots=false"], run_dir))
    return run_dir, root


@pytest.mark.integration
def test_an_audio_classifier_predicts_its_own_test_split(classifier_run, tmp_path):
    run_dir, root = classifier_run
    saved = pd.read_csv(run_dir / "predictions.csv")
    classes = [c.removeprefix("prob/") for c in saved.columns if c.startswith("prob/")]
    pd.DataFrame({"path": saved["id"]}).to_csv(root / "test.csv", index=False)  # relative to the table, as data.root

    frame = predict(run_dir, [root / "test.csv"], batch_size=3)

    assert list(frame.columns) == ["id", "predicted", "confidence", *[f"prob/{c}" for c in classes]]
    probs = frame[[f"prob/{c}" for c in classes]].to_numpy()
    assert probs == pytest.approx(saved[[f"prob/{c}" for c in classes]].to_numpy(), abs=1e-4)  # the run's own
    assert probs.sum(axis=1) == pytest.approx(np.ones(len(frame)), abs=1e-5)
    assert frame["predicted"].tolist() == [classes[i] for i in probs.argmax(axis=1)]
    assert frame["confidence"].to_numpy() == pytest.approx(probs.max(axis=1))


@pytest.mark.integration
def test_a_long_clip_is_classified_by_the_mean_of_trainings_chunks(classifier_run, tmp_path, monkeypatch, capsys):
    from lokal.data.audio_files import AudioDataset
    from lokal.runs.load import load_run
    from tests.test_audio_classification import write_tone

    run_dir, _ = classifier_run
    long = write_tone(tmp_path / "new" / "long.wav", 1200, seconds=5.0)  # the tiny model hears 2 s: 3 chunks
    short = write_tone(tmp_path / "new" / "sub" / "short.flac", 300, seconds=1.0)
    out = tmp_path / "p.csv"

    cli(monkeypatch, run_dir, tmp_path / "new", "--out", out)

    frame = pd.read_csv(out)
    assert frame["id"].tolist() == [str(long), str(short)]
    _, model = load_run(run_dir)
    chunks = AudioDataset([(str(long), 0, k, 3) for k in range(3)], model.feature_extractor, 2 * SAMPLE_RATE)
    batch = {key: torch.stack([chunks[k][key] for k in range(3)]) for key in ("input_features", "attention_mask")}
    with torch.no_grad():
        expected = model(batch).softmax(-1).mean(0).numpy()
    columns = [c for c in frame.columns if c.startswith("prob/")]
    assert frame.loc[0, columns].to_numpy(dtype=float) == pytest.approx(expected, abs=1e-5)
    assert "lokal predict: 2 of 2 inputs" in capsys.readouterr().out


def test_real_tiny_en_reads_33_seconds_of_numbers_back_in_order(tmp_path):
    """Whisper tiny.en itself (a LoRA run whose adapter is still the identity: LoRA's B starts at 0):
    the 21 numbers said in a row, cut once in a pause before 30 s, come back in their order."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lokal.io import write_text
    from lokal.tasks.speech_recognition import normalise
    from lokal.training.weights import save_weights

    run_dir = tmp_path / "run"
    cfg = compose(["data=speech_table", f"data.path={tmp_path / 'gone.csv'}", "method=lora"], run_dir)
    save_weights(instantiate(cfg.method).apply(instantiate(cfg.model)), run_dir)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    path, _ = concatenated(tmp_path / "numbers.wav", NUMBERS)

    frame = predict(run_dir, [path])

    assert frame["pieces"].tolist() == [2]
    heard = normalise(frame["text"].iloc[0]).split()
    # Whisper's English normaliser leaves a lone "one" a word (it may be the pronoun): the only one here is 1
    assert [w.replace("one", "1") for w in heard] == [str(n) for n in range(21)]
