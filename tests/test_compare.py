"""`lokal compare`: rows equal the runs' own metrics.json, best first; unfinished runs are listed,
not fatal; a k-fold run is one row (mean +/- std); the Pareto flags are right on a hand-made
example; compare.html is one self-contained file."""

from __future__ import annotations

import base64
import json
import re
import sys

import pytest
import yaml

from lokal.errors import LokalError
from lokal.runs.compare import compare, find_runs, pareto_front, write_reports

METRIC = "test/accuracy"

# name: (method, model, accuracy, trainable params, peak memory MB, train time s)
RUNS = {"0_sentiment_minilm_lora": ("lora", "minilm", 0.84, 150_000, 900.0, 60.0),
        "1_sentiment_minilm_bitfit": ("bitfit", "minilm", 0.80, 40_000, 800.0, 50.0),
        "2_sentiment_minilm_full": ("full", "minilm", 0.86, 22_000_000, 1500.0, 120.0),
        "10_sentiment_minilm_partial": ("partial", "minilm", 0.79, 3_000_000, 1000.0, 70.0)}


def make_run(folder, method: str, model: str, metrics: dict | None, choices: bool = True, seed: int = 42):
    """A run directory as `lokal train` writes it: config.yaml, Hydra's record, metrics.json."""
    folder.mkdir(parents=True)
    config = {"seed": seed, "method": {"_target_": f"lokal.methods.{method}.X", "lr": 1e-3},
              "model": {"_target_": "lokal.models.text.TextClassifier", "name": f"/site-packages/{model}"},
              "data": {"_target_": "lokal.data.text.TextDataModule", "path": "/data/reviews.csv"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if choices:
        (folder / ".hydra").mkdir()
        hydra = {"hydra": {"runtime": {"choices": {"method": method, "model": model, "data": "text_csv"}}}}
        (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"method={method}", f"seed={seed}"]))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def metrics_of(acc, params, memory, time) -> dict:
    return {METRIC: acc, "test/ece": round(1 - acc, 4), "trainable_params": params, "total_params": 22_700_000,
            "peak_memory_mb": memory, "train_time_s": time}


@pytest.fixture
def sweep(tmp_path):
    """outputs/multirun/DATE/ with four finished runs, one still training, one k-fold run."""
    root = tmp_path / "multirun" / "2026-01-01_10-00-00"
    for name, (method, model, *numbers) in RUNS.items():
        make_run(root / name, method, model, metrics_of(*numbers))
    killed = make_run(root / "4_sentiment_minilm_prompt", "prompt", "minilm", None)
    (killed / "checkpoints").mkdir()
    (killed / "checkpoints" / "last.ckpt").write_bytes(b"x")
    kfold = make_run(root / "5_sentiment_minilm_lora", "lora", "minilm",
                     metrics_of(0.83, 150_000, 950.0, 20.0) | {f"{METRIC}_std": 0.02, "folds": 3,
                                                                "peak_gpu_memory_mb": 300.0})
    (kfold / "config.yaml").unlink()  # a k-fold run's config lives in each fold (and in .hydra/)
    (kfold / "cv.json").write_text("{}")
    for i in range(3):
        make_run(kfold / f"fold_{i}", "lora", "minilm", metrics_of(0.83, 150_000, 950.0, 20.0))
    return root


def test_rows_equal_each_runs_metrics_json_best_first(sweep):
    rows = compare([sweep], METRIC)

    assert [r.run for r in rows] == ["2_sentiment_minilm_full", "0_sentiment_minilm_lora", "5_sentiment_minilm_lora",
                                     "1_sentiment_minilm_bitfit", "10_sentiment_minilm_partial",
                                     "4_sentiment_minilm_prompt"]
    for row in rows[:-1]:
        saved = json.loads((sweep / row.run / "metrics.json").read_text())
        assert row.status == "finished" and row.metric == saved[METRIC]
        assert row.trainable_params == saved["trainable_params"] and row.train_time_s == saved["train_time_s"]
        assert row.peak_memory_mb == saved.get("peak_gpu_memory_mb", saved["peak_memory_mb"])
        assert (row.model, row.data, row.seed) == ("minilm", "text_csv (reviews.csv)", 42)
    assert rows[0].method == "full" and rows[0].overrides == "method=full seed=42"


def test_a_kfold_run_is_one_row_with_mean_and_std(sweep):
    rows = {r.run: r for r in compare([sweep], METRIC)}
    kfold = rows["5_sentiment_minilm_lora"]
    assert (kfold.metric, kfold.metric_std, kfold.folds) == (0.83, 0.02, 3)
    assert not any("fold_" in name for name in rows)  # folds are part of their run, not runs of their own


def test_an_unfinished_run_is_listed_not_fatal(sweep):
    last = compare([sweep], METRIC)[-1]
    assert (last.run, last.status, last.metric, last.pareto) == ("4_sentiment_minilm_prompt", "unfinished", None, [])
    assert "last.ckpt" in last.note


def test_pareto_front_on_a_hand_made_example():
    # (metric, cost): A best for its cost; B cheapest; C dominated by B; D dominated by A; E best overall;
    # F ties A exactly (neither dominates the other); None says nothing
    points = [(0.90, 1000), (0.85, 100), (0.80, 500), (0.90, 2000), (0.95, 10**6), (0.90, 1000), None]
    assert pareto_front(points) == [True, True, False, False, True, True, False]
    # lower is better (a loss): the smallest loss per cost
    assert pareto_front([(0.5, 10), (0.4, 20), (0.6, 5), (0.45, 30)], lower=True) == [True, True, True, False]


def test_pareto_flags_per_cost(sweep):
    rows = {r.run: r for r in compare([sweep], METRIC)}
    assert rows["2_sentiment_minilm_full"].pareto == ["params", "memory", "time"]  # the best score
    assert rows["0_sentiment_minilm_lora"].pareto == ["params", "memory", "time"]  # only full scores higher
    assert rows["5_sentiment_minilm_lora"].pareto == ["memory", "time"]  # lora above it: as many params, higher
    assert rows["1_sentiment_minilm_bitfit"].pareto == ["params"]  # its 800 MB loses to the k-fold run's 300
    assert rows["10_sentiment_minilm_partial"].pareto == []


def test_reports_md_html_png_json_and_the_html_is_self_contained(sweep, tmp_path):
    rows = compare([sweep], METRIC)
    out = write_reports(rows, METRIC, tmp_path / "report")

    page = (out / "compare.html").read_text()
    links = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", page, flags=re.I)
    assert links and all(link.startswith("data:") for link in links)
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    embedded = base64.b64decode(links[0].split(",", 1)[1])
    assert embedded == (out / "compare.png").read_bytes() and embedded.startswith(b"\x89PNG\r\n\x1a\n")
    markdown = (out / "compare.md").read_text()
    for row in rows:
        assert row.run in markdown and row.run in page
    assert "| 2_sentiment_minilm_full | full | minilm | text_csv (reviews.csv) | 42 | 0.8600 | 22,000,000 |" in markdown
    assert "0.8300 ± 0.0200 (3 folds)" in markdown and "unfinished" in markdown
    saved = json.loads((out / "compare.json").read_text())
    assert [r["metric"] for r in saved["runs"]] == [r.metric for r in rows]
    assert not list(out.glob(".*tmp"))


def test_a_lower_is_better_metric_sorts_and_fronts_the_other_way(sweep):
    by_accuracy = compare([sweep], METRIC)
    by_ece = compare([sweep], "test/ece")  # ece = 1 - accuracy here: lower is better, read from the name
    assert [r.run for r in by_ece] == [r.run for r in by_accuracy]
    assert [r.pareto for r in by_ece] == [r.pareto for r in by_accuracy]


def test_runs_given_one_by_one_and_a_metric_they_lack(sweep):
    rows = compare([sweep / "0_sentiment_minilm_lora", sweep / "1_sentiment_minilm_bitfit"], "test/wer")
    assert [r.run for r in rows] == ["0_sentiment_minilm_lora", "1_sentiment_minilm_bitfit"]
    assert all(r.metric is None and r.pareto == [] and r.note == "no test/wer in metrics.json" for r in rows)


def test_runs_without_hydra_records_fall_back_to_the_config(tmp_path):
    make_run(tmp_path / "plain", "bitfit", "efficientnet_lite0", metrics_of(0.7, 10, 100.0, 1.0), choices=False)
    row = compare([tmp_path / "plain"])[0]
    assert (row.method, row.model, row.data, row.metric) == ("bitfit", "efficientnet_lite0", "text (reviews.csv)", 0.7)


def test_paths_without_runs_are_refused(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(LokalError, match="no lokal runs in it or below it"):
        find_runs([tmp_path / "empty"])
    with pytest.raises(LokalError, match="no such folder"):
        find_runs([tmp_path / "nope"])


def test_cli_prints_the_table_and_writes_the_reports(sweep, tmp_path, monkeypatch, capsys):
    from lokal.cli import main

    monkeypatch.setattr(sys, "argv", ["lokal", "compare", str(sweep), "--out", str(tmp_path / "cmp")])
    main()
    printed = capsys.readouterr().out
    assert "lokal compare: test/accuracy" in printed and "22.0M" in printed and "P M T" in printed
    assert {p.name for p in (tmp_path / "cmp").iterdir()} == {"compare.md", "compare.html", "compare.png",
                                                              "compare.json"}


@pytest.mark.integration
def test_a_real_run_reads_back(tmp_path, tiny_text_models):
    """A run trained through the real train.yaml: its row equals its metrics.json."""
    import pandas as pd

    from lokal.run import train
    from tests.conftest import FAST, compose
    from tests.test_predict import TEXTS

    csv = tmp_path / "d.csv"
    pd.DataFrame({"text": [f"{t} {i}" for i in range(12) for t in TEXTS[:2]], "label": ["a", "b"] * 12}).to_csv(
        csv, index=False)
    run_dir = tmp_path / "runs" / "one"
    train(compose(FAST + ["trainer.max_epochs=1", "model=hf_text", f"model.name={tiny_text_models['bert']}",
                          "model.max_length=16", "method=bitfit", "data=text_csv", f"data.path={csv}",
                          "data.batch_size=8"], run_dir))
    row = compare([tmp_path / "runs"])[0]
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert (row.run, row.method, row.status) == ("one", "bitfit", "finished")
    assert (row.metric, row.trainable_params, row.train_time_s) == (saved[METRIC], saved["trainable_params"],
                                                                    saved["train_time_s"])
    assert row.model == "bert" and row.data == "text (d.csv)"
