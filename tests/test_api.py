"""The public Python API: lokal.train, lokal.load_run(...).predict, lokal.audit_data."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

import lokal
from tests.conftest import ROOT

WORDS = {"positive": "bagus mantap senang", "negative": "jelek buruk kecewa"}


def table(path) -> str:
    labels = ["positive", "negative"] * 30
    frame = pd.DataFrame({"text": [f"{WORDS[y]} nomor {i}" for i, y in enumerate(labels)], "label": labels})
    frame.to_csv(path, index=False)
    return str(path)


def test_importing_lokal_stays_cheap():
    code = "import sys, lokal; print(sorted(m for m in ('torch', 'lightning', 'hydra') if m in sys.modules))"
    assert subprocess.check_output([sys.executable, "-c", code], cwd=ROOT, text=True).strip() == "[]"


@pytest.mark.integration
def test_train_then_load_and_predict(tmp_path, tiny_text_models):
    data = table(tmp_path / "t.csv")
    metrics = lokal.train(["data=text_csv", f"data.path={data}", "model=hf_text",
                           f"model.name={tiny_text_models['bert']}", "trainer.max_epochs=1",
                           "trainer.enable_progress_bar=false", "evaluation.plots=false"], run_dir=tmp_path / "run")
    assert (tmp_path / "run" / "metrics.json").is_file() and "test/accuracy" in metrics

    run = lokal.load_run(tmp_path / "run")
    assert run.metrics == pytest.approx(metrics) and run.config.data.path == data
    saved = pd.read_csv(tmp_path / "run" / "predictions.csv")
    texts = pd.read_csv(data).set_index(pd.Index([f"row {i}" for i in range(60)]))["text"]
    predicted = run.predict(texts[saved["id"]].tolist())
    prob_columns = [c for c in saved.columns if c.startswith("prob/")]
    assert predicted[prob_columns].to_numpy() == pytest.approx(saved[prob_columns].to_numpy(), abs=1e-4)
    assert predicted["predicted"].tolist() == saved["predicted"].tolist()


def test_load_run_refuses_an_unfinished_run(tmp_path):
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(lokal.LokalError, match="has not finished"):
        lokal.load_run(tmp_path)


def test_audit_data_finds_duplicates_and_a_leak(tmp_path):
    frame = pd.DataFrame({"text": ["sinyal hilang terus", "sinyal hilang terus", "paket data murah", "ok"],
                          "label": ["neg", "neg", "pos", "pos"], "split": ["train", "test", "train", "test"]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    findings = lokal.audit_data(str(tmp_path / "t.csv"), label_errors=False)
    assert findings["source"] == str(tmp_path / "t.csv")
    assert findings["summary"]["exact_duplicate_groups"] == 1 and findings["summary"]["leakage_items"] == 1
