"""Subgroup fairness on hand-built predictions (Contract A's columns): a planted bias is found and
warned about, equal groups are not, per-group metrics equal scikit-learn's on the group's rows,
small groups are shown but not judged, and a missing column says how to fix it."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score, roc_auc_score

from lokal.errors import LokalError
from lokal.evaluation.fairness import format_warnings, subgroup_report, write_subgroup_report

CLASSES = ["negative", "positive"]


def predictions(accuracy: dict[str, float], per_group: int = 200, seed: int = 0,
                classes: list[str] = CLASSES) -> pd.DataFrame:
    """predictions.csv as run.py writes it, with a `region` column; each region's predictions are
    right with the given probability, and the probabilities rank right rows higher."""
    rng = np.random.default_rng(seed)
    region = np.repeat(list(accuracy), per_group)
    y = rng.integers(0, len(classes), len(region))
    right = rng.random(len(region)) < np.array([accuracy[r] for r in region])
    p = np.where(right, y, (y + rng.integers(1, len(classes), len(region))) % len(classes))
    logits = rng.normal(0, 1, (len(region), len(classes)))
    logits[np.arange(len(region)), p] += 2.0
    probs = np.round(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 2)  # rounded: ties in the scores
    names = np.array(classes)
    frame = pd.DataFrame({"id": [f"row {i}" for i in range(len(region))], "split": "test", "label": names[y],
                          "predicted": names[p], "confidence": probs.max(1), "correct": right.astype(int)})
    frame[[f"prob/{c}" for c in classes]] = probs
    return frame.assign(region=region, gender=rng.choice(["female", "male"], len(region)))


def test_planted_bias_shows_the_gap_and_warns():
    report = subgroup_report(predictions({"A": 0.9, "B": 0.6}), ["region"], gap_warning=0.05)
    gap = report["columns"]["region"]["gaps"]["accuracy"]
    assert (gap["best"], gap["worst"]) == ("A", "B")
    assert gap["gap"] == pytest.approx(0.3, abs=0.06)
    assert gap["p_value"] < 0.01 and gap["above_threshold"] and gap["beyond_noise"]
    assert any(w.startswith("region: accuracy is") and "lower for B" in w for w in report["warnings"])
    assert report["metrics"]["subgroup/region/max_gap/accuracy"] == gap["gap"]
    assert {"subgroup/region/max_gap/f1_macro", "subgroup/region/max_gap/auroc",
            "subgroup/region/max_gap/recall/positive"} <= set(report["metrics"])
    assert format_warnings(report)[0].startswith("subgroup gap: region: ")


def test_equal_groups_do_not_warn():
    """Same accuracy everywhere (three regions, a random gender column): gaps are noise."""
    report = subgroup_report(predictions({"A": 0.8, "B": 0.8, "C": 0.8}, seed=1), ["region", "gender"])
    assert report["warnings"] == []
    for column in ("region", "gender"):
        assert all(gap["p_value"] >= 0.05 for gap in report["columns"][column]["gaps"].values())


def test_a_gap_above_the_threshold_within_noise_is_a_note_not_a_warning():
    """20/25 vs 17/25 right: 12 points apart, far inside what 25 rows per group can tell."""
    frame = predictions({"A": 1.0, "B": 1.0}, per_group=25)
    frame.loc[frame.index[:5], "predicted"] = "positive"  # A: make 5 of the first group wrong ...
    frame.loc[frame.index[:5], "label"] = "negative"
    frame.loc[frame.index[25:33], "predicted"] = "positive"  # B: and 8 of the second
    frame.loc[frame.index[25:33], "label"] = "negative"
    gap = subgroup_report(frame, ["region"])["columns"]["region"]["gaps"]["accuracy"]
    assert gap["gap"] == pytest.approx(0.12) and gap["above_threshold"] and not gap["beyond_noise"]
    report = subgroup_report(frame, ["region"])
    assert not any("accuracy" in w for w in report["warnings"])
    assert any(n.startswith("region: accuracy") and "within noise" in n for n in report["notes"])


def sklearn_metrics(rows: pd.DataFrame, classes: list[str]) -> dict[str, float]:
    """The same metrics computed by scikit-learn on one group's rows."""
    y, p = rows["label"], rows["predicted"]
    probs = rows[[f"prob/{c}" for c in classes]].to_numpy()
    held = [c for c in classes if (y == c).any()]
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected for a group lacking one
        warnings.simplefilter("ignore")
        expected = {"accuracy": float((y == p).mean()), "balanced_accuracy": balanced_accuracy_score(y, p),
                    "f1_macro": f1_score(y, p, average="macro")}
    expected |= {f"recall/{c}": recall_score(y, p, labels=[c], average="macro") for c in held}
    if len(classes) == 2:
        expected["auroc"] = roc_auc_score(y == classes[1], probs[:, 1])
    elif len(held) == len(classes):
        expected["auroc"] = roc_auc_score(y, probs, multi_class="ovr", labels=classes)
    elif len(held) >= 2:  # one-vs-rest over the classes the group holds
        expected["auroc"] = np.mean([roc_auc_score(y == c, probs[:, classes.index(c)]) for c in held])
    return expected


@pytest.mark.parametrize("classes", [CLASSES, ["cat", "dog", "fox"]], ids=["binary", "three_classes"])
def test_group_metrics_equal_sklearn(classes):
    frame = predictions({"A": 0.85, "B": 0.7, "C": 0.5}, per_group=60, seed=3, classes=classes)
    if len(classes) == 3:
        frame.loc[frame["region"] == "C", "label"] = "cat"  # C holds one class in its labels only
        probs = frame[[f"prob/{c}" for c in classes]].to_numpy()  # un-round: sklearn's ovr wants rows summing to 1
        frame[[f"prob/{c}" for c in classes]] = probs / probs.sum(1, keepdims=True)
    groups = subgroup_report(frame, ["region"], permutations=0)["columns"]["region"]["groups"]
    for name, rows in frame.groupby("region"):
        expected = sklearn_metrics(rows, classes)
        got = groups[name]
        assert got["n"] == len(rows)
        for metric, value in expected.items():
            assert got[metric] == pytest.approx(value, abs=1e-12), (name, metric)
        assert all(got[f"recall/{c}"] is None for c in classes if not (rows["label"] == c).any())
    if len(classes) == 3:
        assert groups["C"]["auroc"] is None  # one class held: no ranking to judge


def test_accuracy_interval_is_wilson():
    from lokal.evaluation.fairness import wilson_interval

    low, high = wilson_interval(0.9, 100)  # the textbook case: 90 of 100
    assert (low, high) == (pytest.approx(0.8256, abs=1e-4), pytest.approx(0.9448, abs=1e-4))


def test_min_p_adjustment():
    """One metric: adjusted equals raw. Two copies of one metric: still equal (min-p pays nothing
    for metrics that move together). Two independent ones: adjusted above raw."""
    from lokal.evaluation.fairness import min_p

    rng = np.random.default_rng(0)
    null = rng.normal(size=(2000, 1))
    [(raw, adjusted)] = min_p(np.array([1.5]), null)
    assert adjusted == raw == pytest.approx((1 + (null >= 1.5).sum()) / 2001)
    twins = min_p(np.array([1.5, 1.5]), np.hstack([null, null]))
    assert twins[0] == (raw, adjusted)
    apart = min_p(np.array([1.5, 1.5]), np.hstack([null, rng.normal(size=(2000, 1))]))
    assert apart[0][1] > 1.5 * apart[0][0]


def test_small_groups_are_shown_but_not_judged():
    frame = pd.concat([predictions({"A": 0.9, "B": 0.9}), predictions({"C": 0.1}, per_group=8, seed=5)])
    report = subgroup_report(frame, ["region"])
    result = report["columns"]["region"]
    assert result["groups"]["C"]["n"] == 8 and not result["groups"]["C"]["judged"]
    assert all("C" not in (gap["best"], gap["worst"]) for gap in result["gaps"].values())
    assert any("C (n=8)" in note and "not judged" in note for note in report["notes"])
    assert report["warnings"] == []


def test_with_only_small_groups_the_gap_is_given_but_not_judged():
    """A small test set keeps its metrics.json keys; the gap is flagged, never warned about."""
    report = subgroup_report(predictions({"A": 1.0, "B": 0.0}, per_group=8), ["region"])
    gap = report["columns"]["region"]["gaps"]["accuracy"]
    assert gap["gap"] == 1.0 and not gap["judged"] and gap["p_value"] is None
    assert report["metrics"]["subgroup/region/max_gap/accuracy"] == 1.0 and report["warnings"] == []
    assert any("gaps are shown but not judged" in note for note in report["notes"])


def test_empty_cells_form_their_own_group():
    frame = predictions({"A": 0.8, "B": 0.8})
    frame.loc[frame.index[:30], "region"] = None
    assert set(subgroup_report(frame, ["region"])["columns"]["region"]["groups"]) == {"(missing)", "A", "B"}


def test_one_group_only_has_no_gap():
    report = subgroup_report(predictions({"A": 0.8}), ["region"])
    assert report["columns"]["region"]["gaps"] == {} and report["metrics"] == {}
    assert any("fewer than two groups" in note for note in report["notes"])


def test_a_missing_column_names_it_and_the_fix():
    with pytest.raises(LokalError, match=r"'religion' is not in the test predictions.*'region', 'gender'.*"
                                         r"data\.metadata_columns=\[religion\]"):
        subgroup_report(predictions({"A": 0.8}), ["religion"])
    with pytest.raises(LokalError, match="metadata columns there: none"):
        subgroup_report(predictions({"A": 0.8}).drop(columns=["region", "gender"]), ["region"])


def test_a_bad_threshold_is_refused():
    with pytest.raises(LokalError, match="gap_warning=5"):
        subgroup_report(predictions({"A": 0.8}), ["region"], gap_warning=5)


def test_report_files(tmp_path):
    """subgroups.json holds the whole report (read back equal); subgroups.md its tables."""
    frame = predictions({"A": 0.9, "B": 0.6})
    frame.to_csv(tmp_path / "predictions.csv", index=False)
    report = subgroup_report(pd.read_csv(tmp_path / "predictions.csv"), ["region", "gender"])
    json_path, md_path = write_subgroup_report(report, tmp_path)
    assert json.loads(json_path.read_text()) == report
    markdown = md_path.read_text()
    assert "## region" in markdown and "| A | 200 | " in markdown and "**warn**" in markdown
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv", "subgroups.json", "subgroups.md"]


@pytest.mark.integration
def test_a_run_writes_the_subgroup_report(run_dir, tmp_path, tiny_text_models):
    """text_csv with a `region` column through the real train.yaml (tiny BERT, 1 epoch):
    subgroups.json/.md next to predictions.csv, each region's accuracy equal to its rows' mean of
    `correct`, and the flat max-gap keys in metrics.json."""
    from lokal.run import train
    from tests.conftest import FAST, compose

    rng = np.random.default_rng(0)
    words = "sinyal internet lemot banget hari ini mantul pelayanan cepat ramah kecewa".split()
    texts = [" ".join(rng.choice(words, rng.integers(2, 12))) + f" {i}" for i in range(120)]
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"text": texts, "label": np.arange(120) % 2, "region": np.array(["jawa", "bali", "papua"])[
        np.arange(120) % 3]}).to_csv(path, index=False)
    train(compose(FAST + ["trainer.max_epochs=1", "model=hf_text", f"model.name={tiny_text_models['bert']}",
                          "model.max_length=32", "method=full", "data=text_csv", f"data.path={path}",
                          "data.metadata_columns=[region]", "data.batch_size=8", "evaluation.plots=false",
                          "evaluation.subgroups=[region]"], run_dir))
    report = json.loads((run_dir / "subgroups.json").read_text())
    frame = pd.read_csv(run_dir / "predictions.csv")
    groups = report["columns"]["region"]["groups"]
    assert {name: g["n"] for name, g in groups.items()} == frame["region"].value_counts().to_dict()
    for name, rows in frame.groupby("region"):
        assert groups[name]["accuracy"] == pytest.approx(rows["correct"].mean())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["subgroup/region/max_gap/accuracy"] == pytest.approx(
        report["columns"]["region"]["gaps"]["accuracy"]["gap"])
    assert (run_dir / "subgroups.md").read_text().startswith("# Subgroup report")
